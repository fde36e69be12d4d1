"""From stored runs to the core's objects: norm cubes, implicit schedules, static ratios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .. import NORM_FIELDS, MagnitudeSchedule, OptimizerSpec, StaticRatios, estimate_static_ratios
from .store import RunStore
from .trainer import lr_factor


def norm_cube(store: RunStore, run_id: str) -> tuple[list[int], list[str], np.ndarray]:
    """``(steps, layers, values)`` with values ``(steps, layers, NORM_FIELDS)`` in float64."""
    frame = store.layer_norms(run_id)
    if frame.empty:
        raise ValueError(f"Run {run_id!r} has no recorded layer norms yet")
    layers = list(dict.fromkeys(frame["layer"]))
    steps = sorted(frame["step"].unique().tolist())
    wide = frame.pivot_table(index=["step", "layer"], columns="field", values="value", dropna=False)
    wide = wide.reindex(pd.MultiIndex.from_product([steps, layers], names=["step", "layer"]))
    wide = wide.reindex(columns=list(NORM_FIELDS))
    return steps, layers, wide.to_numpy().reshape(len(steps), len(layers), len(NORM_FIELDS))


def schedule_from_run(store: RunStore, run_id: str) -> MagnitudeSchedule:
    """The run's recorded ‖Δ_M‖ per layer and step, as a replayable schedule."""
    steps, layers, values = norm_cube(store, run_id)
    run = store.run(run_id)
    return MagnitudeSchedule.from_records(
        layers,
        steps,
        torch.from_numpy(values.copy()).float(),
        NORM_FIELDS,
        source={
            "run_id": run_id,
            "label": run["name"],
            "dataset": run["config"]["dataset"],
            "custom": run["config"].get("custom", ""),
        },
        shapes=store.get_artifact(run_id, "layers")["shapes"],
    )


def static_ratios_from_run(
    store: RunStore,
    run_id: str,
    *,
    window: tuple[int, int] | None = None,
    statistic: str = "median",
    trim: float = 0.1,
    per_layer: bool = True,
) -> StaticRatios:
    """Per-parameter multipliers from a stored M#D run (base_lr = D's lr × Graft's lr).

    The run's own schedule of M's lr is divided out of each step's ratio, so that a plain run
    with per-layer lr ``base_lr · c`` and the same schedule takes M's per-layer step sizes.
    ``per_layer=False``: one scalar for every parameter (the whole model's ratio).
    """
    config = store.run(run_id)["config"]
    if not config.get("direction"):
        raise ValueError(
            f"Run {run_id!r} is a plain {config.get('magnitude')} run: static "
            "ratios need a grafted M#D run"
        )
    layout = store.get_artifact(run_id, "layers")
    steps, layers, values = norm_cube(store, run_id)
    order = [layers.index(name) for name in layout["layer_names"]]
    direction_lr = OptimizerSpec(config["direction"], config["direction_hparams"]).resolved["lr"]
    ratios = estimate_static_ratios(
        torch.from_numpy(values[:, order]),
        NORM_FIELDS,
        steps,
        layer_names=tuple(layout["layer_names"]),
        param_names=tuple(layout["param_names"]),
        param_layer=tuple(layout["param_layer"]),
        shapes=layout["shapes"],
        window=window,
        statistic=statistic,
        trim=trim,
        base_lr=direction_lr * config["graft_lr"],
        lr_factor=lambda step: lr_factor(
            step, config["steps"], config["schedule"], config["warmup_steps"]
        ),
        per_layer=per_layer,
    )
    ratios.info["source_run"] = run_id
    return ratios


def ratio_trajectories(store: RunStore, run_id: str) -> pd.DataFrame:
    """Long frame step, layer, ratio = ‖Δ_M‖/‖Δ_D‖ (NaN where undefined)."""
    frame = store.layer_norms(run_id, fields=["magnitude_norm", "direction_norm"])
    if frame.empty:  # nothing recorded yet
        return pd.DataFrame(
            {
                "step": pd.Series(dtype="int64"),
                "layer": pd.Series(dtype=str),
                "ratio": pd.Series(dtype=float),
            }
        )
    wide = frame.pivot_table(
        index=["step", "layer"], columns="field", values="value", sort=False
    ).reset_index()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = wide["magnitude_norm"] / wide["direction_norm"]
    wide["ratio"] = ratio.where(np.isfinite(ratio))
    return wide[["step", "layer", "ratio"]]
