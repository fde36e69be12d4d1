"""Implicit schedules as tables: per-layer norm frames, layer kinds and schedule shapes.

An optimizer's per-layer step norm ‖Δ_l(t)‖ over training is the learning-rate schedule it
implies on layer l; ‖Δ_l‖/‖g_l‖ is the "effective learning rate" plain SGD would need to
take the same step. This module turns recordings into long frames (the run store's
``layer_norms`` layout: step, layer, field, value, optionally run_id), groups layers by
kind (embedding, attention, MLP, norm, head) and names the shape of each trajectory.

    frame = norm_log_frame(log)                       # a NormLog from your own loop
    shapes = schedule_shapes(store.layer_norms(run_id), field="step_norm")
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

#: the groups the implicit-schedule figures colour layers by (by role in the model: not the
#: library's grafting kinds, ``grafting_core.LAYER_KINDS``)
LAYER_GROUPS = ("embedding", "attention", "mlp", "norm", "head", "other")
DERIVED = {  # field name -> (numerator, denominator) of a quantity computed from two fields
    "ratio": ("magnitude_norm", "direction_norm"),  # ‖Δ_M‖/‖Δ_D‖
    "effective_lr": ("step_norm", "grad_norm"),  # ‖Δ‖/‖g‖
}
CHANGE = 1.5  # a trajectory "rises" or "falls" when it changes by at least this factor
EDGE = 0.05  # early and late values: medians over this fraction of the run at each end
SHAPES = ("warm-up, then decay", "rising", "decaying", "flat")

# Parameter-name patterns (on dotted components), checked in this order.
_KIND_PATTERNS = (
    ("embedding", re.compile(r"(^|\.)(\w*emb\w*|wte|wpe)(\.|$)")),
    ("norm", re.compile(r"(^|\.)(ln\w*|\w*norm\w*|bn\d*)(\.|$)")),
    ("attention", re.compile(r"(^|\.)(\w*attn\w*|\w*attention\w*|q|k|v|qkv)(\.|$)")),
    ("mlp", re.compile(r"(^|\.)(mlp|ffn|feed_forward|fc\d*)(\.|$)")),
    ("head", re.compile(r"(^|\.)(\w*head|classifier|out|output)(\.|$)")),
)


def layer_kind(name: str) -> str:
    """The kind of a parameter from its name: embedding, norm, attention, mlp, head, other.

    Works for the lab's transformer (``tok_emb.weight``, ``blocks.0.ln1.bias``,
    ``blocks.0.attn.qkv.weight``, ``blocks.0.mlp.fc.weight``, ``head.weight``) and for
    nanoGPT / Hugging Face style names; anything unrecognised is "other".
    """
    lowered = name.lower()
    for kind, pattern in _KIND_PATTERNS:
        if pattern.search(lowered):
            return kind
    return "other"


def norm_log_frame(log) -> pd.DataFrame:
    """Everything a ``NormLog`` holds, as the long frame step, layer, field, value.

    The same layout as ``RunStore.layer_norms`` (layer and field categorical, in the log's
    order), so every figure of ``grafting_core.lab.figures`` draws it.
    """
    steps, values = log.read()
    layers, fields = list(log.layer_names), list(log.fields)
    cube = values.double().numpy().reshape(len(steps), len(layers), len(fields))
    n, nl, nf = cube.shape
    return pd.DataFrame(
        {
            "step": np.repeat(np.asarray(steps, dtype="int64"), nl * nf),
            "layer": pd.Categorical.from_codes(np.tile(np.repeat(np.arange(nl), nf), n), layers),
            "field": pd.Categorical.from_codes(np.tile(np.arange(nf), n * nl), fields),
            "value": cube.reshape(-1),
        }
    )


def layer_series(norms: pd.DataFrame, field: str) -> pd.DataFrame:
    """Long frame [run_id,] step, layer, kind, value of one recorded or derived field.

    ``field``: a recorded field (``step_norm``, ``magnitude_norm`` ...) or one of
    ``DERIVED`` (``ratio``, ``effective_lr``); non-finite or non-positive ratios are NaN.
    """
    keys = [c for c in ("run_id", "step", "layer") if c in norms]
    needed = DERIVED.get(field, (field,))
    known = set(norms["field"].astype(str))
    if missing := [f for f in needed if f not in known]:
        raise ValueError(f"Field {field!r} needs {list(needed)}; the frame has no {missing}")
    picked = norms[norms["field"].astype(str).isin(needed)]
    wide = picked.pivot_table(
        index=keys, columns="field", values="value", observed=True, sort=True
    ).reset_index()
    wide.columns = [str(c) for c in wide.columns]
    if field in DERIVED:
        top, bottom = DERIVED[field]
        with np.errstate(divide="ignore", invalid="ignore"):
            value = wide[top] / wide[bottom]
        wide["value"] = value.where(np.isfinite(value) & (value > 0))
    else:
        wide["value"] = wide[field]
    wide["layer"] = wide["layer"].astype(str)
    wide["kind"] = wide["layer"].map(layer_kind)
    return wide[[*keys, "kind", "value"]]


def _shape(rise: float, fall: float, change: float) -> str:
    if rise >= CHANGE and fall <= 1 / CHANGE:
        return "warm-up, then decay"
    if rise >= CHANGE:
        return "rising"
    if change <= 1 / CHANGE:
        return "decaying"
    return "flat"


def schedule_shapes(norms: pd.DataFrame, *, field: str = "step_norm") -> pd.DataFrame:
    """One row per [run and] layer: how its ``field`` trajectory moves over the run.

    The series is smoothed with a running median over ~5% of the run; ``early`` and
    ``late`` are medians of the smoothed values over the first and last ``EDGE`` of it,
    ``peak`` its maximum at ``peak_at`` (0 = start, 1 = end). ``shape``: "warm-up, then
    decay" (rises by ``CHANGE``× to its peak, then falls by as much), "rising", "decaying"
    (ends ``CHANGE``× below its start) or "flat".
    """
    series = layer_series(norms, field)
    series = series[series["value"] > 0]  # norms: a zero step has no place on a log scale
    keys = [c for c in ("run_id", "layer") if c in series]
    rows = []
    for key, group in series.groupby(keys, sort=False, observed=True):
        values = group.sort_values("step")["value"].to_numpy(dtype=float)
        steps = group.sort_values("step")["step"].to_numpy()
        if len(values) < 2:
            continue
        k = max(1, int(round(EDGE * len(values))))
        smooth = (
            pd.Series(values)
            .rolling(max(3, len(values) // 20), center=True, min_periods=1)
            .median()
            .to_numpy()
        )
        early, late = float(np.median(smooth[:k])), float(np.median(smooth[-k:]))
        top = int(np.argmax(smooth))
        peak = float(smooth[top])
        span = max(int(steps[-1] - steps[0]), 1)
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(
            kind=group["kind"].iloc[0],
            early=early,
            peak=peak,
            peak_at=float(steps[top] - steps[0]) / span,
            late=late,
            rise=peak / early,
            fall=late / peak,
            change=late / early,
        )
        row["shape"] = _shape(row["rise"], row["fall"], row["change"])
        rows.append(row)
    columns = [*keys, "kind", "early", "peak", "peak_at", "late", "rise", "fall", "change", "shape"]
    return pd.DataFrame(rows, columns=columns)
