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
import signal
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
    """Anything that can train stored runs: ``submit`` returns a future of the final status.

    An executor may also offer ``submit_batch(run_ids, *, resume)``: the runs trained
    together (``runner.execute_batch``), the future yielding their statuses in order;
    ``submit_runs`` falls back to one ``submit`` per run where it does not."""

    def submit(self, run_id: str, *, resume: bool = False) -> Future: ...

    def shutdown(self, *, wait: bool = True) -> None: ...


def submit_runs(
    executor: Executor, run_ids: Sequence[str], *, resume: bool = False
) -> list[Future]:
    """Hand ``run_ids`` to ``executor`` as one batch where it takes batches (one future),
    else one by one (a future each)."""
    submit_batch = getattr(executor, "submit_batch", None)
    if submit_batch is not None and len(run_ids) > 1:
        return [submit_batch(list(run_ids), resume=resume)]
    return [executor.submit(run_id, resume=resume) for run_id in run_ids]


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


#: A terminal's Ctrl-C and hang-up, which reach every process of its foreground group.
TERMINAL_SIGNALS = {signal.SIGINT} | ({signal.SIGHUP} if hasattr(signal, "SIGHUP") else set())


@contextlib.contextmanager
def _terminal_signals_blocked() -> Iterator[None]:
    """Processes started in the block inherit the terminal's signals blocked (a signal mask
    survives fork and exec): neither a worker that is not ready for them (``_init_worker``)
    nor multiprocessing's resource tracker (it ignores SIGINT, dies of SIGHUP) is ended by
    a Ctrl-C or a closed terminal meant for the process that owns them. A signal that
    reaches this thread meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_SIGNALS)
    try:
        # Start the tracker now if it is not running: its start unblocks SIGINT on the
        # thread that starts it (multiprocessing.resource_tracker), so block again after.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_SIGNALS)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _init_worker(threads: int, parent_pid: int) -> None:
    from grafting_core.lab.runs.lifeline import exit_with_parent

    # An idle worker ignores the terminal's signals (the process that owns the executor
    # decides what stops: ``LocalExecutor.stop``); a run in training takes them
    # (lifeline.stoppable) and stops at the end of its step.
    for sig in TERMINAL_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINAL_SIGNALS)
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


def _train_stored_batch(store_root: str, run_ids: tuple[str, ...], resume: bool) -> list[str]:
    from grafting_core.lab.runs.runner import execute_batch
    from grafting_core.lab.store.run_store import RunStore

    store = RunStore(store_root)
    try:
        return execute_batch(store, run_ids, resume=resume)
    except (Exception, KeyboardInterrupt):  # the store holds each outcome
        return [store.run(run_id)["status"] for run_id in run_ids]
    finally:
        store.close()


def _task_runs(fn: Callable[..., Any], args: tuple) -> list[str]:
    """The run ids a queued task trains (none for a warm-up)."""
    if fn is _train_stored_run:
        return [args[1]]
    if fn is _train_stored_batch:
        return list(args[1])
    return []


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
        with _terminal_signals_blocked():  # may start multiprocessing's resource tracker
            self._workers = [self._new_worker() for _ in range(self.max_workers)]
        self._idle = list(range(self.max_workers))
        self._queue: collections.deque[tuple[Future, Callable[..., Any], tuple]] = (
            collections.deque()
        )
        self._running: dict[int, tuple[Future, Callable[..., Any], tuple]] = {}  # by worker
        self._closed = False
        #: set by ``stop`` (or, as a plain write, by a signal handler that is about to call it):
        #: no queued task is handed to a worker any more, and new runs are marked stopped.
        self.stopping = False
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

    def submit_batch(self, run_ids: Sequence[str], *, resume: bool = False) -> Future:
        """Queue ``run_ids`` (already in the store) to train in one worker, those that can
        as one batched model (``runner.execute_batch``); the future yields their final
        statuses, in order."""
        return self._enqueue(_train_stored_batch, self.store_root, tuple(run_ids), resume)

    def warm_up(self, datasets: Sequence[str] = ("mnist1d",)) -> list[Future]:
        """Start the workers now and load torch, the trainer and ``datasets`` (seed 0) in
        them, so that the first run does not wait ~5-10 s for it (an app calls this early)."""
        return [self._enqueue(_warm_worker, tuple(datasets)) for _ in range(self.max_workers)]

    def _enqueue(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue a task; its future can be cancelled until a worker takes it."""
        if self.stopping and _task_runs(fn, args):  # stopped: it never starts
            statuses = [_never_started(self.store_root, r).result() for r in _task_runs(fn, args)]
            future: Future = Future()
            future.set_result(statuses[0] if fn is _train_stored_run else statuses)
            return future
        if self._closed:
            raise RuntimeError("cannot submit to a LocalExecutor after shutdown")
        future = Future()
        self._queue.append((future, fn, args))
        self._spawner.submit(self._dispatch)
        return future

    def _dispatch(self) -> None:
        """Hand queued tasks to idle workers (on the spawner thread only)."""
        while self._idle and self._queue and not self.stopping:
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
        with _without_main_script(), _terminal_signals_blocked():
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
            with _terminal_signals_blocked():
                self._workers[worker] = self._new_worker()
            if _task_runs(fn, args):  # runs: they are interrupted, not lost
                with contextlib.suppress(Exception):
                    statuses = [
                        _mark_worker_death(self.store_root, r) for r in _task_runs(fn, args)
                    ]
                    error, result = None, statuses[0] if fn is _train_stored_run else statuses
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

    def stop(self, *, wait: bool = True) -> list[str]:
        """Stop every run handed over: queued ones never start (marked ``stopped``, resumable
        from step 0), training ones stop at their next flush, checkpointed (``stopped``,
        resumable exactly); with ``wait``, until they have. Then the workers shut down.
        Returns the ids of the runs that were queued or training.

        A KeyboardInterrupt while waiting (a second Ctrl-C) is left to the caller, who may
        ``kill`` the workers."""
        self.stopping = True
        if self._closed:
            return []
        queued, running = self._spawner.submit(self._drop_queue).result()
        from grafting_core.lab.runs.runner import request_stop
        from grafting_core.lab.store.run_store import RunStore

        with contextlib.closing(RunStore(self.store_root)) as store:
            for run_id in queued:
                with contextlib.suppress(KeyError):  # deleted meanwhile
                    store.set_status(run_id, "stopped", step=0)
            for run_id, _ in running:
                with contextlib.suppress(KeyError):
                    request_stop(store, run_id)
        if wait:
            concurrent.futures.wait({future for _, future in running})
        self.shutdown(wait=wait)
        return queued + [run_id for run_id, _ in running]

    def _drop_queue(self) -> tuple[list[str], list[tuple[str, Future]]]:
        """Cancel every queued task (on the spawner thread); the ids of the queued runs and
        the (id, future) of the runs in training."""
        queued = []
        while self._queue:
            future, fn, args = self._queue.popleft()
            if future.cancel():
                queued += _task_runs(fn, args)
        running = [(r, f) for f, fn, a in self._running.values() for r in _task_runs(fn, a)]
        return queued, running

    def kill(self) -> None:
        """End the worker processes now (a second Ctrl-C while ``stop`` waits): their runs
        are marked ``interrupted``, resumable from their last periodic checkpoint."""
        self.stopping = self._closed = True
        for worker in self._workers:
            for process in list(getattr(worker, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    process.kill()
                    process.join(timeout=10)
        for worker in self._workers:
            with contextlib.suppress(Exception):
                worker.shutdown(wait=False, cancel_futures=True)
        self._spawner.shutdown(wait=False, cancel_futures=True)
        from grafting_core.lab.store.run_store import RunStore

        with contextlib.suppress(Exception), contextlib.closing(RunStore(self.store_root)) as store:
            store.mark_interrupted()

    def _stop_at_exit(self) -> None:
        """Stop the running runs at their next flush (checkpointed, resumable) and mark the
        queued ones interrupted (never started, resumable)."""
        if self._closed:
            return
        from grafting_core.lab.runs.runner import request_stop
        from grafting_core.lab.store.run_store import RunStore

        queued = [r for _, fn, args in list(self._queue) for r in _task_runs(fn, args)]
        self.shutdown(wait=False)
        with contextlib.suppress(Exception), contextlib.closing(RunStore(self.store_root)) as store:
            for _, fn, args in list(self._running.values()):
                for run_id in _task_runs(fn, args):
                    request_stop(store, run_id)
            for run_id in queued:
                store.set_status(
                    run_id, "interrupted", error="its process ended before a worker took it"
                )


_LIVE: weakref.WeakSet[LocalExecutor] = weakref.WeakSet()


def _never_started(store_root: str, run_id: str) -> Future:
    """A run handed to a stopped executor: marked ``stopped`` at step 0 (resumable), never
    trained; its future is already done."""
    from grafting_core.lab.store.run_store import RunStore

    with contextlib.closing(RunStore(store_root)) as store:
        store.set_status(run_id, "stopped", step=0)
    future: Future = Future()
    future.set_result("stopped")
    return future


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
