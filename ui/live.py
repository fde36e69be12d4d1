"""Live view of a group of runs: cheap polls of the store and the panels that draw them.

Workers write to the store; a ``@st.fragment(run_every=1)`` on the page calls these to
redraw. Layer norms are read incrementally (``since_step``) into a per-session cache, so a
poll reads only what was written since the last one.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from grafting_core.lab import figures

from .resources import get_store

TERMINAL = ("finished", "stopped", "diverged", "failed", "interrupted")
NORM_FIELDS_SHOWN = ["magnitude_norm", "direction_norm"]
CHART_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
LOSS_UNITS = {
    "classification": "cross-entropy, nats",
    "language": "cross-entropy per character, nats",
    "regression": "mean squared error",
}


def loss_title(task: str, which: str = "training") -> str:
    """Axis title of a loss with its units, e.g. ``training loss (cross-entropy, nats)``."""
    units = LOSS_UNITS.get(task)
    return f"{which} loss ({units})" if units else f"{which} loss"


def group_runs(group: str) -> pd.DataFrame:
    """The group's runs in creation order, with a display ``label`` and a ``progress`` 0..1."""
    store = get_store()
    store.mark_interrupted()  # a worker that died (killed, out of memory) leaves "running"
    runs = store.runs(group=group).iloc[::-1].reset_index(drop=True)
    names = runs["name"].fillna(runs["run_id"]).astype(str)
    counts = names.groupby(names).cumcount()
    runs["label"] = [n if c == 0 else f"{n} ({c + 1})" for n, c in zip(names, counts)]
    done = runs["last_step"].astype("Float64").fillna(0.0).to_numpy(dtype=float)
    runs["progress"] = (done / runs["config.steps"].astype(float)).clip(0.0, 1.0)
    return runs


def is_active(runs: pd.DataFrame) -> bool:
    """Whether any run of the group is queued or training."""
    return bool((~runs["status"].isin(TERMINAL)).any())


def status_text(run: pd.Series) -> str:
    """``running 120/500``, ``queued``, ``diverged at step 37``, ``failed: <error>`` ..."""
    status, steps = run["status"], int(run["config.steps"])
    step = None if pd.isna(run["last_step"]) else int(run["last_step"])
    if status == "running":
        return "queued (waiting for a free worker)" if step is None else f"running {step}/{steps}"
    if status == "diverged":
        return f"diverged at step {step} (loss or weights became NaN/inf)"
    if status in ("failed", "interrupted"):
        return f"{status}: {run['error']}"
    return f"{status} at step {step}/{steps}"


def progress_panel(runs: pd.DataFrame) -> None:
    """One progress bar per run; diverged and failed runs say so in colour."""
    for _, run in runs.iterrows():
        text = f"**{run['label']}**: {status_text(run)}"
        if run["status"] == "diverged":
            st.warning(text, icon="⚠️")
        elif run["status"] in ("failed", "interrupted"):
            st.error(text, icon="🛑")
        else:
            st.progress(float(run["progress"]), text=text)


def poll_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """All metrics of the group (a few thousand rows: read whole each poll)."""
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "step", "name", "value"])
    return get_store().metrics(runs["run_id"].tolist())


def poll_norms(run_ids: list[str], cache_key: str) -> pd.DataFrame:
    """‖Δ_M‖ and ‖Δ_D‖ of ``run_ids`` (run_id column added), read since the last poll.

    ``cache_key``: a session key holding a dict (declared in the page's defaults).
    """
    store = get_store()
    cache: dict[str, pd.DataFrame] = st.session_state[cache_key]
    frames = []
    for run_id in run_ids:
        seen = cache.get(run_id)
        last = int(seen["step"].max()) if seen is not None and not seen.empty else None
        new = store.layer_norms(run_id, fields=NORM_FIELDS_SHOWN, since_step=last)
        if seen is None or (not new.empty and seen.empty):
            seen = new
        elif not new.empty:
            seen = pd.concat([seen, new], ignore_index=True)
        cache[run_id] = seen
        frames.append(seen.assign(run_id=run_id))
    if not frames:
        return pd.DataFrame(columns=["run_id", "step", "layer", "field", "value"])
    return pd.concat(frames, ignore_index=True)


def drop_cache(keep: list[str], cache_key: str) -> None:
    """Forget cached norms of runs no longer shown."""
    cache = st.session_state[cache_key]
    for run_id in [r for r in cache if r not in keep]:
        del cache[run_id]


def loss_panel(runs: pd.DataFrame, metrics: pd.DataFrame, task: str, *, prefix: str,
               smoothing: float) -> None:
    """Training loss (left) and validation accuracy or loss (right), one line per run."""
    labels = dict(zip(runs["run_id"], runs["label"]))
    colors = figures.run_colors(runs["run_id"].tolist())
    left, right = st.columns(2)
    with left:
        if metrics.empty or not (metrics["name"] == "train_loss").any():
            fig = figures.empty_figure("waiting for the first steps…", y_title=loss_title(task))
        else:
            fig = figures.metric_curves(metrics, metric="train_loss", labels=labels,
                                        colors=colors, smoothing=smoothing,
                                        title="Training loss (per step)",
                                        y_title=loss_title(task))
        st.plotly_chart(fig, key=f"{prefix}.loss_chart", config=CHART_CONFIG)
    with right:
        metric = "val_accuracy" if task != "regression" else "val_loss"
        y_title = ("validation accuracy (fraction correct)" if metric == "val_accuracy"
                   else loss_title(task, "validation"))
        if metrics.empty or not (metrics["name"] == metric).any():
            fig = figures.empty_figure("waiting for the first evaluation…", y_title=y_title)
        else:
            fig = figures.metric_curves(metrics, metric=metric, labels=labels, colors=colors,
                                        title="Validation (held-out data)", y_title=y_title)
        st.plotly_chart(fig, key=f"{prefix}.val_chart", config=CHART_CONFIG)
