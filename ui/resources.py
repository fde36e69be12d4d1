"""One run store and one executor per server process, shared by every session and page.

Training never runs in the script thread: runs go to ``LocalExecutor`` worker processes
that write to the SQLite store; pages only read the store. The executor outlives browser
tabs, so a run keeps going when its tab is reloaded or closed and a page can re-attach.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import streamlit as st

from grafting_core.lab.arms import PlannedRun
from grafting_core.lab.config import RunConfig
from grafting_core.lab.executor import LocalExecutor
from grafting_core.lab.experiments import new_group
from grafting_core.lab.runner import create_run, request_stop
from grafting_core.lab.store import RunStore, default_runs_dir


class Jobs:
    """This server's executor plus the futures of the runs it was handed (an ``Executor``)."""

    def __init__(self, root: str | Path) -> None:
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
def _jobs(root: str) -> Jobs:
    return Jobs(root)


def get_store() -> RunStore:
    """The run store at ``$GRAFTING_RUNS_DIR`` (or ./runs), opened once per process."""
    return _store(str(default_runs_dir()))


def get_jobs() -> Jobs:
    """The executor that trains runs of this store, created once per process."""
    return _jobs(str(get_store().root))


def start_group(planned: list[RunConfig | PlannedRun], *,
                kind: str = "lab") -> tuple[str, list[str]]:
    """Record configs (or planned runs with their arms) as one new group of runs and queue
    them; returns (group, run ids)."""
    store, jobs = get_store(), get_jobs()
    group = new_group(kind)
    run_ids = [create_run(store, item.config, kind=kind, group=group, arm=item.arm)
               if isinstance(item, PlannedRun) else create_run(store, item, kind=kind, group=group)
               for item in planned]
    for run_id in run_ids:
        jobs.submit(run_id)
    return group, run_ids


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
