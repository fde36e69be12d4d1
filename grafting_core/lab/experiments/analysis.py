"""From a stored M#D run to static per-layer ratios (the core's ``estimate_static_ratios``)."""

from __future__ import annotations

import torch

from grafting_core import (
    NORM_FIELDS,
    OptimizerSpec,
    StaticRatios,
    estimate_static_ratios,
)
from grafting_core.lab.runs.trainer import lr_factor
from grafting_core.lab.store.norms import norm_cube
from grafting_core.lab.store.run_store import RunStore


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
