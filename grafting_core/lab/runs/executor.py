"""Where runs execute: an executor takes stored run ids and trains them somewhere else.

Experiments and the app only call ``submit(run_id)`` and read results from the store, so a
cluster backend (``dask_executor.DaskExecutor``) replaces ``LocalExecutor`` without touching
them. The local one trains in spawned worker processes (a real stop, no GIL fight with a web
server, the same code path as the command line), at most one per core by default, with
torch threads shared out.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import torch


class Executor(Protocol):
    """Anything that can train stored runs: ``submit`` returns a future of the final status."""

    def submit(self, run_id: str, *, resume: bool = False) -> Future: ...

    def shutdown(self, *, wait: bool = True) -> None: ...


_SPAWN_LOCK = threading.Lock()
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # "<quota> <period>" or "max <period>"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 quota.

    ``os.cpu_count()`` counts the host's cores; in a container limited to 2 of 64 it would
    start 64 workers that each load torch and fight over 2 cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = cores or os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    return cores


@contextlib.contextmanager
def _without_main_script() -> Iterator[None]:
    """Start workers without making them re-run the parent's ``__main__`` file.

    A spawned process re-imports the parent's main script before its first task
    (``multiprocessing.spawn``). Under Streamlit that script is the page on show: each
    worker would run the page headless for seconds. Our tasks live in importable modules,
    so workers need no main script: hide it while ``submit`` may start a process.
    """
    with _SPAWN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def _init_worker(threads: int, parent_pid: int) -> None:
    from grafting_core.lab.runs.lifeline import exit_with_parent

    torch.set_num_threads(threads)
    exit_with_parent(parent_pid)  # no orphans: a worker ends soon after its parent


def _warm_worker(datasets: Sequence[str]) -> int:
    """Import what training needs and build ``datasets`` (cached per process); returns pid."""
    import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: ~2 s)

    from grafting_core.lab.runs.trainer import Trainer  # noqa: F401
    from grafting_core.lab.tasks.data import load_dataset

    for name in datasets:
        load_dataset(name)
    return os.getpid()


def _train_stored_run(store_root: str, run_id: str, resume: bool) -> str:
    from grafting_core.lab.runs.runner import execute_run  # imported in the worker, after spawn
    from grafting_core.lab.store.run_store import RunStore

    store = RunStore(store_root)
    try:
        return execute_run(store, run_id, resume=resume)
    except (Exception, KeyboardInterrupt):  # the store holds the outcome (status, error)
        return store.run(run_id)["status"]
    finally:
        store.close()


def _mark_worker_death(store_root: str, run_id: str) -> str:
    """The status of a run whose worker process died (SIGKILL, out of memory): interrupted,
    resumable from its last checkpoint."""
    from grafting_core.lab.store.run_store import RunStore

    store = RunStore(store_root)  # opening marks runs whose writer is gone as interrupted
    try:
        if store.run(run_id)["status"] == "running":  # it died before it took the run
            store.set_status(
                run_id,
                "interrupted",
                error="its worker process died before it started (killed, or out of memory)",
            )
        return store.run(run_id)["status"]
    finally:
        store.close()


class LocalExecutor:
    """Trains runs in ``max_workers`` spawned processes on this machine.

    Each worker is a one-process pool of its own, handed one task at a time from this
    executor's queue: a worker that dies (killed, out of memory) costs only its own run,
    which is marked interrupted; a fresh worker takes its place and the queue goes on.
    All dispatching happens on one thread (``_spawner``), so it needs no locks, and worker
    processes start from that thread (they take its priority, whichever thread submits:
    a live page lowers its own drawing thread's, ui.live).
    """

    def __init__(self, store_root: str | Path, max_workers: int | None = None) -> None:
        cores = usable_cores()
        self.store_root = str(store_root)
        self.max_workers = max_workers or cores
        if self.max_workers < 1:
            raise ValueError(f"Invalid max_workers: {self.max_workers} (must be >= 1)")
        self.threads = max(1, cores // self.max_workers)
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="grafting-spawn")
        self._spawner.submit(int).result()  # its thread starts now, from this thread
        self._workers = [self._new_worker() for _ in range(self.max_workers)]
        self._idle = list(range(self.max_workers))
        self._queue: collections.deque[tuple[Future, Callable[..., Any], tuple]] = (
            collections.deque()
        )
        self._running: dict[int, tuple[Future, Callable[..., Any], tuple]] = {}  # by worker
        self._closed = False
        _LIVE.add(self)

    def _new_worker(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads, os.getpid()),
        )

    def submit(self, run_id: str, *, resume: bool = False) -> Future:
        """Queue ``run_id`` (already in the store); the future yields its final status."""
        return self._enqueue(_train_stored_run, self.store_root, run_id, resume)

    def warm_up(self, datasets: Sequence[str] = ("mnist1d",)) -> list[Future]:
        """Start the workers now and load torch, the trainer and ``datasets`` (seed 0) in
        them, so that the first run does not wait ~5-10 s for it (an app calls this early)."""
        return [self._enqueue(_warm_worker, tuple(datasets)) for _ in range(self.max_workers)]

    def _enqueue(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue a task; its future can be cancelled until a worker takes it."""
        if self._closed:
            raise RuntimeError("cannot submit to a LocalExecutor after shutdown")
        future: Future = Future()
        self._queue.append((future, fn, args))
        self._spawner.submit(self._dispatch)
        return future

    def _dispatch(self) -> None:
        """Hand queued tasks to idle workers (on the spawner thread only)."""
        while self._idle and self._queue:
            future, fn, args = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            worker = self._idle.pop()
            self._running[worker] = (future, fn, args)
            task = self._start(worker, fn, args)
            task.add_done_callback(functools.partial(self._task_done, worker, future, fn, args))

    def _start(self, worker: int, fn: Callable[..., Any], args: tuple) -> Future:
        """Hand a task to a worker; an idle worker that died since (e.g. Ctrl-C reached it
        between runs) is replaced first."""
        with _without_main_script():
            try:
                return self._workers[worker].submit(fn, *args)
            except BrokenProcessPool:
                self._workers[worker] = self._new_worker()
                return self._workers[worker].submit(fn, *args)

    def _task_done(
        self, worker: int, future: Future, fn: Callable[..., Any], args: tuple, task: Future
    ) -> None:
        """A worker finished a task or died (in the worker's management thread)."""
        try:
            self._spawner.submit(self._settle, worker, future, fn, args, task)
        except RuntimeError:  # shut down: pass the outcome on
            self._settle(worker, future, fn, args, task)

    def _settle(
        self, worker: int, future: Future, fn: Callable[..., Any], args: tuple, task: Future
    ) -> None:
        """Pass a task's outcome to its future; replace a dead worker; dispatch more."""
        error = task.exception()
        if isinstance(error, BrokenProcessPool):  # the worker died (killed, out of memory)
            self._workers[worker].shutdown(wait=False)
            self._workers[worker] = self._new_worker()
            if fn is _train_stored_run:  # a run: it is interrupted, not lost
                with contextlib.suppress(Exception):
                    error, result = None, _mark_worker_death(self.store_root, args[1])
        elif error is None:
            result = task.result()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        del self._running[worker]
        self._idle.append(worker)
        self._dispatch()

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop accepting work; with ``wait`` let queued runs finish, else drop them (runs
        already training go on in their workers)."""
        self._closed = True
        if wait:
            while pending := [f for f, _, _ in [*self._queue, *self._running.values()]]:
                concurrent.futures.wait(pending)
        else:
            while self._queue:
                self._queue.popleft()[0].cancel()
        for worker in self._workers:
            worker.shutdown(wait=wait, cancel_futures=not wait)
        self._spawner.shutdown(wait=wait)

    def _stop_at_exit(self) -> None:
        """Stop the running runs at their next flush (checkpointed, resumable) and mark the
        queued ones interrupted (never started, resumable)."""
        if self._closed:
            return
        from grafting_core.lab.runs.runner import request_stop
        from grafting_core.lab.store.run_store import RunStore

        queued = [args[1] for _, fn, args in list(self._queue) if fn is _train_stored_run]
        self.shutdown(wait=False)
        with contextlib.suppress(Exception), contextlib.closing(RunStore(self.store_root)) as store:
            for _, fn, args in list(self._running.values()):
                if fn is _train_stored_run:
                    request_stop(store, args[1])
            for run_id in queued:
                store.set_status(
                    run_id, "interrupted", error="its process ended before a worker took it"
                )


_LIVE: weakref.WeakSet[LocalExecutor] = weakref.WeakSet()


def _stop_live_executors() -> None:
    """At interpreter exit (a server stopped by SIGTERM or Ctrl-C, a script that returns),
    stop every executor's runs: Python's exit then waits for the worker pools
    (``concurrent.futures``), and a long run would keep the process alive until it ended."""
    for executor in list(_LIVE):
        executor._stop_at_exit()


# ``threading``'s exit hooks run before the pools are joined, in reverse order of
# registration: this runs before concurrent.futures' own (registered when it was imported
# above). ``atexit`` would be too late: it runs after the join. (A private hook, the one
# concurrent.futures itself uses, kept since Python 3.9.)
threading._register_atexit(_stop_live_executors)
