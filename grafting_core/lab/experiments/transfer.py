"""Schedule transfer: M alone, D alone, online M#D, and M's recorded schedule replayed on D
(the replays wait for their schedule's source run)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, as_completed

import pandas as pd

from grafting_core.lab.experiments.common import (
    OptimizerChoice,
    Progress,
    final_metrics,
    graft_run,
    new_group,
    run_all,
)
from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import Executor
from grafting_core.lab.runs.runner import create_run, stop_requested
from grafting_core.lab.store.run_store import RunStore


def transfer_configs(
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    direction: tuple[str, OptimizerChoice],
    seeds: Sequence[int] = (0,),
    *,
    with_magnitude: bool = True,
) -> list[PlannedRun]:
    """M alone (unless ``with_magnitude`` is False), D alone and online M#D for each seed:
    the runs of a schedule transfer that need no recorded schedule."""
    planned = [graft_run(base, magnitude, None, seed=s) for s in seeds] if with_magnitude else []
    planned += [graft_run(base, direction, None, seed=s) for s in seeds]
    return planned + [graft_run(base, magnitude, direction, seed=s) for s in seeds]


def replay_config(
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    direction: tuple[str, OptimizerChoice],
    *,
    source_run: str,
    seed: int | None = None,
) -> PlannedRun:
    """D with the step sizes recorded in ``source_run`` (M's ‖Δ_M‖ per layer and step).

    The recorded steps already carry M's learning-rate schedule, so the replay itself runs
    with a constant one (a schedule on top would apply it twice).
    """
    (m_name, m_hp), (d_name, d_hp) = magnitude[1], direction[1]
    config = base.replace(
        magnitude=m_name,
        magnitude_hparams=dict(m_hp),
        direction=d_name,
        direction_hparams=dict(d_hp),
        replay=f"run:{source_run}",
        schedule="constant",
        warmup_steps=0,
        static_ratios="",
        seed=base.seed if seed is None else seed,
        name=f"replay({magnitude[0]})#{direction[0]}",
    )
    return PlannedRun(config, Arm("replay", magnitude[0], direction[0]))


def _copy(done: Future, into: Future) -> None:
    """Give ``into`` the outcome of the finished future ``done``."""
    if done.cancelled():
        into.cancel()
    elif done.exception() is not None:
        into.set_exception(done.exception())
    else:
        into.set_result(done.result())


def submit_after(
    store: RunStore, executor: Executor, run_id: str, after: Future, source_run: str
) -> Future:
    """Queue ``run_id`` once ``after`` (the future of ``source_run``) is done, without waiting.

    The run starts only if ``source_run`` finished; otherwise it is marked stopped (the
    source was stopped, or ``run_id`` was asked to stop) or failed, naming the source. The
    hand-off runs in a short thread of its own, not in the pool's result thread.
    """
    result: Future = Future()

    def settle(status: str, error: str | None = None) -> None:
        store.set_status(run_id, status, step=0, error=error)
        result.set_result(status)

    def hand_off() -> None:
        try:
            source = store.run(source_run)["status"]
            if stop_requested(store, run_id) or source == "stopped":
                settle("stopped")
            elif source != "finished":
                settle(
                    "failed",
                    f"its schedule source run {source_run} ended {source}: "
                    "there is no complete schedule to replay",
                )
            else:
                executor.submit(run_id).add_done_callback(lambda done: _copy(done, result))
        except Exception as error:  # store closed or executor shut down: say so, never hang
            try:
                store.set_status(run_id, "failed", error=f"{type(error).__name__}: {error}")
            finally:
                result.set_exception(error)

    after.add_done_callback(lambda _: threading.Thread(target=hand_off, daemon=True).start())
    return result


def start_schedule_transfer(
    store: RunStore,
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    direction: tuple[str, OptimizerChoice],
    seeds: Sequence[int] = (0,),
    *,
    executor: Executor,
    source_runs: Sequence[str] = (),
) -> tuple[str, dict[str, Future]]:
    """Queue a schedule transfer and return at once: (group, run id → future), in order.

    Without ``source_runs`` M alone trains first and each replay waits for its seed's M run.
    With ``source_runs`` (one finished run per seed whose recorded ‖Δ_M‖ is the schedule)
    M alone is not trained again and the replays start at once.
    """
    if source_runs and len(source_runs) != len(seeds):
        raise ValueError(
            f"Need one source run per seed: {len(source_runs)} runs, {len(seeds)} seeds"
        )
    group = new_group("transfer")
    planned = transfer_configs(base, magnitude, direction, seeds, with_magnitude=not source_runs)
    # Every config is built (and so validated) before any run is created.
    replays = [replay_config(base, magnitude, direction, seed=s, source_run="?") for s in seeds]
    futures = {}
    for config, arm in planned:
        run_id = create_run(store, config, kind="transfer", group=group, arm=arm)
        futures[run_id] = executor.submit(run_id)
    sources = list(source_runs) or list(futures)[: len(seeds)]
    for source, (replay, arm) in zip(sources, replays):
        run_id = create_run(
            store, replay.replace(replay=f"run:{source}"), kind="transfer", group=group, arm=arm
        )
        if source in futures:
            futures[run_id] = submit_after(store, executor, run_id, futures[source], source)
        else:
            futures[run_id] = executor.submit(run_id)
    return group, futures


def schedule_transfer(
    store: RunStore,
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    direction: tuple[str, OptimizerChoice],
    seeds: Sequence[int] = (0,),
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> tuple[str, pd.DataFrame]:
    """M alone, D alone, online M#D, then M's recorded schedule replayed onto D."""
    if executor is not None:
        group, futures = start_schedule_transfer(
            store, base, magnitude, direction, seeds, executor=executor
        )
        for done, _ in enumerate(as_completed(futures.values()), 1):
            if progress:
                progress(done, len(futures))
        return group, final_metrics(store, list(futures))
    group = new_group("transfer")
    first = transfer_configs(base, magnitude, direction, seeds)
    total = len(first) + len(seeds)
    report = (lambda done, _: progress(done, total)) if progress else None
    ids = run_all(store, first, group=group, kind="transfer", progress=report)
    replays = [
        replay_config(base, magnitude, direction, seed=s, source_run=ids[i])
        for i, s in enumerate(seeds)
    ]
    report = (lambda done, _: progress(len(first) + done, total)) if progress else None
    ids += run_all(store, replays, group=group, kind="transfer", progress=report)
    return group, final_metrics(store, ids)
