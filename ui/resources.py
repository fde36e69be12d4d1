"""One run store per server process, and one executor per choice of where runs train,
shared by every session and page.

Training never runs in the script thread: runs go to ``LocalExecutor`` worker processes
that write to the SQLite store, or to the workers of a Dask scheduler chosen in the sidebar,
which stream to this server, the store's only writer; pages only read the store. The
executor outlives browser tabs, so a run keeps going when its tab is reloaded or closed and
a page can re-attach.
A tuned comparison (``protocol.compare``) decides its next runs from the last ones: it
orchestrates in a thread of the server (its runs train in the workers), listed in a
process-wide registry so that a page knows more runs are coming between its phases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from grafting_core.lab.arms import PlannedRun
from grafting_core.lab.config import RunConfig
from grafting_core.lab.executor import LocalExecutor
from grafting_core.lab.experiments import OptimizerChoice, new_group, record_runs
from grafting_core.lab.protocol import SweepPlan, compare
from grafting_core.lab.runner import request_stop
from grafting_core.lab.store import RunStore, default_runs_dir

FIRST_RUNS_WAIT = 10.0  # seconds start_comparison waits for a comparison's first runs


class Jobs:
    """This server's executor plus the futures of the runs it was handed (an ``Executor``):
    local worker processes, or the workers of a Dask scheduler (``scheduler``: its address;
    this server still writes the store)."""

    def __init__(self, root: str | Path, scheduler: str | None = None) -> None:
        if scheduler:
            from grafting_core.lab.dask_executor import DaskExecutor  # imports dask

            self.executor: LocalExecutor | DaskExecutor = DaskExecutor(root, scheduler)
        else:
            self.executor = LocalExecutor(root)
        self.executor.warm_up()  # workers load torch and the default data while you choose
        self.max_workers = self.executor.max_workers
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()  # sessions submit from their own script threads

    def submit(self, run_id: str, *, resume: bool = False) -> Future:
        """Queue a stored run for a worker process; the future yields its final status."""
        future = self.executor.submit(run_id, resume=resume)
        with self._lock:
            self._futures[run_id] = future
        return future

    def cancel(self, run_id: str) -> bool:
        """Drop a run that no worker has taken yet; False if it started (or is unknown)."""
        with self._lock:
            future = self._futures.get(run_id)
        return bool(future and future.cancel())

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the worker processes (``wait``: let queued runs finish first)."""
        self.executor.shutdown(wait=wait)


@st.cache_resource(show_spinner=False, on_release=lambda store: store.close())
def _store(root: str) -> RunStore:
    return RunStore(root)


@st.cache_resource(show_spinner=False, on_release=lambda jobs: jobs.shutdown(wait=False))
def _jobs(root: str, scheduler: str | None) -> Jobs:
    return Jobs(root, scheduler)


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
    """Record configs (or planned runs with their arms) in ``group``, new or existing, and
    queue them; returns the ids of the runs queued. ``reuse``: a run of the group with the
    same config is kept (not queued), or resumed if it was stopped
    (``experiments.record_runs``)."""
    jobs = get_jobs()
    run_ids, todo = record_runs(
        get_store(),
        [item if isinstance(item, PlannedRun) else PlannedRun(item, None) for item in planned],
        group=group,
        kind=kind,
        reuse=reuse,
    )
    for run_id, resume in todo:
        jobs.submit(run_id, resume=resume)
    return [run_id for run_id, _ in todo]


def stop_runs(run_ids: list[str]) -> None:
    """Stop runs cleanly: queued ones never start, running ones stop at their next flush."""
    store, jobs = get_store(), get_jobs()
    for run_id in run_ids:
        if store.run(run_id)["status"] != "running":
            continue
        if jobs.cancel(run_id):
            store.set_status(run_id, "stopped", step=0)
        else:
            request_stop(store, run_id)


@dataclass
class Orchestration:
    """A comparison orchestrated by a thread of this server: its stop flag and how it ended."""

    thread: threading.Thread
    stop: threading.Event = field(default_factory=threading.Event)
    error: str = ""  # why it ended early ("" when it ran to the end or was stopped)


class _UntilStopped:
    """The server's jobs as one comparison's executor: once its stop flag is set, a run
    handed over is marked stopped instead of queued (Stop may race a new phase's runs)."""

    def __init__(self, jobs: Jobs, store: RunStore, stop: threading.Event) -> None:
        self.jobs, self.store, self.stop = jobs, store, stop

    def submit(self, run_id: str, *, resume: bool = False) -> Future:
        """Queue the run on the server's workers, unless the comparison was stopped."""
        if not self.stop.is_set():
            return self.jobs.submit(run_id, resume=resume)
        self.store.set_status(run_id, "stopped", step=0)
        future: Future = Future()
        future.set_result("stopped")
        return future

    def shutdown(self, *, wait: bool = True) -> None:
        """Nothing to do: the server's workers outlive a comparison."""


@st.cache_resource(show_spinner=False)
def _orchestrations() -> dict[str, Orchestration]:
    return {}


def start_comparison(
    base: RunConfig,
    optimizers: Mapping[str, OptimizerChoice],
    *,
    seeds: Sequence[int],
    plan: SweepPlan,
    partial: Sequence[Sequence[str]] = (),
    metric: str = "val_loss",
    group: str | None = None,
    tune_grafts: bool = False,
) -> str:
    """Start ``protocol.compare`` in a daemon thread of this server; returns its group once
    the first runs are in the store (a page then has runs to watch). ``group``: continue
    that comparison (``protocol.comparison_request`` has its settings): its runs are kept,
    only the missing ones train.

    The thread only orchestrates (creates runs phase by phase, waits, reads results); the runs
    train in the worker processes. It ends with the server: runs already trained are kept.
    """
    store, jobs = get_store(), get_jobs()
    group = group or new_group("compare")
    before = len(store.runs(group=group, flatten_config=False))
    stop = threading.Event()
    executor = _UntilStopped(jobs, store, stop)

    def orchestrate() -> None:
        try:
            compare(
                store,
                base,
                optimizers,
                seeds=seeds,
                plan=plan,
                partial=partial,
                metric=metric,
                executor=executor,
                group=group,
                stop=stop.is_set,
                tune_grafts=tune_grafts,
            )
        except Exception as error:  # shown by the page; the runs' own errors are in the store
            orchestration.error = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=orchestrate, name=f"orchestrate {group}", daemon=True)
    orchestration = Orchestration(thread, stop)
    _orchestrations()[group] = orchestration
    thread.start()
    deadline = time.monotonic() + FIRST_RUNS_WAIT
    while (
        thread.is_alive()
        and time.monotonic() < deadline
        and len(store.runs(group=group, flatten_config=False)) == before
    ):
        time.sleep(0.05)
    return group


def comparison_state(group: str) -> Orchestration | None:
    """The orchestration of ``group`` if this server process started it, else None."""
    return _orchestrations().get(group)


def orchestrating(group: str) -> bool:
    """Whether a comparison of this server may still create runs in ``group``."""
    state = comparison_state(group)
    return bool(state and state.thread.is_alive())


def stop_comparison(group: str) -> None:
    """Stop a comparison: no further phase starts, and every run of its group stops."""
    state = comparison_state(group)
    if state is not None:
        state.stop.set()  # before listing the runs: later ones are refused (_UntilStopped)
    stop_runs(get_store().runs(group=group)["run_id"].tolist())
