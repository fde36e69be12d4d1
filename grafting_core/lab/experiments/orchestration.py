"""A tuned comparison run in the background: ``compare`` decides its next runs from the last
ones, so it orchestrates in a thread (its runs train on the jobs' workers), listed in a
registry so that a reader knows more runs are coming between its phases, and stoppable."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from grafting_core.lab.experiments.common import OptimizerChoice, new_group
from grafting_core.lab.experiments.compare import SweepPlan, compare
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.jobs import Jobs, UntilStopped, stop_runs
from grafting_core.lab.store.run_store import RunStore

FIRST_RUNS_WAIT = 10.0  # seconds start_comparison waits for a comparison's first runs


@dataclass
class Orchestration:
    """A comparison orchestrated by a thread: its stop flag and how it ended."""

    thread: threading.Thread
    stop: threading.Event = field(default_factory=threading.Event)
    error: str = ""  # why it ended early ("" when it ran to the end or was stopped)


Orchestrations = dict[str, Orchestration]  # group -> its orchestration, one per process


def start_comparison(
    store: RunStore,
    jobs: Jobs,
    orchestrations: Orchestrations,
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
    """Start ``compare`` in a daemon thread; returns its group once the first runs are in the
    store (a reader then has runs to watch). ``group``: continue that comparison
    (``comparison_request`` has its settings): its runs are kept, only the missing ones train.

    The thread only orchestrates (creates runs phase by phase, waits, reads results); the runs
    train on ``jobs``. It ends with the process: runs already trained are kept.
    """
    group = group or new_group("compare")
    before = len(store.runs(group=group, flatten_config=False))
    stop = threading.Event()
    executor = UntilStopped(jobs, store, stop)

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
    orchestrations[group] = orchestration
    thread.start()
    deadline = time.monotonic() + FIRST_RUNS_WAIT
    while (
        thread.is_alive()
        and time.monotonic() < deadline
        and len(store.runs(group=group, flatten_config=False)) == before
    ):
        time.sleep(0.05)
    return group


def orchestrating(orchestrations: Orchestrations, group: str) -> bool:
    """Whether a comparison of this process may still create runs in ``group``."""
    state = orchestrations.get(group)
    return bool(state and state.thread.is_alive())


def stop_comparison(
    store: RunStore, jobs: Jobs, orchestrations: Orchestrations, group: str
) -> None:
    """Stop a comparison: no further phase starts, and every run of its group stops."""
    state = orchestrations.get(group)
    if state is not None:
        state.stop.set()  # before listing the runs: later ones are refused (UntilStopped)
    stop_runs(store, jobs, store.runs(group=group)["run_id"].tolist())
