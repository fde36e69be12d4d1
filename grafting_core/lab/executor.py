"""Where runs execute: an executor takes stored run ids and trains them somewhere else.

Experiments and the app only call ``submit(run_id)`` and read results from the store, so a
cluster backend can replace ``LocalExecutor`` without touching them. The local one trains
in spawned worker processes (a real stop, no GIL fight with a web server, the same code
path as the command line), at most one per core by default, with torch threads shared out.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

import torch


class Executor(Protocol):
    """Anything that can train stored runs: ``submit`` returns a future of the final status."""

    def submit(self, run_id: str, *, resume: bool = False) -> Future: ...

    def shutdown(self, *, wait: bool = True) -> None: ...


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


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
        cores = os.cpu_count() or 1
        self.store_root = str(store_root)
        self.max_workers = max_workers or cores
        self.threads = max(1, cores // self.max_workers)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.max_workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads,))

    def submit(self, run_id: str, *, resume: bool = False) -> Future:
        """Queue ``run_id`` (already in the store); the future yields its final status."""
        try:
            return self._pool.submit(_train_stored_run, self.store_root, run_id, resume)
        except BrokenProcessPool:  # a worker was killed (e.g. out of memory): start afresh
            self._pool = self._new_pool()
            return self._pool.submit(_train_stored_run, self.store_root, run_id, resume)

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop accepting work; with ``wait`` let queued runs finish."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
