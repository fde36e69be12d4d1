"""Plotly figures of stored runs: plain functions from the engine's DataFrames to a Figure.

Shared by the app and the notebooks; no Streamlit here. Inputs are the store's long frames:
``store.metrics(ids)`` (run_id, step, name, value) and ``store.layer_norms(id)`` (step, layer,
field, value; add a ``run_id`` column to draw several runs). Series are thinned to at most
``max_points`` points for drawing; the store keeps every step.

    fig = metric_curves(store.metrics(ids), metric="train_loss", labels={id: "adam#sgd"})
    fig.show()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .schedules import LAYER_KINDS, layer_series

MAX_POINTS = 2000  # points drawn per series; the browser slows down well before 10^5
STEP_TITLE = "step (optimizer updates)"
NORM_TITLE = "‖Δ‖ (L2 norm, weight units)"
RATIO_TITLE = "‖Δ_M‖ / ‖Δ_D‖ (dimensionless)"
QUANTITIES = {  # heatmap quantity -> (colour bar title, hover name)
    "ratio": ("‖Δ_M‖/‖Δ_D‖<br>(log scale)", "‖Δ_M‖/‖Δ_D‖"),
    "magnitude_norm": ("‖Δ_M‖<br>(log scale)", "‖Δ_M‖"),
    "direction_norm": ("‖Δ_D‖<br>(log scale)", "‖Δ_D‖"),
    "step_norm": ("‖applied step‖<br>(log scale)", "‖applied step‖"),
    "grad_norm": ("‖g‖<br>(log scale)", "‖g‖"),
    "weight_norm": ("‖w‖<br>(log scale)", "‖w‖"),
}
METRIC_TITLES = {  # y-axis titles (with units) of the metrics the trainer records
    "train_loss": "training loss (per step)",
    "val_loss": "validation loss",
    "val_accuracy": "validation accuracy (fraction correct)",
    "lr": "M's learning rate (base lr × schedule)",
    "steps_per_second": "training speed (steps per second)",
}
PALETTE = qualitative.Plotly


def decimate(frame: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """At most ``max_points`` evenly spaced rows of one series, first and last kept."""
    if len(frame) <= max_points:
        return frame
    keep = np.unique(np.linspace(0, len(frame) - 1, max_points).round().astype(int))
    return frame.iloc[keep]


def _sample_steps(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """The rows of at most ``max_points`` evenly spaced steps of each run (as ``decimate``
    picks them from a run's steps), before a long frame is pivoted."""
    kept = []
    for _, steps in frame.groupby("run_id", observed=True, sort=False)["step"]:
        unique = np.unique(steps.to_numpy())
        kept.append(steps[steps.isin(decimate(pd.Series(unique), max_points))].index)
    return frame.loc[np.concatenate(kept)] if kept else frame


def smooth(values: pd.Series, weight: float) -> pd.Series:
    """Debiased exponential moving average (TensorBoard's smoothing); 0 leaves it as is."""
    if weight <= 0 or values.empty:
        return values
    return values.ewm(alpha=1.0 - weight, adjust=True, ignore_na=True).mean()


def run_colors(run_ids: Sequence[str]) -> dict[str, str]:
    """One colour per run, stable for a given order (use the same map on every chart)."""
    return {run_id: PALETTE[i % len(PALETTE)] for i, run_id in enumerate(run_ids)}


def empty_figure(message: str, *, x_title: str = STEP_TITLE, y_title: str = "") -> go.Figure:
    """Axes with a centred note, for a chart whose data has not arrived yet."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font={"size": 14, "color": "#666"})
    _layout(fig, x_title=x_title, y_title=y_title)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def _layout(fig: go.Figure, *, title: str = "", x_title: str = STEP_TITLE, y_title: str = "",
            log_y: bool = False, height: int = 380) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"}, height=height,
        margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 50},
        legend={"title": {"text": "run"}, "tracegroupgap": 4},
        hovermode="x unified", template="plotly_white", showlegend=True,
        uirevision="keep",  # live redraws keep the user's zoom and hidden traces
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    if log_y:
        fig.update_yaxes(type="log", tickformat=".2~g")
    return fig


def metric_curves(metrics: pd.DataFrame, *, metric: str = "train_loss",
                  labels: Mapping[str, str] | None = None,
                  colors: Mapping[str, str] | None = None, smoothing: float = 0.0,
                  title: str = "", y_title: str | None = None, log_y: bool = False,
                  max_points: int = MAX_POINTS) -> go.Figure:
    """One line per run of ``metric`` against step (``metrics``: run_id, step, name, value)."""
    rows = metrics[metrics["name"] == metric]
    run_ids = list(dict.fromkeys(labels or {})) or list(dict.fromkeys(rows["run_id"]))
    colors = colors or run_colors(run_ids)
    fig = go.Figure()
    for run_id in run_ids:
        series = rows[rows["run_id"] == run_id].sort_values("step")
        values = smooth(series["value"].reset_index(drop=True), smoothing)
        series = decimate(series.assign(value=values.to_numpy()), max_points)
        sparse = len(series) <= 30  # evaluation metrics: a few points, show them
        fig.add_trace(go.Scatter(
            x=series["step"], y=series["value"], name=(labels or {}).get(run_id, run_id),
            mode="lines+markers" if sparse else "lines",
            line={"color": colors.get(run_id), "width": 2}, showlegend=True))
    _layout(fig, title=title, y_title=y_title or METRIC_TITLES.get(metric, metric),
            log_y=log_y)
    values = rows["value"].to_numpy(dtype=float)
    if log_y:
        fig.update_yaxes(dtick=_log_dtick(values))
    elif view := _robust_range(values):
        fig.update_yaxes(range=view)  # a diverging run would flatten every other curve
    return fig


def _robust_range(values: np.ndarray) -> list[float] | None:
    """A y-range without the blow-up of a diverging run, or None when nothing blew up."""
    finite = values[np.isfinite(values)]
    if finite.size < 10:
        return None
    low, high = np.percentile(finite, [0, 98])
    if finite.max() <= high + 5 * max(high - low, 1e-12):
        return None
    pad = 0.05 * max(high - low, 1e-12)
    return [float(low - pad), float(high + pad)]


def _log_dtick(values: np.ndarray) -> str | int:
    """Log-axis tick spacing: 1-2-5 per decade over a few decades, fewer over many."""
    positive = values[np.isfinite(values) & (values > 0)]
    decades = np.log10(positive.max() / positive.min()) if positive.size else 0.0
    return "D2" if decades <= 3 else max(1, int(np.ceil(decades / 8)))


def with_ratio(norms: pd.DataFrame) -> pd.DataFrame:
    """Wide frame [run_id,] step, layer and one column per field, plus ratio = ‖Δ_M‖/‖Δ_D‖."""
    keys = [c for c in ("run_id", "step", "layer") if c in norms]
    try:  # the store's frames have one value per key and field: no aggregation needed
        wide = norms.pivot(index=keys, columns="field", values="value")
        wide = wide.sort_index().reset_index()
    except ValueError:  # repeated rows (e.g. frames concatenated by hand): their mean
        wide = norms.pivot_table(index=keys, columns="field", values="value", observed=True,
                                 sort=True).reset_index()
    wide.columns = [str(c) for c in wide.columns]
    if {"magnitude_norm", "direction_norm"} <= set(wide.columns):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = wide["magnitude_norm"] / wide["direction_norm"]
        wide["ratio"] = ratio.where(np.isfinite(ratio) & (ratio > 0))
    return wide


def norm_trajectories(norms: pd.DataFrame, *, layer: str,
                      labels: Mapping[str, str] | None = None,
                      colors: Mapping[str, str] | None = None,
                      plain: Sequence[str] = (), title: str = "",
                      max_points: int = MAX_POINTS) -> go.Figure:
    """‖Δ_M‖ (solid) and ‖Δ_D‖ (dotted) of one layer on top, their ratio below, per run.

    ``norms``: the store's layer_norms frame with a ``run_id`` column (one run without it).
    Runs in ``plain`` (no direction optimizer: Δ_D is Δ_M) get one line, their own ‖Δ‖.
    """
    frame = norms if "run_id" in norms else norms.assign(run_id="run")
    frame = frame[frame["layer"] == layer]
    run_ids = list(dict.fromkeys(labels or {})) or list(pd.unique(frame["run_id"]))
    wide = with_ratio(_sample_steps(frame, max_points))
    colors = colors or run_colors(run_ids)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.55, 0.45])
    for run_id in run_ids:
        series = wide[wide["run_id"] == run_id]
        if series.empty:
            continue
        name = (labels or {}).get(run_id, run_id)
        color = colors.get(run_id)
        lines = (("magnitude_norm", "solid", "‖Δ‖"),) if run_id in plain else (
            ("magnitude_norm", "solid", "‖Δ_M‖"), ("direction_norm", "dot", "‖Δ_D‖"))
        for field, dash, symbol in lines:
            if field in series:
                fig.add_trace(go.Scatter(
                    x=series["step"], y=series[field], name=f"{name} {symbol}", mode="lines",
                    legendgroup=run_id, line={"color": color, "dash": dash, "width": 2}),
                    row=1, col=1)
        if "ratio" in series and run_id not in plain:
            fig.add_trace(go.Scatter(
                x=series["step"], y=series["ratio"], name=f"{name} ratio", mode="lines",
                legendgroup=run_id, line={"color": color, "width": 1.5}), row=2, col=1)
    _layout(fig, title=title, height=520)
    fig.update_xaxes(title_text="", row=1, col=1)
    fig.update_xaxes(title_text=STEP_TITLE, row=2, col=1)
    norm_values = wide[[c for c in ("magnitude_norm", "direction_norm") if c in wide]]
    ratio_values = wide["ratio"] if "ratio" in wide else pd.Series(dtype=float)
    fig.update_yaxes(title_text=NORM_TITLE, type="log", tickformat=".2~g",
                     dtick=_log_dtick(norm_values.to_numpy(dtype=float).ravel()), row=1, col=1)
    fig.update_yaxes(title_text=RATIO_TITLE, type="log", tickformat=".2~g",
                     dtick=_log_dtick(ratio_values.to_numpy(dtype=float)), row=2, col=1)
    return fig


def norm_heatmap(norms: pd.DataFrame, *, quantity: str = "ratio", title: str = "",
                 max_steps: int = 400) -> go.Figure:
    """Layers × steps of one quantity (log10 colour scale) for one run.

    ``norms``: one run's layer_norms frame. Steps are averaged (in log space) into at most
    ``max_steps`` columns; hover shows the value itself.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"Invalid quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
    colorbar_title, hover_name = QUANTITIES[quantity]
    wide = with_ratio(norms)
    if quantity not in wide or wide.empty:
        return empty_figure(f"no {hover_name} recorded yet", y_title="layer (parameter tensor)")
    layers = [str(c) for c in norms["layer"].cat.categories] if hasattr(
        norms["layer"], "cat") else list(dict.fromkeys(norms["layer"]))
    present = set(wide["layer"].unique())
    logs = wide.pivot(index="layer", columns="step", values=quantity).reindex(
        [x for x in layers if x in present])
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(logs.where(logs > 0))
    steps = logs.columns.to_numpy()
    starts = np.linspace(0, len(steps), min(max_steps, len(steps)), endpoint=False).astype(int)
    values = logs.to_numpy(dtype="float64")
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), starts, axis=1)
    counts = np.add.reduceat(finite.astype("int64"), starts, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(counts > 0, sums / counts, np.nan)  # mean of log10 per bin of steps
    x = steps[starts].astype(int).tolist()
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=list(logs.index), colorscale="Viridis", customdata=10.0 ** z,
        colorbar={"title": {"text": colorbar_title, "side": "right"}, **_log_ticks(z)},
        hovertemplate=f"step %{{x}}<br>%{{y}}<br>{hover_name} = %{{customdata:.3g}}"
                      "<extra></extra>"))
    _layout(fig, title=title, y_title="layer (parameter tensor)",
            height=max(300, 60 + 28 * len(logs)))
    fig.update_layout(hovermode="closest", showlegend=False)
    fig.update_yaxes(autorange="reversed")
    return fig


def _log_ticks(z: np.ndarray) -> dict:
    """Colour-bar ticks at 1, 3, 10, 30 ... for a log10 scale, labelled with the values."""
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        return {}
    low, high = float(finite.min()), float(finite.max())
    decades = range(int(np.floor(low)), int(np.ceil(high)) + 1)
    ticks = [d + np.log10(m) for d in decades for m in (1, 3) if low <= d + np.log10(m) <= high]
    if len(ticks) < 2:  # a narrow range: label its ends
        ticks = sorted({low, high})
    return {"tickvals": ticks, "ticktext": [f"{10.0 ** t:.2g}" for t in ticks]}


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page of ``fig`` (plotly.js inlined: opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def grid_heatmap(matrix: pd.DataFrame, *, z_title: str, notes: pd.DataFrame | None = None,
                 title: str = "", lower_is_better: bool = True) -> go.Figure:
    """M (rows) × D (columns) of one final metric, the value written in each cell.

    ``matrix``: ``experiments.grid_matrix`` (NaN = no finished run yet); ``notes``: the same
    shape of short texts shown in cells without a value ("running", "diverged"). The
    diagonal A#A is plain A. Colours run from bad to good either way (``lower_is_better``).
    """
    z = matrix.to_numpy(dtype=float)
    rows, columns = [str(r) for r in matrix.index], [str(c) for c in matrix.columns]
    finite = z[np.isfinite(z)]
    middle = float(finite.min() + finite.max()) / 2 if finite.size else 0.0
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=rows, colorscale="Viridis", reversescale=lower_is_better,
        colorbar={"title": {"text": z_title, "side": "right"}}, xgap=2, ygap=2,
        hovertemplate="M = %{y}<br>D = %{x}<br>" + z_title.replace("<br>", " ")
                      + " = %{z:.4g}<extra></extra>"))
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            value = z[i, j]
            if np.isfinite(value):
                dark = (value > middle) == lower_is_better  # dark end of the colour scale
                text, color = f"{value:.3g}", "white" if dark else "black"
            else:
                note = notes.iat[i, j] if notes is not None else ""
                text, color = (note if isinstance(note, str) else ""), "#666"
            fig.add_annotation(x=column, y=row, text=text, showarrow=False,
                               font={"size": 13, "color": color})
    side = max(300, 90 + 70 * len(rows))
    _layout(fig, title=title, x_title="direction optimizer D (gives the step direction)",
            y_title="magnitude optimizer M<br>(gives the step size)", height=side)
    fig.update_layout(hovermode="closest", showlegend=False)
    fig.update_xaxes(side="bottom", type="category")
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def implicit_schedule(norms: pd.DataFrame, *, layers: Sequence[str] | None = None,
                      title: str = "", max_points: int = MAX_POINTS) -> go.Figure:
    """A run's implicit schedule per layer: step norm ‖Δ‖ (top), ‖Δ‖/‖g‖ (bottom).

    ``norms``: one run's layer_norms frame with ``step_norm`` and ``grad_norm``. The applied
    step ‖Δ‖ is what the optimizer moved each layer; ‖Δ‖/‖g‖ is the learning rate plain SGD
    would need to take the same step, the "effective learning rate".
    """
    wide = with_ratio(norms)
    if wide.empty or "step_norm" not in wide:
        return empty_figure("no step norms recorded yet", y_title=NORM_TITLE)
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = wide["step_norm"] / wide["grad_norm"]
    wide["effective_lr"] = effective.where(np.isfinite(effective) & (effective > 0))
    shown = list(layers) if layers is not None else list(dict.fromkeys(wide["layer"]))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for i, layer in enumerate(shown):
        series = decimate(wide[wide["layer"] == layer], max_points)
        color = PALETTE[i % len(PALETTE)]
        for row, field in ((1, "step_norm"), (2, "effective_lr")):
            fig.add_trace(go.Scatter(
                x=series["step"], y=series[field], name=str(layer), mode="lines",
                legendgroup=str(layer), showlegend=row == 1,
                line={"color": color, "width": 1.5}), row=row, col=1)
    _layout(fig, title=title, height=560)
    fig.update_layout(legend={"title": {"text": "layer"}})
    fig.update_xaxes(title_text="", row=1, col=1)
    fig.update_xaxes(title_text=STEP_TITLE, row=2, col=1)
    picked = wide[wide["layer"].isin(shown)]
    fig.update_yaxes(title_text="step size ‖Δ‖<br>(L2 norm, weight units)", type="log",
                     tickformat=".2~g", dtick=_log_dtick(picked["step_norm"].to_numpy(float)),
                     row=1, col=1)
    fig.update_yaxes(title_text="effective lr ‖Δ‖/‖g‖<br>(weight units per gradient unit)",
                     type="log", tickformat=".2~g",
                     dtick=_log_dtick(picked["effective_lr"].to_numpy(float)), row=2, col=1)
    return fig


def ratio_lines(ratios: pd.DataFrame, *, window: tuple[int, int] | None = None,
                values: Mapping[str, float] | None = None, title: str = "",
                max_points: int = MAX_POINTS) -> go.Figure:
    """‖Δ_M‖/‖Δ_D‖ per layer against step, the estimation window shaded.

    ``ratios``: step, layer, ratio (``analysis.ratio_trajectories``); ``window``: [start,
    stop) steps; ``values``: layer → its static multiplier, drawn dashed across the window.
    """
    if ratios.empty or not ratios["ratio"].notna().any():
        return empty_figure("no ‖Δ_M‖/‖Δ_D‖ recorded yet", y_title=RATIO_TITLE)
    fig = go.Figure()
    layers = list(dict.fromkeys(ratios["layer"]))
    for i, layer in enumerate(layers):
        series = decimate(ratios[ratios["layer"] == layer], max_points)
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=series["step"], y=series["ratio"], name=str(layer),
                                 mode="lines", legendgroup=str(layer),
                                 line={"color": color, "width": 1.5}))
        if window is not None and values and layer in values:
            fig.add_trace(go.Scatter(
                x=[window[0], window[1] - 1], y=[values[layer]] * 2, mode="lines",
                name=f"{layer}: static value", legendgroup=str(layer), showlegend=False,
                hovertemplate=f"{layer}: static multiplier %{{y:.3g}}<extra></extra>",
                line={"color": color, "width": 3, "dash": "dash"}))
    if window is not None:
        fig.add_vrect(x0=window[0], x1=window[1] - 1, fillcolor="#888", opacity=0.15,
                      line_width=0, annotation_text="estimation window",
                      annotation_position="top left")
    _layout(fig, title=title, y_title=RATIO_TITLE, log_y=True, height=460)
    fig.update_layout(legend={"title": {"text": "layer (dashed: its static value)"}})
    fig.update_yaxes(dtick=_log_dtick(ratios["ratio"].to_numpy(dtype=float)))
    return fig


def _bytes_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "bytes"


def memory_bars(state_bytes: Mapping[str, float], *, weight_bytes: float | None = None,
                colors: Mapping[str, str] | None = None, title: str = "") -> go.Figure:
    """Optimizer-state memory per run (one bar each), labelled in copies of the weights
    (``2×``: twice the weights' bytes) when ``weight_bytes`` is given.

    ``state_bytes``: label → bytes (``optimizer_state_bytes``; NaN = not recorded yet).
    """
    known = {k: float(v) for k, v in state_bytes.items() if np.isfinite(v)}
    if not known:
        return empty_figure("memory is recorded when a run ends", x_title="run",
                            y_title="optimizer state")
    scale, unit = _bytes_unit(max(known.values()))
    fig = go.Figure()
    for i, (label, size) in enumerate(known.items()):  # bar text: copies of the weights
        text = f"{size / weight_bytes:.2g}×" if weight_bytes else f"{size / scale:.3g}"
        copies = f" = {text} the weights" if weight_bytes else ""
        fig.add_trace(go.Bar(
            x=[label], y=[size / scale], name=label, text=[text],
            textposition="outside", textangle=0, cliponaxis=False, textfont={"size": 13},
            marker_color=(colors or {}).get(label, PALETTE[i % len(PALETTE)]),
            hovertemplate=f"{label}: %{{y:.4g}} {unit}{copies}<extra></extra>"))
    _layout(fig, title=title, x_title="run", y_title=f"optimizer state ({unit})")
    top = max(known.values()) / scale
    fig.update_layout(hovermode="closest", bargap=0.3, margin={"t": 70})
    fig.update_yaxes(range=[0, top * 1.35])  # room for the labels above the bars
    if weight_bytes:
        fig.add_hline(y=weight_bytes / scale, line_dash="dot", line_color="#555")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="one copy of the "
                                 "weights<br>(float32); bar labels<br>count copies",
                                 line={"dash": "dot", "color": "#555"}))  # its legend entry
    return fig


def layer_kind_curves(norms: pd.DataFrame, *, field: str = "step_norm",
                      labels: Mapping[str, str] | None = None,
                      colors: Mapping[str, str] | None = None, normalize: bool = True,
                      smoothing: float = 0.9, title: str = "",
                      max_points: int = MAX_POINTS) -> go.Figure:
    """One panel per layer kind (embedding, attention, mlp, norm, head ...), one line per run:
    the median over that kind's layers of ``field`` against step, log scale.

    ``norms``: layer_norms frames of several runs with a ``run_id`` column; ``field`` a
    recorded field or a derived one (``effective_lr`` = ‖Δ‖/‖g‖, ``ratio``), see
    :func:`grafting_core.lab.schedules.layer_series`. With ``normalize`` each curve is
    divided by its own maximum (after smoothing), so optimizers whose steps differ by
    orders of magnitude compare by *shape*: warm-up, decay or flat.
    """
    frame = norms if "run_id" in norms else norms.assign(run_id="run")
    series = layer_series(frame, field)
    series = series[series["value"] > 0]
    if series.empty:
        return empty_figure(f"no {field} recorded yet")
    kinds = [k for k in LAYER_KINDS if k in set(series["kind"])]
    run_ids = list(dict.fromkeys(labels or {})) or list(dict.fromkeys(series["run_id"]))
    colors = colors or run_colors(run_ids)
    median = series.groupby(["run_id", "kind", "step"], observed=True)["value"].median()
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, horizontal_spacing=0.02,
                        subplot_titles=kinds)
    for col, kind in enumerate(kinds, start=1):
        for run_id in run_ids:
            try:
                curve = median.loc[(run_id, kind)]
            except KeyError:
                continue
            values = smooth(pd.Series(np.log10(curve.to_numpy())), smoothing)
            values = 10.0 ** values.to_numpy()
            if normalize:
                values = values / np.nanmax(values)
            points = decimate(pd.DataFrame({"step": curve.index, "value": values}), max_points)
            fig.add_trace(go.Scatter(
                x=points["step"], y=points["value"], mode="lines", legendgroup=run_id,
                name=(labels or {}).get(run_id, run_id), showlegend=col == 1,
                line={"color": colors.get(run_id), "width": 2}), row=1, col=col)
    what = {"effective_lr": "effective lr ‖Δ‖/‖g‖", "ratio": "‖Δ_M‖/‖Δ_D‖",
            "step_norm": "step norm ‖Δ‖", "magnitude_norm": "‖Δ_M‖",
            "direction_norm": "‖Δ_D‖", "grad_norm": "‖g‖", "weight_norm": "‖w‖"}.get(field, field)
    y_title = f"{what}<br>(÷ its own maximum)" if normalize else what
    _layout(fig, title=title, y_title="", log_y=True, height=380)
    drawn = np.concatenate([np.asarray(t.y, dtype=float) for t in fig.data]) if fig.data \
        else np.empty(0)
    fig.update_yaxes(dtick=_log_dtick(drawn))
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_xaxes(title_text="step", nticks=4)
    return fig
