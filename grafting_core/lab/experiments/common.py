"""What every experiment shares: arms of M#D runs, recording a group's runs once, training
them on an executor (or inline), and reading their final metrics."""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed

import pandas as pd

from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.batched import MAX_MEMBERS, batch_key
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import Executor, submit_runs
from grafting_core.lab.runs.groups import record_runs
from grafting_core.lab.runs.runner import execute_batch, execute_run, pause_run
from grafting_core.lab.store.run_store import RunStore

Progress = Callable[[int, int], None]  # (runs done, runs total)
LR_COLUMN = "config.magnitude_hparams.lr"  # a run's lr (M's) in ``RunStore.runs``


def round_lr(lr: float) -> float:
    """An lr of a sweep, to 3 significant digits (as shown, and as stored)."""
    return float(f"{lr:.3g}")


#: How far apart (natural log) two lrs may be and still be the same point of a sweep: each
#: was rounded to 3 significant digits (at most 0.5% off), so 1% covers both.
SAME_POINT = 0.011


def _digits(lr: float) -> int:
    """Significant digits of ``lr`` as stored (0.1: 1, 0.0316: 3)."""
    return len(f"{lr:.2e}".split("e")[0].replace(".", "").rstrip("0")) or 1


def beyond_edge(best: float, tried: Sequence[float], factor: float) -> float:
    """The next lr past the edge of ``tried`` that ``best`` sits on, ``factor`` away.

    Computed in log space from an exact point of the sweep (``anchor`` × ``factor``^k, k an
    integer), not from ``best``, which is already rounded: so the grid around 0.1 with factor
    √10 extends to 0.01 and then 0.00316, where a wider grid around 0.1 would have put them
    (not 0.0316 / 3.162 = 0.00999). The anchor is the point from which the others are
    reproduced exactly (the centre the grid was made around; an even grid's centre, half a
    step from its points, is looked for too), then the one with the fewest significant
    digits. Rounded to 3 significant digits, as the grid is; lrs of ``tried`` that are not on
    ``best``'s lattice (typed ones) are ignored."""
    step = -1 if best == min(tried) else 1
    log_factor = math.log(factor)
    points = {best: 0.0}  # lr -> k: best ≈ lr × factor^k
    for lr in tried:
        exponent = math.log(best / lr) / log_factor
        if abs(exponent - round(exponent)) * log_factor < SAME_POINT:
            points[lr] = float(round(exponent))
    # their mean in log space (rounding errors partly cancel) stands in for an exact point;
    # half a step from it lies the centre of an even grid, which is not a point of it
    log_best = sum(math.log(lr) + k * log_factor for lr, k in points.items()) / len(points)
    anchors = dict(points)
    for half in range(-2 * len(points) - 1, 2 * len(points) + 2, 2):
        centre = math.exp(log_best - half / 2 * log_factor)
        for short in (float(f"{centre:.1g}"), float(f"{centre:.2g}")):  # 0.1, 0.05, 0.15
            if abs(math.log(short / centre)) < SAME_POINT:
                anchors.setdefault(short, half / 2)

    def merit(anchor: float) -> tuple[int, int, float]:
        k = anchors[anchor]
        reproduced = sum(round_lr(anchor * factor ** (k - j)) == lr for lr, j in points.items())
        return reproduced, -_digits(anchor), -abs(k)

    anchor = max(anchors, key=merit)
    return round_lr(anchor * factor ** (anchors[anchor] + step))


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


#: Whether ``run_all`` trains compatible plain and grafted runs as batches by default (the
#: environment variable ``GRAFTING_BATCH=0`` turns it off, to measure or to rule batching out).
BATCH = os.environ.get("GRAFTING_BATCH", "1") != "0"
#: the fewest members worth a batch of their own when the runs are shared out to workers
#: (a batch of 1 or 2 is slower than ``Trainer``, BENCHMARKS.md)
MIN_MEMBERS = 3


def plan_batches(
    store: RunStore, todo: Sequence[tuple[str, bool]], workers: int = 1
) -> tuple[list[tuple[list[str], bool]], list[tuple[str, bool]]]:
    """``todo`` (run id, resume) split into batches of runs that can train as one model
    (same task and loop settings, same resume point; at most ``MAX_MEMBERS``, and, where
    there are enough, at least one batch per worker) and the runs that train alone."""
    groups: dict[tuple, list[str]] = {}
    alone: list[tuple[str, bool]] = []
    for run_id, resume in todo:
        record = store.run(run_id)
        key = batch_key(RunConfig.from_dict(record["config"]))
        if key is None:
            alone.append((run_id, resume))
            continue
        start = (record["last_step"] or 0) if resume else 0
        groups.setdefault((key, resume, start), []).append(run_id)
    batches = []
    for (_, resume, _), ids in groups.items():
        count = max(math.ceil(len(ids) / MAX_MEMBERS), min(workers, len(ids) // MIN_MEMBERS), 1)
        size, extra = divmod(len(ids), count)
        at = 0
        for k in range(count):
            chunk = ids[at : at + size + (k < extra)]
            at += len(chunk)
            if len(chunk) > 1:
                batches.append((chunk, resume))
            else:
                alone += [(r, resume) for r in chunk]
    batches.sort(key=lambda b: -len(b[0]))  # the longest first
    order = {run_id: i for i, (run_id, _) in enumerate(todo)}
    return batches, sorted(alone, key=lambda run: order[run[0]])  # as planned


def run_all(
    store: RunStore,
    planned: Sequence[PlannedRun],
    *,
    group: str,
    kind: str,
    executor: Executor | None = None,
    progress: Progress | None = None,
    reuse: bool = False,
    pause_at: int = 0,
    batch: bool | None = None,
) -> list[str]:
    """Create one run per planned run in ``group`` and train them all; returns the run ids.

    ``reuse``: as in :func:`record_runs`. An experiment run again on its group continues
    where it stopped, and more seeds train only their own runs. ``pause_at``: train each only
    to this step, stopped resumably there (a rung of successive halving); 0: to the end.
    ``batch`` (default ``BATCH``): plain runs and M#D grafts of one task train as batched
    models (``plan_batches``, ``runner.execute_batch``), each member writing what its own
    run would; the others, and every run where it is False, one by one.
    """
    run_ids, todo = record_runs(store, planned, group=group, kind=kind, reuse=reuse)
    if pause_at:  # a run paused at this rung already is not run again
        steps = store.runs(group=group, flatten_config=False).set_index("run_id")["last_step"]
        todo = [(r, resume) for r, resume in todo if not (resume and steps[r] == pause_at)]
    for run_id, _ in todo:
        pause_run(store, run_id, pause_at)
    done = len(run_ids) - len(todo)
    if progress:
        progress(done, len(run_ids))
    batch = BATCH if batch is None else batch
    workers = getattr(executor, "max_workers", 1) if executor is not None else 1
    batches, alone = plan_batches(store, todo, workers) if batch else ([], list(todo))
    if executor is None:
        for ids, resume in batches:
            try:
                execute_batch(store, ids, resume=resume)
            except Exception:
                pass  # recorded as failed in the store; the experiment carries on
            done += len(ids)
            if progress:
                progress(done, len(run_ids))
        for run_id, resume in alone:
            try:
                execute_run(store, run_id, resume=resume)
            except Exception:
                pass  # recorded as failed in the store; the experiment carries on
            done += 1
            if progress:
                progress(done, len(run_ids))
        return run_ids
    futures = {}
    for ids, resume in batches:
        submitted = submit_runs(executor, ids, resume=resume)
        futures.update({future: len(ids) // len(submitted) for future in submitted})
    for run_id, resume in alone:
        futures[executor.submit(run_id, resume=resume)] = 1
    for future in as_completed(futures):
        done += futures[future]
        if progress:
            progress(done, len(run_ids))
    return run_ids


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


def final_by_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    """An arm's final ``metric`` per seed from ``final_metrics`` rows with a ``seed`` column;
    NaN for a seed that diverged or failed (``verdict.judge`` counts it as diverged and leaves
    it out)."""
    values = rows[metric].where(rows["status"] == "finished")
    return pd.Series(values.to_numpy(float), index=rows["seed"].to_numpy(int))
