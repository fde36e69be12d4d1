"""Stops that come from outside a run: Ctrl-C, SIGTERM, SIGHUP (a closed terminal), and the
death of the parent process.

A signal never cuts a training step in half: the handler asks the trainer to stop at the end
of the step it is in (``Trainer.stop_soon``); the trainer then flushes what it recorded and
checkpoints, so the run resumes with no lost rows. A second Ctrl-C raises KeyboardInterrupt
at once, for a step that hangs (the run then resumes from its last periodic checkpoint).

A worker process calls ``exit_with_parent`` once: when the process that started it dies
(``kill -9``, a crashed server, a restarted notebook kernel) its runs stop as "interrupted"
(flushed and checkpointed) and the worker exits, instead of training on as an orphan.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

#: ``stop(status, reason)`` of each run training in this process (status: stopped|interrupted)
Stop = Callable[[str, str], None]
_ACTIVE: list[Stop] = []
_ACTIVE_LOCK = threading.Lock()
#: Ctrl-C, ``kill``, and a closed terminal (SIGHUP; not on Windows): each stops a run cleanly.
SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


@contextlib.contextmanager
def stoppable(stop: Stop) -> Iterator[None]:
    """While the block runs, Ctrl-C, SIGTERM and SIGHUP call ``stop("stopped", ...)`` (in the main
    thread only: Python delivers signals there) and a dead parent calls
    ``stop("interrupted", ...)``."""
    requested: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        requested.append(signum)
        stop("stopped", f"stopped by {signal.Signals(signum).name}")

    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS} if in_main else {}
    with _ACTIVE_LOCK:
        _ACTIVE.append(stop)
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.remove(stop)
        for sig, old in previous.items():
            signal.signal(sig, old)


def exit_with_parent(parent_pid: int, *, grace_s: float = 60.0, poll_s: float = 0.25) -> None:
    """Watch ``parent_pid`` from a daemon thread; once it is gone, stop this process's runs as
    interrupted, give them ``grace_s`` seconds to checkpoint, and exit.

    An orphan is re-parented (to init or a sub-reaper), so ``os.getppid()`` changes: polling
    it works whatever killed the parent, ``kill -9`` included, with no help from the parent.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        with _ACTIVE_LOCK:
            stops = list(_ACTIVE)
        for stop in stops:
            stop("interrupted", f"the process that started this worker ({parent_pid}) ended")
        deadline = time.monotonic() + grace_s
        while _ACTIVE and time.monotonic() < deadline:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="grafting-lifeline", daemon=True).start()
