"""Readings of a run's stored layer norms: the norm cube, the implicit schedule it replays,
the per-step ratio ‖Δ_M‖/‖Δ_D‖."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from grafting_core import (
    NORM_FIELDS,
    MagnitudeSchedule,
)
from grafting_core.lab.store.run_store import RunStore


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
