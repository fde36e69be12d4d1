"""A long-lived executor with the futures of the runs handed to it: queue stored runs, drop
the ones no worker has taken, stop the rest cleanly. The app keeps one per server process;
anything that outlives one experiment (a notebook, a service) can do the same."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from grafting_core.lab.runs.arms import PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import LocalExecutor
from grafting_core.lab.runs.groups import record_runs
from grafting_core.lab.runs.runner import request_stop
from grafting_core.lab.store.run_store import RunStore


class Jobs:
    """An executor plus the futures of the runs it was handed (itself an ``Executor``):
    local worker processes, or the workers of a Dask scheduler (``scheduler``: its address;
    this process still writes the store)."""

    def __init__(self, root: str | Path, scheduler: str | None = None) -> None:
        if scheduler:
            from grafting_core.lab.runs.dask_executor import DaskExecutor  # imports dask

            self.executor: LocalExecutor | DaskExecutor = DaskExecutor(root, scheduler)
        else:
            self.executor = LocalExecutor(root)
        self.executor.warm_up()  # workers load torch and the default data while you choose
        self.max_workers = self.executor.max_workers
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()  # sessions submit from their own threads

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


def queue_runs(
    store: RunStore,
    jobs: Jobs,
    planned: Sequence[RunConfig | PlannedRun],
    *,
    group: str,
    kind: str,
    reuse: bool = False,
) -> list[str]:
    """Record configs (or planned runs with their arms) in ``group``, new or existing, and
    queue them on ``jobs``; returns the ids of the runs queued. ``reuse``: a run of the group
    with the same config is kept (not queued), or resumed if it was stopped (``record_runs``)."""
    run_ids, todo = record_runs(
        store,
        [item if isinstance(item, PlannedRun) else PlannedRun(item, None) for item in planned],
        group=group,
        kind=kind,
        reuse=reuse,
    )
    for run_id, resume in todo:
        jobs.submit(run_id, resume=resume)
    return [run_id for run_id, _ in todo]


def stop_runs(store: RunStore, jobs: Jobs, run_ids: Sequence[str]) -> None:
    """Stop runs cleanly: queued ones never start, running ones stop at their next flush."""
    for run_id in run_ids:
        if store.run(run_id)["status"] != "running":
            continue
        if jobs.cancel(run_id):
            store.set_status(run_id, "stopped", step=0)
        else:
            request_stop(store, run_id)


class UntilStopped:
    """``jobs`` as one experiment's executor: once ``stop`` is set, a run handed over is
    marked stopped instead of queued (a Stop may race a new phase's runs)."""

    def __init__(self, jobs: Jobs, store: RunStore, stop: threading.Event) -> None:
        self.jobs, self.store, self.stop = jobs, store, stop

    def submit(self, run_id: str, *, resume: bool = False) -> Future:
        """Queue the run on the jobs' workers, unless the experiment was stopped."""
        if not self.stop.is_set():
            return self.jobs.submit(run_id, resume=resume)
        self.store.set_status(run_id, "stopped", step=0)
        future: Future = Future()
        future.set_result("stopped")
        return future

    def shutdown(self, *, wait: bool = True) -> None:
        """Nothing to do: the jobs' workers outlive one experiment."""
