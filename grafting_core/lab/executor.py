"""Where runs execute: an executor takes stored run ids and trains them somewhere else.

Experiments and the app only call ``submit(run_id)`` and read results from the store, so a
cluster backend can replace ``LocalExecutor`` without touching them. The local one trains
in spawned worker processes (a real stop, no GIL fight with a web server, the same code
path as the command line), at most one per core by default, with torch threads shared out.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import types
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


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _warm_worker(datasets: Sequence[str]) -> int:
    """Import what training needs and build ``datasets`` (cached per process); returns pid."""
    import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: ~2 s)

    from .data import load_dataset
    from .trainer import Trainer  # noqa: F401

    for name in datasets:
        load_dataset(name)
    return os.getpid()


def _train_stored_run(store_root: str, run_id: str, resume: bool) -> str:
    from .runner import execute_run  # imported in the worker, after spawn
    from .store import RunStore

    store = RunStore(store_root)
    try:
        return execute_run(store, run_id, resume=resume)
    except Exception:
        return "failed"  # the store already holds the error and traceback
    finally:
        store.close()


class LocalExecutor:
    """Trains runs in ``max_workers`` spawned processes on this machine."""

    def __init__(self, store_root: str | Path, max_workers: int | None = None) -> None:
        cores = usable_cores()
        self.store_root = str(store_root)
        self.max_workers = max_workers or cores
        self.threads = max(1, cores // self.max_workers)
        # Worker processes start from this one thread, so they take its priority whichever
        # thread submits (a live page lowers its own drawing thread's: ui.live).
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="grafting-spawn")
        self._spawner.submit(int).result()  # its thread starts now, from this thread
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.max_workers,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads,))

    def submit(self, run_id: str, *, resume: bool = False) -> Future:
        """Queue ``run_id`` (already in the store); the future yields its final status."""
        return self._submit(_train_stored_run, self.store_root, run_id, resume)

    def warm_up(self, datasets: Sequence[str] = ("mnist1d",)) -> list[Future]:
        """Start the workers now and load torch, the trainer and ``datasets`` (seed 0) in
        them, so that the first run does not wait ~5-10 s for it (an app calls this early)."""
        return [self._submit(_warm_worker, tuple(datasets)) for _ in range(self.max_workers)]

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._spawner.submit(self._submit_here, fn, *args).result()

    def _submit_here(self, fn: Callable[..., Any], *args: Any) -> Future:
        with _without_main_script():
            try:
                return self._pool.submit(fn, *args)
            except BrokenProcessPool:  # a worker was killed (e.g. out of memory): start afresh
                self._pool = self._new_pool()
                return self._pool.submit(fn, *args)

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop accepting work; with ``wait`` let queued runs finish."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self._spawner.shutdown(wait=wait)
