"""Runs trained by Dask workers, on this machine or a cluster, with the run store fed from here.

    executor = DaskExecutor("runs", "tcp://scheduler:8786")  # None: a LocalCluster here
    grid(store, base, optimizers, executor=executor)
    python -m grafting_core grid --executor dask --scheduler tcp://scheduler:8786

The process that builds the executor (the driver) owns the run store. It prepares each run
(``runner.prepare_run``: the config, the checkpoint a resume starts from, the artifacts the
config refers to) and a Dask worker trains it (``runner.train``) with a ``StreamSink``: every
record (metrics, per-layer norms, checkpoints, status) goes through one Dask ``Queue`` back to
the driver (one put per flush), whose thread writes it into the store as a local run would.
Workers never open the store; live pages and ``runs show`` see a remote run's rows as they
arrive. A stop asked through the store (``request_stop``, the app's Stop) is relayed to the
worker by a Dask ``Event`` that the run polls at each flush.

Faults:
- a worker that dies (kill -9, out of memory): Dask reschedules its task; the rerun finds the
  run claimed by the dead attempt and returns at once, and the driver marks the run
  interrupted, keeping every row and checkpoint it had received; it resumes on any executor;
- the driver that dies: a LocalCluster's worker processes exit with it (Dask's nanny keeps a
  pipe to each: closed, the worker exits at once); on a cluster the scheduler releases the
  tasks of a client that is gone, and a run sees its task cancelled at its next flush and
  stops training (the worker stays in the cluster). The runs stay "running" under the
  driver's pid, and the next opening of the store marks them interrupted: resumable;
- a scheduler that cannot be reached: the constructor raises one line naming the address
  (``ConnectionError``), before any run is created.

Dask is imported here only, when an executor is built: ``import grafting_core`` never needs it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafting_core.lab.runs.executor import _terminal_signals_blocked, _warm_worker, usable_cores
from grafting_core.lab.runs.runner import RunTicket, StoreSink, prepare_run, stop_requested, train
from grafting_core.lab.store.run_store import RunStore

INSTALL_HINT = "pip install 'grafting-core[dask]' (or distributed==2026.8.0)"
POLL_S = 0.25  # the driver's pause when no message was waiting (a run flushes every 0.25 s)
STOP_RELAY_S = 0.5  # how often the driver reads the store for stop requests of its runs
LOST = "lost"  # what the rerun of a task whose first worker died returns


def _forward(method: str) -> Callable[..., None]:
    def send(self: StreamSink, *args: Any, **kwargs: Any) -> None:
        self._send(method, args, kwargs)

    send.__name__ = method
    send.__doc__ = f"Send ``{method}`` to the driver, which calls it on the run's StoreSink."
    return send


class StreamSink:
    """A ``RunSink`` on a Dask worker: each call becomes a message ``(token, seq, method,
    args, kwargs)`` for the driver. The messages of one flush go in one ``put`` when the
    trainer next asks whether to stop (once per flush), the last ones with the final status;
    nothing is sent once the driver has let go of the task (it died, or cancelled it)."""

    def __init__(self, queue: Any, token: str, stop: Any, released: Callable[[], bool]) -> None:
        self.queue, self.token, self.stop, self.released = queue, token, stop, released
        self.sent = 0
        self.pending: list[tuple] = []

    def _send(self, method: str, args: tuple, kwargs: dict) -> None:
        self.pending.append((self.token, self.sent + len(self.pending), method, args, kwargs))
        if method in ("status", "log"):  # the run ends (a failure adds its traceback)
            self.flush()

    def flush(self) -> None:
        """Send the pending messages in one put."""
        if self.pending and not self.released():
            self.queue.put(self.pending)
            self.sent += len(self.pending)
        self.pending = []

    start = _forward("start")
    metrics = _forward("metrics")
    norms = _forward("norms")
    checkpoint = _forward("checkpoint")
    status = _forward("status")
    log = _forward("log")

    def stop_requested(self) -> bool:
        """After a flush: send its records; a stop relayed by the driver, or a driver that
        is gone."""
        self.flush()
        return self.released() or self.stop.is_set()


def _train_on_worker(
    ticket: RunTicket, token: str, queue_name: str, threads: int | None
) -> tuple[str, int]:
    """The Dask task: train ``ticket`` here, streaming to the driver; returns (final status,
    messages sent), or (LOST, 0) when an earlier attempt of this task started on a worker
    that died (Dask reruns a task whose worker died; the run must not train twice)."""
    import torch
    from distributed import Event, Queue, get_worker
    from distributed.worker import thread_state

    claim = Event(f"{token}-claim")
    if claim.is_set():
        return LOST, 0
    claim.set()
    if threads:
        torch.set_num_threads(threads)
    worker, key = get_worker(), thread_state.key

    def released() -> bool:
        # Dask's own record of this task on the worker (WorkerState: internal, no public
        # API says it): the scheduler releases it when its client is gone or cancelled it.
        task = worker.state.tasks.get(key)
        return task is None or task.state not in ("executing", "long-running")

    sink = StreamSink(Queue(queue_name), token, Event(f"{token}-stop"), released)
    try:
        status = train(ticket, sink)
    except Exception:  # sent to the driver as failed, with the traceback
        status = "failed"
    return status, sink.sent


@dataclass
class _Remote:
    """The driver's view of one submitted run."""

    run_id: str
    done: Future  # what submit returned: the final status
    stop: Any  # the Dask Event the worker polls
    task: Any = None  # the Dask future of _train_on_worker
    applied: int = 0  # messages written into the store
    stop_sent: bool = False


class DaskExecutor:
    """Trains stored runs on Dask workers; the store is written here only (an ``Executor``).

    ``scheduler``: a Dask scheduler address (``tcp://host:8786``), or None for a
    ``LocalCluster`` of ``n_workers`` processes (default: one per usable core) on this
    machine, with torch threads shared out as the local executor does. Each worker trains
    one run at a time per thread (start cluster workers with ``--nthreads 1``).

    A LocalCluster spawns its workers, and replaces one that died, as any multiprocessing
    spawn does: re-running the parent's ``__main__`` file unless it is guarded by
    ``if __name__ == "__main__"``. Streamlit pages are not, so the app takes a scheduler
    address only (its own machine trains with ``LocalExecutor``).
    """

    def __init__(
        self,
        store_root: str | Path,
        scheduler: str | None = None,
        *,
        n_workers: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        try:
            from distributed import Client, LocalCluster, Queue
        except ImportError:
            raise ImportError(f"The Dask executor needs distributed: {INSTALL_HINT}") from None
        if n_workers is not None and n_workers < 1:
            raise ValueError(f"Invalid n_workers: {n_workers} (must be >= 1)")
        self._cluster = None
        self.threads: int | None = None  # torch threads per run; None: the worker's own
        if scheduler is None:
            cores = usable_cores()
            n_workers = n_workers or cores
            # The cluster's thread, and the worker processes it starts (now, or to replace
            # one), keep the terminal's Ctrl-C and hang-up blocked: they reach the whole
            # process group, and a Dask worker dies of them mid-run. The driver stops its
            # runs instead (``stop``), each at the end of its step.
            with _terminal_signals_blocked():
                self._cluster = LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            self.threads = max(1, cores // n_workers)
        else:
            _check_reachable(scheduler, connect_timeout)
        self.client = Client(
            self._cluster or scheduler, timeout=connect_timeout, set_as_default=False
        )
        self.scheduler = self.client.scheduler.address
        self.max_workers = max(
            1, sum(w["nthreads"] for w in self.client.scheduler_info()["workers"].values())
        )
        self.store = RunStore(store_root)
        self._queue_name = f"grafting-{secrets.token_hex(6)}"
        self._queue = Queue(self._queue_name, client=self.client)
        self._runs: dict[str, _Remote] = {}  # token -> run
        self._lock = threading.Lock()
        self._finished: collections.deque[str] = collections.deque()  # tokens of ended tasks
        self._closed = False
        #: set by ``stop`` (or by a signal handler about to call it): new runs never start
        self.stopping = False
        self._disconnected = threading.Event()  # set once the client is closed
        self._pump_thread = threading.Thread(
            target=self._pump, name="grafting-dask-store", daemon=True
        )
        self._pump_thread.start()

    # ------------------------------------------------------------------ submit
    def submit(self, run_id: str, *, resume: bool = False) -> Future:
        """Prepare ``run_id`` (already in the store) here and queue it on the cluster; the
        future yields its final status once the store holds everything it recorded."""
        from distributed import Event

        done: Future = Future()
        if self.stopping:  # stopped: the run never starts (resumable from step 0)
            self.store.set_status(run_id, "stopped", step=0)
            done.set_result("stopped")
            return done
        if self._closed:
            raise RuntimeError("cannot submit to a DaskExecutor after shutdown")
        try:
            ticket = prepare_run(self.store, run_id, resume=resume)
        except Exception:  # recorded in the store (failed), or a resume refused
            done.set_result(self.store.run(run_id)["status"])
            return done
        token = f"grafting-{run_id}-{secrets.token_hex(4)}"
        remote = _Remote(run_id, done, Event(f"{token}-stop", client=self.client))
        with self._lock:
            self._runs[token] = remote
        try:
            remote.task = self.client.submit(
                _train_on_worker,
                ticket,
                token,
                self._queue_name,
                self.threads,
                key=token,
                pure=False,
            )
        except Exception as error:
            with self._lock:
                del self._runs[token]
            self.store.set_status(
                run_id,
                "interrupted",
                step=0,
                error=f"not started: the Dask scheduler {self.scheduler} "
                f"could not take it ({error})",
            )
            raise ConnectionError(
                f"Cannot submit run {run_id} to the Dask scheduler at {self.scheduler}: {error}"
            ) from None
        remote.task.add_done_callback(lambda _: self._finished.append(token))
        done.add_done_callback(lambda _: self._cancel_if_cancelled(remote))
        return done

    def warm_up(self, datasets: Sequence[str] = ("mnist1d",)) -> list[Future]:
        """Import torch and the trainer and build ``datasets`` on every worker now."""
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(self.client.run(_warm_worker, tuple(datasets)))
            except Exception as error:
                future.set_exception(error)

        threading.Thread(target=run, name="grafting-dask-warm", daemon=True).start()
        return [future]

    @staticmethod
    def _cancel_if_cancelled(remote: _Remote) -> None:
        """A run whose future was cancelled before it started never trains (a race with its
        start is caught by the stop it then sees at its first flush)."""
        if remote.done.cancelled():
            remote.stop.set()
            remote.task.cancel()

    # ------------------------------------------------------- the driver's thread
    def _pump(self) -> None:
        """Write what workers stream into the store, relay stops, settle ended runs."""
        last_relay = 0.0
        while not self._disconnected.is_set():
            with self._lock:
                if self._closed and not self._runs:
                    return
            ended = [self._finished.popleft() for _ in range(len(self._finished))]
            for message in self._receive():
                self._apply(*message)
            for token in ended:
                self._settle(token)
            if time.monotonic() - last_relay > STOP_RELAY_S:
                self._relay_stops()
                last_relay = time.monotonic()

    def _receive(self) -> list[tuple]:
        """Every message in the queue now, after a pause of POLL_S when there was none (a
        blocking get that times out is logged as an error by the scheduler)."""
        try:
            if puts := self._queue.get(batch=True):
                return [message for put in puts for message in put]
        except Exception:  # the connection is gone (shutdown, scheduler lost): nothing more
            pass
        time.sleep(POLL_S)
        return []

    def _apply(self, token: str, seq: int, method: str, args: Sequence, kwargs: dict) -> None:
        """Call ``method`` on the run's StoreSink, as the worker's trainer did on its sink."""
        remote = self._runs.get(token)
        if remote is None or seq != remote.applied:  # a run already settled
            return
        remote.applied += 1
        if method == "start" and not remote.done.set_running_or_notify_cancel():
            remote.stop.set()  # cancelled as it started: stop at its first flush
        try:
            getattr(StoreSink(self.store, remote.run_id), method)(*args, **kwargs)
        except Exception:  # the run was deleted meanwhile: stop training it
            remote.stop.set()

    def _relay_stops(self) -> None:
        """Pass stops asked through the store (from any process) on to the workers."""
        for remote in list(self._runs.values()):
            started = remote.done.running() and not remote.stop_sent
            if started and stop_requested(self.store, remote.run_id):
                remote.stop.set()
                remote.stop_sent = True

    def _settle(self, token: str) -> None:
        """A task ended: once the store holds all it sent, resolve the run's future. A run
        that could not say how it ended (its worker died, its task was cancelled or could not
        run) is marked here, keeping every row and checkpoint that had arrived."""
        from distributed import KilledWorker

        remote = self._runs[token]
        task, sent = remote.task, 0
        died = ("interrupted", "its Dask worker died (killed, or out of memory)")
        if task.cancelled():  # by its own future's cancel, or with the scheduler's connection
            ended = (
                ("stopped", None)
                if remote.done.cancelled()
                else (
                    "interrupted",
                    f"its Dask task was cancelled (connection to the scheduler "
                    f"{self.scheduler} lost?)",
                )
            )
        elif (error := task.exception()) is not None:
            ended = (
                died
                if isinstance(error, KilledWorker)
                else (
                    "failed",
                    f"the Dask worker could not run it: {type(error).__name__}: {error}",
                )
            )
        else:
            status, sent = task.result()
            ended = died if status == LOST else None
        if remote.applied < sent:  # its last messages are still on their way
            self._finished.append(token)
            return
        with self._lock:
            del self._runs[token]
        for name in (f"{token}-claim", f"{token}-stop"):
            _clear_event(self.client, name)
        try:
            if ended and self.store.run(remote.run_id)["status"] == "running":
                self.store.set_status(remote.run_id, ended[0], error=ended[1])
            final = self.store.run(remote.run_id)["status"]
        except KeyError as error:  # the run was deleted meanwhile
            if not remote.done.cancelled():
                remote.done.set_exception(error)
            return
        if not remote.done.cancelled():
            remote.done.set_result(final)

    # ---------------------------------------------------------------- shutdown
    def stop(self, *, wait: bool = True) -> list[str]:
        """Stop every run handed over: queued ones never start (``stopped`` at step 0),
        training ones stop at their next flush, checkpointed (``stopped``); with ``wait``,
        until the store holds how they ended. Then the connection closes. Returns the ids of
        the runs it stopped. A KeyboardInterrupt while waiting is left to the caller
        (``kill``)."""
        self.stopping = True
        with self._lock:
            run_ids = [remote.run_id for remote in self._runs.values()]
        self.shutdown(wait=False, grace_s=float("inf") if wait else 0.0)
        return run_ids

    def kill(self) -> None:
        """Let go of the runs now: the connection (and a LocalCluster of ours, its worker
        processes with it) closes; runs still training are marked interrupted by the caller
        or the next opening of the store."""
        self.stopping = True
        with self._lock:
            self._closed = True
        self._close()

    def _close(self) -> None:
        if self._disconnected.is_set():
            return
        self._disconnected.set()
        for close in (self._queue.close, self.client.close):
            with contextlib.suppress(Exception):
                close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
        self.store.close()

    def shutdown(self, *, wait: bool = True, grace_s: float = 30.0) -> None:
        """Stop accepting runs. ``wait``: let every run finish; otherwise queued runs never
        start (marked stopped) and training ones are asked to stop, given ``grace_s`` to
        checkpoint. Then the connection (and a LocalCluster of ours) closes."""
        if self._disconnected.is_set():  # closed already (stop, kill)
            return
        with self._lock:
            self._closed = True
            runs = list(self._runs.values())
        if not wait:
            for remote in runs:
                if remote.done.cancel():
                    self.store.set_status(remote.run_id, "stopped", step=0)
                else:
                    remote.stop.set()
        deadline = None if wait else time.monotonic() + grace_s
        while self._pump_thread.is_alive() and (deadline is None or time.monotonic() < deadline):
            self._pump_thread.join(timeout=POLL_S)
        self._close()


def _check_reachable(address: str, timeout: float) -> None:
    """Raise one line naming ``address`` when no Dask scheduler answers there. (Checked with
    Dask's comm layer before a Client is made: a Client that failed to connect spends 10 s
    closing itself when collected.)"""
    import asyncio

    from distributed.comm import connect

    async def probe() -> None:
        comm = await connect(address, timeout=timeout)
        await comm.close()

    # Dask's connect bounds the connection (retried until ``timeout``) but not the handshake
    # after it: a server that accepts and stays silent would hang it. One second past
    # ``timeout``, what is left waiting is the handshake.
    try:
        asyncio.run(asyncio.wait_for(probe(), timeout + 1.0))
    except TimeoutError:  # ours (distributed's own connect timeout is an OSError)
        reason = (
            f"something accepted the connection but gave no answer to Dask's handshake within "
            f"{timeout + 1.0:g} s (is it a Dask scheduler?)"
        )
    except (OSError, ValueError) as error:  # ValueError: a malformed address
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    except Exception:  # a handshake that made no sense (MemoryError on a bogus frame length)
        reason = "what answers there does not speak Dask's protocol"
    else:
        return
    raise ConnectionError(f"Cannot reach a Dask scheduler at {address}: {reason}")


def _clear_event(client: Any, name: str) -> None:
    """Forget a run's Dask Event on the scheduler (a cleared event without waiters is dropped)."""
    from distributed import Event

    try:
        Event(name, client=client).clear()
    except Exception:  # the scheduler is gone: nothing to forget
        return
