"""One run store, one set of jobs and one registry of comparisons per server process, shared
by every session and page (``st.cache_resource``); the engine does the work.

Training never runs in the script thread: runs go to ``LocalExecutor`` worker processes
that write to the SQLite store, or to the workers of a Dask scheduler chosen in the sidebar,
which stream to this server, the store's only writer; pages only read the store. The
jobs outlive browser tabs, so a run keeps going when its tab is reloaded or closed and a
page can re-attach. A tuned comparison orchestrates in a thread of this server
(``experiments.orchestration``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import streamlit as st

from grafting_core.lab.experiments import orchestration
from grafting_core.lab.experiments.common import OptimizerChoice, new_group
from grafting_core.lab.runs import jobs as lab_jobs
from grafting_core.lab.runs.arms import PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.jobs import Jobs
from grafting_core.lab.store.run_store import RunStore, default_runs_dir


@st.cache_resource(show_spinner=False, on_release=lambda store: store.close())
def _store(root: str) -> RunStore:
    return RunStore(root)


@st.cache_resource(show_spinner=False, on_release=lambda jobs: jobs.shutdown(wait=False))
def _jobs(root: str, scheduler: str | None) -> Jobs:
    return Jobs(root, scheduler)


@st.cache_resource(show_spinner=False)
def _orchestrations() -> orchestration.Orchestrations:
    return {}


def get_store() -> RunStore:
    """The run store at ``$GRAFTING_RUNS_DIR`` (or ./runs), opened once per process."""
    return _store(str(default_runs_dir()))


def get_jobs() -> Jobs:
    """The executor that trains new runs of this store, created once per process and choice:
    this machine's worker processes, or the Dask scheduler chosen in the sidebar (raises
    ConnectionError, one line, when it cannot be reached)."""
    scheduler = (
        st.session_state.get("shared.scheduler", "").strip()
        if st.session_state.get("shared.executor") == "dask"
        else ""
    )
    return _jobs(str(get_store().root), scheduler or None)


def start_group(
    planned: list[RunConfig | PlannedRun], *, kind: str = "lab"
) -> tuple[str, list[str]]:
    """Record configs (or planned runs with their arms) as one new group of runs and queue
    them; returns (group, run ids)."""
    group = new_group(kind)
    return group, queue_runs(planned, group=group, kind=kind)


def queue_runs(
    planned: Sequence[RunConfig | PlannedRun], *, group: str, kind: str, reuse: bool = False
) -> list[str]:
    """``jobs.queue_runs`` on this server's store and jobs."""
    return lab_jobs.queue_runs(
        get_store(), get_jobs(), planned, group=group, kind=kind, reuse=reuse
    )


def stop_runs(run_ids: list[str]) -> None:
    """Stop runs cleanly: queued ones never start, running ones stop at their next flush."""
    lab_jobs.stop_runs(get_store(), get_jobs(), run_ids)


def start_comparison(base: RunConfig, optimizers: Mapping[str, OptimizerChoice], **settings) -> str:
    """``orchestration.start_comparison`` in a thread of this server; returns its group."""
    return orchestration.start_comparison(
        get_store(), get_jobs(), _orchestrations(), base, optimizers, **settings
    )


def comparison_state(group: str) -> orchestration.Orchestration | None:
    """The orchestration of ``group`` if this server process started it, else None."""
    return _orchestrations().get(group)


def orchestrating(group: str) -> bool:
    """Whether a comparison of this server may still create runs in ``group``."""
    return orchestration.orchestrating(_orchestrations(), group)


def stop_comparison(group: str) -> None:
    """Stop a comparison: no further phase starts, and every run of its group stops."""
    orchestration.stop_comparison(get_store(), get_jobs(), _orchestrations(), group)
