"""Experiments as plain functions over the run store, shared by the CLI, app and notebooks.

- ``grid``: every M#D pair over a set of optimizers (A#A is plain A), several seeds;
- ``schedule_transfer``: M alone, D alone, online M#D, and M's recorded schedule replayed on D;
- ``static_ratio_experiment``: a short M#D window → per-layer multipliers → plain SGD with
  them, next to M and the best plain SGD of a small learning-rate sweep, with memory.

Each returns the store group id and a pandas table of final metrics; runs go to an
``Executor`` (local worker processes) or run inline when none is given. These block until
done. An app builds the same runs without blocking: ``grid_configs``, ``transfer_configs``,
``static_ratio_configs`` give the configs (one source of truth), ``start_schedule_transfer``
queues a transfer whose replays wait for their schedule's source run (``submit_after``).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, as_completed

import numpy as np
import pandas as pd

from ..registry import OptimizerSpec
from .analysis import static_ratios_from_run
from .arms import Arm, PlannedRun
from .config import RunConfig
from .executor import Executor
from .runner import create_run, execute_run, stop_requested
from .store import RunStore

Progress = Callable[[int, int], None]  # (runs done, runs total)
LR_COLUMN = "config.magnitude_hparams.lr"  # a run's lr (M's) in ``RunStore.runs``


def round_lr(lr: float) -> float:
    """An lr of a sweep, to 3 significant digits (as shown, and as stored)."""
    return float(f"{lr:.3g}")


def beyond_edge(best: float, tried: Sequence[float], factor: float) -> float:
    """The next lr past the edge of ``tried`` that ``best`` sits on, ``factor`` away."""
    return round_lr(best / factor if best == min(tried) else best * factor)


OptimizerChoice = tuple[str, dict]  # (registry name, hyperparameters)

#: Starting points that train every lab task reasonably (tune per task for real studies).
LAB_OPTIMIZERS: dict[str, OptimizerChoice] = {
    "sgd": ("sgd", {"lr": 0.1, "momentum": 0.9}),
    "adam": ("adam", {"lr": 1e-3}),
    "adagrad": ("adagrad", {"lr": 0.05}),
    "rmsprop": ("rmsprop", {"lr": 1e-3}),
    "lion": ("lion", {"lr": 1e-4}),
    "lamb": ("lamb", {"lr": 1e-2}),
    "shampoo": ("shampoo", {"lr": 0.3}),  # pytorch-optimizer's; see registry.py
    "soap": ("soap", {"lr": 1e-2}),
}


def new_group(kind: str) -> str:
    """A readable, unique group id for one experiment's runs."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def graft_config(
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    direction: tuple[str, OptimizerChoice] | None,
    **changes,
) -> RunConfig:
    """``base`` with M (and D) set; ``direction=None`` or D equal to M gives plain M."""
    (m_label, (m_name, m_hp)) = magnitude
    plain = direction is None or direction[1] == magnitude[1]
    d_label, (d_name, d_hp) = (m_label, ("", {})) if plain else (direction[0], direction[1])
    return base.replace(
        **{
            "magnitude": m_name,
            "magnitude_hparams": dict(m_hp),
            "direction": d_name,
            "direction_hparams": dict(d_hp),
            "name": f"{m_label}#{d_label}",
            **changes,
        }
    )


def graft_run(
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    direction: tuple[str, OptimizerChoice] | None,
    *,
    role: str | None = None,
    **changes,
) -> PlannedRun:
    """``graft_config`` with its arm: plain M (role ``plain`` unless given) or M#D (``graft``)."""
    config = graft_config(base, magnitude, direction, **changes)
    if config.direction:
        return PlannedRun(config, Arm(role or "graft", magnitude[0], direction[0]))
    return PlannedRun(config, Arm(role or "plain", magnitude[0]))


#: What a run of a continued experiment is worth: an outcome is kept, a stop is resumed.
KEPT, RESUMED = ("finished", "diverged", "failed"), ("stopped", "interrupted")


def run_all(
    store: RunStore,
    planned: Sequence[PlannedRun],
    *,
    group: str,
    kind: str,
    executor: Executor | None = None,
    progress: Progress | None = None,
    reuse: bool = False,
) -> list[str]:
    """Create one run per planned run in ``group`` and train them all; returns the run ids.

    ``reuse``: as in :func:`record_runs`. An experiment run again on its group continues
    where it stopped, and more seeds train only their own runs.
    """
    run_ids, todo = record_runs(store, planned, group=group, kind=kind, reuse=reuse)
    done = len(run_ids) - len(todo)
    if progress:
        progress(done, len(run_ids))
    if executor is None:
        for run_id, resume in todo:
            try:
                execute_run(store, run_id, resume=resume)
            except Exception:
                pass  # recorded as failed in the store; the experiment carries on
            done += 1
            if progress:
                progress(done, len(run_ids))
        return run_ids
    for _ in as_completed([executor.submit(r, resume=resume) for r, resume in todo]):
        done += 1
        if progress:
            progress(done, len(run_ids))
    return run_ids


def record_runs(
    store: RunStore,
    planned: Sequence[PlannedRun],
    *,
    group: str,
    kind: str,
    reuse: bool = False,
) -> tuple[list[str], list[tuple[str, bool]]]:
    """Record the planned runs in ``group``: every run id, and the runs to train as
    ``(run id, resume)``.

    ``reuse``: a planned run whose config a run of ``group`` already has is not created
    again; that run is kept as it ended (finished, diverged, failed) or resumed (stopped,
    interrupted).
    """
    existing = _runs_by_config(store, group) if reuse else {}
    run_ids, todo = [], []
    for config, arm in planned:
        run_id, status = existing.get(_config_key(config), (None, None))
        if run_id is None:
            run_id = create_run(store, config, kind=kind, group=group, arm=arm)
        if status not in KEPT:
            todo.append((run_id, status in RESUMED))
        run_ids.append(run_id)
    return run_ids, todo


#: Settings that change how a run is kept (how often it checkpoints, flushes its rows), not
#: what it computes: a group continued under other values (a newer version's defaults, say)
#: keeps its runs instead of training them again.
HOUSEKEEPING = ("checkpoint_every", "flush_seconds")


def _config_key(config: RunConfig) -> str:
    kept = {k: v for k, v in config.to_dict().items() if k not in HOUSEKEEPING}
    return json.dumps(kept, sort_keys=True)


def _runs_by_config(store: RunStore, group: str) -> dict[str, tuple[str, str]]:
    """The runs of ``group`` by config: (run id, status); a run whose writer died counts as
    interrupted, one live in another process is refused (it would be trained twice)."""
    store.mark_interrupted()
    runs = store.runs(group=group, flatten_config=False)
    live = runs[runs["status"] == "running"]
    if not live.empty:
        raise ValueError(
            f"Group {group!r} has {len(live)} runs training in another process "
            f"(e.g. {live['run_id'].iloc[0]}); wait for them or stop them first"
        )
    return {
        _config_key(RunConfig.from_dict(config)): (run_id, status)
        for run_id, status, config in zip(runs["run_id"], runs["status"], runs["config"])
    }


def final_metrics(
    store: RunStore,
    run_ids: Sequence[str],
    metrics: Sequence[str] = ("val_loss", "val_accuracy", "optimizer_state_bytes"),
    *,
    runs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per run: name, arm (role, M and D labels), status and each metric's last value.

    ``runs``: rows of ``store.runs()`` that hold ``run_ids`` (a group's, say), when the caller
    has read them already; otherwise every run of the store is read.
    """
    runs = (store.runs() if runs is None else runs).set_index("run_id").loc[list(run_ids)]
    table = runs[
        ["name", "role", "magnitude_arm", "direction_arm", "status", "last_step", "error"]
    ].copy()
    long = store.metrics(list(run_ids), names=list(metrics))
    if not long.empty:
        last = long.sort_values("step").groupby(["run_id", "name"])["value"].last().unstack()
        table = table.join(last)
    for metric in metrics:
        if metric not in table:
            table[metric] = float("nan")
    return table.reset_index()


def grid_configs(
    base: RunConfig, optimizers: Mapping[str, OptimizerChoice], seeds: Sequence[int] = (0,)
) -> list[PlannedRun]:
    """Every M#D pair of ``optimizers`` (label → (name, hparams)) for each seed, M-major."""
    if len(optimizers) < 2:
        raise ValueError(f"A grid needs at least two optimizers (got {len(optimizers)})")
    if not seeds:
        raise ValueError("A grid needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Invalid seeds {list(seeds)}: each seed may appear once")
    return [
        graft_run(base, (m, optimizers[m]), (d, optimizers[d]), seed=seed)
        for m in optimizers
        for d in optimizers
        for seed in seeds
    ]


def grid(
    store: RunStore,
    base: RunConfig,
    optimizers: Mapping[str, OptimizerChoice],
    seeds: Sequence[int] = (0,),
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> tuple[str, pd.DataFrame]:
    """Every M#D pair of ``optimizers`` (label → (name, hparams)) for each seed."""
    configs = grid_configs(base, optimizers, seeds)
    group = new_group("grid")
    run_all(store, configs, group=group, kind="grid", executor=executor, progress=progress)
    return group, grid_table(store, group)


def grid_table(store: RunStore, group: str) -> pd.DataFrame:
    """A grid's runs: magnitude, direction, seed, status and final metrics."""
    runs = store.runs(group=group).iloc[::-1]  # creation order: the optimizers' order
    table = final_metrics(store, runs["run_id"].tolist())
    arms = runs.set_index("run_id").loc[table["run_id"]]
    table["magnitude"] = arms["magnitude_arm"].to_numpy()
    plain = (arms["direction_arm"].fillna("") == "").to_numpy()  # A alone is the cell A#A
    table["direction"] = np.where(plain, table["magnitude"], arms["direction_arm"].to_numpy())
    table["seed"] = arms["config.seed"].to_numpy()
    return table


def grid_matrix(table: pd.DataFrame, metric: str = "val_loss") -> pd.DataFrame:
    """Mean of ``metric`` over seeds: magnitude rows × direction columns."""
    order = list(dict.fromkeys(table["magnitude"]))
    matrix = table.pivot_table(
        index="magnitude", columns="direction", values=metric, aggfunc="mean"
    )
    return matrix.reindex(index=order, columns=order)


def _mean_range(frame: pd.DataFrame) -> float:
    """Mean over rows of (max − min) among each row's finite values (rows with ≥ 2 of them)."""
    values = frame.to_numpy(dtype=float)
    spans = [np.ptp(row[np.isfinite(row)]) for row in values if np.isfinite(row).sum() >= 2]
    return float(np.mean(spans)) if spans else float("nan")


def grid_spreads(table: pd.DataFrame, metric: str = "val_loss") -> dict[str, float]:
    """How much ``metric`` varies within rows (same M), within columns (same D), across seeds.

    Each is the mean range (max − min) of the finished runs' values: ``rows`` over each M's
    row of the seed-averaged grid, ``columns`` over each D's column, ``seeds`` over each
    cell's seeds (NaN with one seed). Small ``rows`` next to large ``columns`` is the paper's
    reading: the magnitude optimizer decides the result, the direction hardly matters.
    """
    finished = table[table["status"] == "finished"]
    if finished.empty:
        nan = float("nan")
        return {"rows": nan, "columns": nan, "seeds": nan}
    matrix = grid_matrix(finished, metric)
    cells = finished.pivot_table(
        index=["magnitude", "direction"], columns="seed", values=metric, aggfunc="mean"
    )
    return {
        "rows": _mean_range(matrix),
        "columns": _mean_range(matrix.T),
        "seeds": _mean_range(cells),
    }


def grid_reading(table: pd.DataFrame, metric: str = "val_loss", *, what: str = "") -> str:
    """One sentence: do rows (same M) or columns (same D) look more alike on this grid?"""
    spread = grid_spreads(table, metric)
    what = what or metric
    rows, columns, seeds = spread["rows"], spread["columns"], spread["seeds"]
    if not (np.isfinite(rows) and np.isfinite(columns)):
        return (
            "Not enough finished runs yet to compare rows with columns (a row and a "
            "column each need two finished cells)."
        )
    numbers = (
        f"Within a row (same M, different D) {what} varies by {rows:.3g} on "
        f"average, within a column (same D, different M) by {columns:.3g}"
    )
    if rows * 1.5 <= columns:
        verdict = "Rows look alike: the magnitude optimizer decides, as the paper found"
    elif columns * 1.5 <= rows:
        verdict = (
            "Columns look alike: on this grid the direction optimizer decides, "
            "unlike the paper's finding"
        )
    else:
        verdict = "Neither rows nor columns look clearly more alike on this grid"
    if not np.isfinite(seeds):
        noise = "One seed: add seeds to see how much of this is noise."
    elif seeds >= 0.5 * max(rows, columns):
        noise = (
            f"But seeds alone move a cell by {seeds:.3g} on average, about as much: "
            "this reading is not reliable yet (add seeds or steps)."
        )
    else:
        noise = (
            f"Seeds alone move a cell by {seeds:.3g} on average, small next to "
            f"{max(rows, columns):.3g}."
        )
    return f"{verdict}. {numbers}. {noise}"


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


def static_ratio_configs(
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    sgd: OptimizerChoice,
    *,
    source_run: str,
    sgd_lrs: Sequence[float] = (),
) -> list[PlannedRun]:
    """SGD with the static ratios stored on ``source_run``, M alone, and plain SGD per lr.

    ``sgd`` is the plain optimizer (the grafted run's D, usually SGD) with the lr the ratios
    multiply; the run store must hold a ``static_ratios`` artifact on ``source_run``.
    """
    name, hp = sgd
    bad = [lr for lr in sgd_lrs if not (np.isfinite(lr) and lr > 0)]
    if bad:
        raise ValueError(f"Invalid sgd_lrs {bad}: each must be a finite number > 0")
    plain = {"direction": "", "direction_hparams": {}, "replay": "", "static_ratios": ""}
    ratios = base.replace(
        **{**plain, "static_ratios": f"run:{source_run}"},
        magnitude=name,
        magnitude_hparams=dict(hp),
        name=f"{name}+ratios({magnitude[0]})",
    )
    planned = [
        PlannedRun(ratios, Arm("static_ratios", name)),
        graft_run(base.replace(**plain), magnitude, None),
    ]
    return planned + [
        PlannedRun(
            base.replace(
                **plain,
                magnitude=name,
                magnitude_hparams={**hp, "lr": lr},
                name=f"{name}(lr={lr:g})",
            ),
            Arm("sweep_point", name),
        )
        for lr in sgd_lrs
    ]


def static_ratio_configs_from(
    store: RunStore, source_run: str, *, sgd_lrs: Sequence[float] = (), **changes
) -> list[PlannedRun]:
    """``static_ratio_configs`` for a stored M#D run: D (with the lr the multipliers were
    measured against, D's lr × Graft's lr) with its ratios, M alone, D per lr in ``sgd_lrs``;
    ``changes`` (steps, device, ...) apply to all of them."""
    config = RunConfig.from_dict(store.run(source_run)["config"])
    if not config.direction:
        raise ValueError(f"Run {source_run!r} is a plain run: static ratios need an M#D run")
    base = config.replace(name="", **changes)
    d_lr = OptimizerSpec(config.direction, config.direction_hparams).resolved["lr"]
    magnitude = (config.magnitude, (config.magnitude, config.magnitude_hparams))
    direction = (config.direction, {**config.direction_hparams, "lr": d_lr * config.graft_lr})
    return static_ratio_configs(base, magnitude, direction, source_run=source_run, sgd_lrs=sgd_lrs)


def static_ratio_experiment(
    store: RunStore,
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    *,
    sgd: OptimizerChoice = ("sgd", {"lr": 0.1, "momentum": 0.9}),
    window: tuple[int, int] = (50, 200),
    statistic: str = "median",
    sgd_lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> tuple[str, pd.DataFrame]:
    """M#SGD for the window, per-layer multipliers, then SGD+ratios vs M vs swept plain SGD."""
    if not 0 <= window[0] < window[1] <= base.steps:
        raise ValueError(f"Invalid window {window}: need 0 <= start < stop <= steps ({base.steps})")
    group = new_group("ratios")
    total = 3 + len(sgd_lrs)
    report = (lambda done, _: progress(done, total)) if progress else None
    short = graft_run(base, magnitude, ("sgd", sgd), steps=window[1])
    (graft_id,) = run_all(store, [short], group=group, kind="ratios", progress=report)
    ratios = static_ratios_from_run(store, graft_id, window=window, statistic=statistic)
    store.put_artifact(graft_id, "static_ratios", ratios.to_dict(), kind="static_ratios")
    configs = static_ratio_configs(base, magnitude, sgd, source_run=graft_id, sgd_lrs=sgd_lrs)
    report = (lambda done, _: progress(1 + done, total)) if progress else None
    ids = run_all(store, configs, group=group, kind="ratios", executor=executor, progress=report)
    table = final_metrics(store, [graft_id, *ids])
    sweep = table[table["role"] == "sweep_point"]
    table["best_sgd"] = (
        table["run_id"] == sweep.loc[sweep["val_loss"].idxmin(), "run_id"]
        if sweep["val_loss"].notna().any()
        else False
    )
    return group, table
