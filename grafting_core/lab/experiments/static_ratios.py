"""The static-ratio experiment: a short M#D window gives per-layer multipliers; plain D with
them trains next to M and the best plain D of a small lr sweep."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.analysis import static_ratios_from_run
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
from grafting_core.lab.store.run_store import RunStore
from grafting_core.registry import OptimizerSpec


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
