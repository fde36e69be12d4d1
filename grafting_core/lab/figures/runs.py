"""Plotly figures of stored runs: plain functions from the engine's DataFrames to a Figure.

Loss curves, per-layer norm trajectories and heatmaps (what the live pages draw), and the
lab's shared style (``style``, titles, palette, thinning, steady axis ranges); the
experiments' figures are in ``experiment_figures``. Shared by the app and the notebooks; no
Streamlit here. Inputs are the store's long frames: ``store.metrics(ids)`` (run_id, step,
name, value) and ``store.layer_norms(id)`` (step, layer, field, value; add a ``run_id``
column to draw several runs). Series are thinned to at most ``max_points`` points for
drawing; the store keeps every step.

    fig = metric_curves(store.metrics(ids), metric="train_loss", labels={id: "adam#sgd"})
    fig.show()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

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
#: Okabe & Ito's colour-blind-safe colours (Color Universal Design), dark enough for a
#: projector on white. The palette orders them so that the first four runs of a page (M, D,
#: M#D, D#M on the Graft lab) differ in hue and lightness for every kind of colour vision;
#: yellow, the one hard to see on white, is left out.
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "purple": "#CC79A7",
    "vermillion": "#D55E00",
    "sky": "#56B4E9",
    "black": "#000000",
}
PALETTE = list(OKABE_ITO.values())
#: plotly_white's look, the parts these charts use. Named templates are copied and validated
#: property by property into every figure (about 7 ms each, at every live redraw); this is not.
LOOK = {
    "layout": {
        "colorway": PALETTE,
        "font": {"color": "#2a3f5f"},
        "hoverlabel": {"align": "left"},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        **{
            axis: {
                "gridcolor": "#EBF0F8",
                "linecolor": "#EBF0F8",
                "zerolinecolor": "#EBF0F8",
                "zerolinewidth": 2,
                "ticks": "",
                "automargin": True,
                "title": {"standoff": 15},
                "exponentformat": "power",  # log axes read 10⁻⁴, not "100μ"
            }
            for axis in ("xaxis", "yaxis")
        },
    },
    "data": {"heatmap": [{"colorbar": {"outlinewidth": 0, "ticks": ""}}]},
}


def _evenly_spaced(count: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spaced positions of ``count``, first and last kept."""
    return np.unique(np.linspace(0, count - 1, min(count, max_points)).round().astype(int))


def decimate(frame: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """At most ``max_points`` evenly spaced rows of one series, first and last kept."""
    if len(frame) <= max_points:
        return frame
    return frame.iloc[_evenly_spaced(len(frame), max_points)]


def _seen_steps(step: np.ndarray) -> np.ndarray:
    """A mask over 0..max(step): which steps occur (steps are small non-negative integers,
    so this replaces a sort: a live chart does it every second)."""
    seen = np.zeros(int(step.max()) + 1 if step.size else 0, dtype=bool)
    seen[step] = True
    return seen


def _sample_steps(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """The rows of at most ``max_points`` evenly spaced steps of each run (as ``decimate``
    picks them from a run's steps), before a long frame is pivoted."""
    step = frame["step"].to_numpy(dtype=np.int64)
    runs, names = pd.factorize(frame["run_id"])
    keep = np.zeros(len(frame), dtype=bool)
    for code in range(len(names)):
        rows = np.flatnonzero(runs == code)
        seen = _seen_steps(step[rows])
        distinct = np.flatnonzero(seen)
        chosen = np.zeros_like(seen)
        chosen[distinct[_evenly_spaced(len(distinct), max_points)]] = True
        keep[rows[chosen[step[rows]]]] = True
    return frame[keep]


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
    look = layout(x_title=x_title, y_title=y_title)
    for axis in ("xaxis", "yaxis"):
        look[axis].update(showticklabels=False, showgrid=False, zeroline=False)
    look["annotations"] = [
        {
            "text": message,
            "showarrow": False,
            "xref": "paper",
            "yref": "paper",
            "x": 0.5,
            "y": 0.5,
            "font": {"size": 14, "color": "#666"},
        }
    ]
    return go.Figure(layout=look)


def layout(
    *,
    title: str = "",
    x_title: str = STEP_TITLE,
    y_title: str = "",
    log_y: bool = False,
    height: int = 380,
    x_max: int | None = None,
) -> dict:
    """The lab's look as a plotly layout: white background (``LOOK``), title at the left, axis
    titles, a legend titled "run", x-unified hover, and a ``uirevision`` that keeps zoom and
    hidden traces across redraws; with ``x_max`` the x axis spans [0, x_max].

    Live charts pass it to ``go.Figure`` with their traces: one validation pass, ~10 times
    cheaper than styling a figure afterwards with ``update_layout`` calls (``style``)."""
    xaxis: dict = {"title": {"text": x_title}}
    if x_max is not None:
        xaxis.update(range=[0, x_max], autorange=False)
    yaxis: dict = {"title": {"text": y_title}}
    if log_y:
        yaxis.update(type="log", tickformat=".2~g")
    return {
        "title": {"text": title, "x": 0.0, "xanchor": "left"},
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 50 if title else 20, "b": 50},
        "legend": {"title": {"text": "run"}, "tracegroupgap": 4},
        "hovermode": "x unified",
        "template": LOOK,
        "showlegend": True,
        "uirevision": "keep",  # live redraws keep the user's zoom and hidden traces
        "xaxis": xaxis,
        "yaxis": yaxis,
    }


def style(fig: go.Figure, **look) -> go.Figure:
    """Give a figure built step by step (e.g. with subplots) the lab's ``layout(**look)``;
    its axis settings apply to every x and every y axis."""
    settings = layout(**look)
    xaxis, yaxis = settings.pop("xaxis"), settings.pop("yaxis")
    fig.update_layout(settings)
    fig.update_xaxes(xaxis)
    fig.update_yaxes(yaxis)
    return fig


def metric_curves(
    metrics: pd.DataFrame,
    *,
    metric: str = "train_loss",
    labels: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | None = None,
    smoothing: float = 0.0,
    title: str = "",
    y_title: str | None = None,
    log_y: bool = False,
    max_points: int = MAX_POINTS,
    x_max: int | None = None,
) -> go.Figure:
    """One line per run of ``metric`` against step (``metrics``: run_id, step, name, value).

    ``x_max``: the step axis spans [0, x_max] (a live run's length: the lines grow across it).
    """
    rows = metrics[metrics["name"] == metric]
    run_ids = list(dict.fromkeys(labels or {})) or list(dict.fromkeys(rows["run_id"]))
    colors = colors or run_colors(run_ids)
    traces = []
    for run_id in run_ids:
        series = rows[rows["run_id"] == run_id].sort_values("step")
        values = smooth(series["value"].reset_index(drop=True), smoothing)
        series = decimate(series.assign(value=values.to_numpy()), max_points)
        sparse = len(series) <= 30  # evaluation metrics: a few points, show them
        traces.append(
            go.Scatter(
                x=series["step"],
                y=series["value"],
                name=(labels or {}).get(run_id, run_id),
                mode="lines+markers" if sparse else "lines",
                line={"color": colors.get(run_id), "width": 2},
                showlegend=True,
            )
        )
    look = layout(
        title=title, y_title=y_title or METRIC_TITLES.get(metric, metric), log_y=log_y, x_max=x_max
    )
    look["yaxis"].update(steady_axis(rows["value"].to_numpy(dtype=float), log=log_y))
    return go.Figure(traces, look)


def steady_range(values: np.ndarray, *, log: bool = False) -> list[float] | None:
    """An axis range around ``values`` that moves in coarse steps as data arrive.

    Live pages redraw their charts every second or so; with ranges that change only now and
    then, the axes hold still while the lines grow (easier to read than axes rescaling at
    every redraw). Log axes (a range in log10 units): whole half-decades around the data.
    Linear axes: the data, without the blow-up of a diverging run (which would flatten every
    other curve), rounded outward to a 1-2-5 step of about a fifth of their span, never
    below zero for data that are not. None when nothing is finite (and positive, for ``log``).
    """
    finite = values[np.isfinite(values)]
    if log:
        finite = finite[finite > 0]
        if finite.size == 0:
            return None
        low = np.floor(np.log10(finite.min()) * 2) / 2
        high = np.ceil(np.log10(finite.max()) * 2) / 2
        return [float(low), float(max(high, low + 0.5))]
    if finite.size == 0:
        return None
    low, high = float(finite.min()), float(finite.max())
    if finite.size >= 10:
        low_q, high_q = np.percentile(finite, [0, 98])
        if high > high_q + 5 * max(high_q - low_q, 1e-12):  # a blow-up: leave it out
            high = float(high_q)
    span = max(high - low, abs(high) * 1e-3, 1e-12)
    step = 10.0 ** np.floor(np.log10(span / 5))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= span / 5)
    bottom = np.floor(low / step - 0.1) * step
    if low >= 0:  # a loss or an accuracy: the axis never dips below zero
        bottom = max(bottom, 0.0)
    return [
        round(float(bottom), 12),  # 1.2, not 1.2000000000000002
        round(float(np.ceil(high / step + 0.1) * step), 12),
    ]


def steady_axis(values: np.ndarray, *, log: bool) -> dict:
    """Axis settings for ``values``: their ``steady_range`` and matching ticks ({} when
    there is no range)."""
    view = steady_range(values, log=log)
    if view is None:
        return {}
    ticks = {"dtick": log_dtick(10.0 ** np.asarray(view))} if log else {}
    return {"range": view, "autorange": False, **ticks}


def log_dtick(values: np.ndarray) -> str | int:
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
        wide = norms.pivot_table(
            index=keys, columns="field", values="value", observed=True, sort=True
        ).reset_index()
    wide.columns = [str(c) for c in wide.columns]
    if {"magnitude_norm", "direction_norm"} <= set(wide.columns):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = wide["magnitude_norm"] / wide["direction_norm"]
        wide["ratio"] = ratio.where(np.isfinite(ratio) & (ratio > 0))
    return wide


def norm_trajectories(
    norms: pd.DataFrame,
    *,
    layer: str,
    labels: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | None = None,
    plain: Sequence[str] = (),
    title: str = "",
    max_points: int = MAX_POINTS,
    x_max: int | None = None,
) -> go.Figure:
    """‖Δ_M‖ (solid) and ‖Δ_D‖ (dotted) of one layer on top, their ratio below, per run.

    ``norms``: the store's layer_norms frame with a ``run_id`` column (one run without it).
    Runs in ``plain`` (no direction optimizer: Δ_D is Δ_M) get one line, their own ‖Δ‖.
    """
    frame = norms if "run_id" in norms else norms.assign(run_id="run")
    frame = frame[frame["layer"] == layer]
    run_ids = list(dict.fromkeys(labels or {})) or list(pd.unique(frame["run_id"]))
    wide = with_ratio(_sample_steps(frame, max_points))
    colors = colors or run_colors(run_ids)
    traces = []
    for run_id in run_ids:
        series = wide[wide["run_id"] == run_id]
        if series.empty:
            continue
        name = (labels or {}).get(run_id, run_id)
        color = colors.get(run_id)
        lines = (
            (("magnitude_norm", "solid", "‖Δ‖"),)
            if run_id in plain
            else (("magnitude_norm", "solid", "‖Δ_M‖"), ("direction_norm", "dot", "‖Δ_D‖"))
        )
        for field, dash, symbol in lines:
            if field in series:
                traces.append(
                    go.Scatter(
                        x=series["step"],
                        y=series[field],
                        name=f"{name} {symbol}",
                        mode="lines",
                        legendgroup=run_id,
                        line={"color": color, "dash": dash, "width": 2},
                    )
                )
        if "ratio" in series and run_id not in plain:
            traces.append(
                go.Scatter(
                    x=series["step"],
                    y=series["ratio"],
                    name=f"{name} ratio",
                    mode="lines",
                    legendgroup=run_id,
                    line={"color": color, "width": 1.5},
                    xaxis="x2",
                    yaxis="y2",
                )
            )
    norm_values = wide[[c for c in ("magnitude_norm", "direction_norm") if c in wide]]
    ratio_values = wide["ratio"] if "ratio" in wide else pd.Series(dtype=float)
    look = layout(title=title, height=520, x_max=x_max, log_y=True)
    x_axis, y_axis = look["xaxis"], look["yaxis"]
    look.update(  # two rows sharing the step axis: norms above (55%), the ratio below
        xaxis={
            **x_axis,
            "anchor": "y",
            "matches": "x2",
            "showticklabels": False,
            "title": {"text": ""},
        },
        xaxis2={**x_axis, "anchor": "y2"},
        yaxis={
            **y_axis,
            "anchor": "x",
            "domain": [0.494, 1.0],
            "title": {"text": NORM_TITLE},
            **steady_axis(norm_values.to_numpy(dtype=float).ravel(), log=True),
        },
        yaxis2={
            **y_axis,
            "anchor": "x2",
            "domain": [0.0, 0.414],
            "title": {"text": RATIO_TITLE},
            **steady_axis(ratio_values.to_numpy(dtype=float), log=True),
        },
    )
    return go.Figure(traces, look)


def norm_heatmap(
    norms: pd.DataFrame,
    *,
    quantity: str = "ratio",
    title: str = "",
    max_steps: int = 400,
    x_max: int | None = None,
) -> go.Figure:
    """Layers × steps of one quantity (log10 colour scale) for one run.

    ``norms``: one run's layer_norms frame. Steps are averaged (in log space) into at most
    ``max_steps`` columns; hover shows the value itself. The colour scale spans whole
    half-decades (``steady_range``); ``x_max`` as in ``metric_curves``.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"Invalid quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
    colorbar_title, hover_name = QUANTITIES[quantity]
    fields = ["magnitude_norm", "direction_norm"] if quantity == "ratio" else [quantity]
    layers, steps, grid = _layer_step_grid(norms, fields)
    with np.errstate(divide="ignore", invalid="ignore"):
        grid = grid[0] / grid[1] if quantity == "ratio" else grid[0]
        values = np.log10(np.where(grid > 0, grid, np.nan))
    shown = ~np.isnan(grid).all(axis=1)  # layers with the quantity recorded
    if not shown.any():
        return empty_figure(f"no {hover_name} recorded yet", y_title="layer (parameter tensor)")
    layers, values = [name for name, keep in zip(layers, shown) if keep], values[shown]
    starts = np.linspace(0, len(steps), min(max_steps, len(steps)), endpoint=False).astype(int)
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), starts, axis=1)
    counts = np.add.reduceat(finite.astype("int64"), starts, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(counts > 0, sums / counts, np.nan)  # mean of log10 per bin of steps
    x = steps[starts].astype(int).tolist()
    scale = steady_range(10.0**z, log=True) or [None, None]
    look = layout(
        title=title,
        y_title="layer (parameter tensor)",
        height=max(300, 60 + 28 * len(layers)),
        x_max=x_max,
    )
    look.update(hovermode="closest", showlegend=False)
    look["yaxis"]["autorange"] = "reversed"
    return go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=layers,
            colorscale="Viridis",
            customdata=10.0**z,
            zmin=scale[0],
            zmax=scale[1],
            colorbar={
                "title": {"text": colorbar_title, "side": "right"},
                **_log_ticks(np.asarray(scale, dtype=float)),
            },
            hovertemplate=f"step %{{x}}<br>%{{y}}<br>{hover_name} = %{{customdata:.3g}}"
            "<extra></extra>",
        ),
        look,
    )


def _layer_step_grid(
    norms: pd.DataFrame, fields: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One run's ``fields`` as an array [field, layer, step] (the mean of repeated rows, NaN
    where none): the layers (the frame's category order, else order of appearance), the
    steps (sorted), the array. Plain numpy: a live heatmap redraws this every second."""
    rows = norms[norms["field"].isin(fields) & np.isfinite(norms["value"])]
    if hasattr(norms["layer"], "cat"):
        layers = [str(c) for c in norms["layer"].cat.categories]
        layer_codes = rows["layer"].cat.codes.to_numpy()
    else:
        codes, names = pd.factorize(rows["layer"])
        layers, layer_codes = [str(n) for n in names], codes
    field_codes = pd.Index(fields).get_indexer(rows["field"])
    step = rows["step"].to_numpy(dtype=np.int64)
    seen = _seen_steps(step)
    steps = np.flatnonzero(seen)
    step_codes = (np.cumsum(seen) - 1)[step]
    shape = (len(fields), len(layers), len(steps))
    flat = np.ravel_multi_index((field_codes, layer_codes, step_codes), shape)
    size = int(np.prod(shape))
    sums = np.bincount(flat, weights=rows["value"].to_numpy(dtype=float), minlength=size)
    counts = np.bincount(flat, minlength=size)
    with np.errstate(divide="ignore", invalid="ignore"):
        grid = np.where(counts > 0, sums / counts, np.nan).reshape(shape)
    return layers, steps, grid


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
    return {"tickvals": ticks, "ticktext": [f"{10.0**t:.2g}" for t in ticks]}


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page of ``fig`` (plotly.js inlined: opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


#: A reading of one result between its parents uses the comparison protocol's words
#: (``verdict.LABELS``): "like M" / "like D" within ``POSITION_MARGIN`` of a parent (as
#: ``verdict.MARGIN``), "between", "better than both" / "worse than both" beyond a parent by
#: more than it, and "cannot tell" when M and D themselves are level.
POSITION_MARGIN = 0.25
SIDE_WORDS = ("like M", "like D", "between", "better than both", "worse than both", "cannot tell")


def graft_side(graft: float, magnitude: float, direction: float, *, tie: float) -> dict:
    """Where one graft's result lands between its parents' (lower is better), computed.

    ``tie``: the smallest difference that means something here (the noise of these numbers,
    in their units). Returns ``side`` (one of ``SIDE_WORDS``), ``position`` (G − M)/(D − M)
    (0 at M, 1 at D; NaN when M and D are level) and ``why`` (the numbers behind it).
    """
    gap = direction - magnitude
    if not all(np.isfinite([graft, magnitude, direction])):
        return {"side": "cannot tell", "position": float("nan"), "why": "a run did not finish"}
    if abs(gap) <= tie:
        return {
            "side": "cannot tell",
            "position": float("nan"),
            "why": f"M and D end level: they differ by {abs(gap):.2g}, within {tie:.2g}, "
            "too little to say which one the graft follows",
        }
    pos = (graft - magnitude) / gap
    margin = POSITION_MARGIN
    if abs(pos) < margin:
        side = "like M"
    elif abs(pos - 1) < margin:
        side = "like D"
    elif margin <= pos <= 1 - margin:
        side = "between"
    else:  # beyond a parent by more than the margin: better or worse than both
        side = "better than both" if graft < min(magnitude, direction) else "worse than both"
    return {"side": side, "position": float(pos), "why": f"position {pos:.2f} (0 = M, 1 = D)"}


SEED_SHARE = 0.02  # one seed: differences under 2% of the loss could be the seed's alone


def lab_reading(
    metrics: pd.DataFrame, roles: Mapping[str, str], labels: Mapping[str, str]
) -> list[str]:
    """What M alone, D alone, M#D (and D#M) of one seed show, computed (Markdown lines).

    ``roles``: "M", "D", "M#D", "D#M" (or "replay": replay(M)#D) → run id; ``metrics``:
    their store frame. Each run's result is its last validation loss when every run has
    one, else its mean training loss over the last 10% of its steps. One seed cannot measure
    the seed spread, so differences under ``SEED_SHARE`` of the loss (the lab's five-seed
    spreads were 0.2–3%, RESULTS.md) or under twice a training-loss tail's standard error
    count as level.
    """
    use_val = all(
        ((metrics["run_id"] == r) & (metrics["name"] == "val_loss")).any() for r in roles.values()
    )
    value, noise = {}, 0.0
    for role, run_id in roles.items():
        rows = metrics[(metrics["run_id"] == run_id)]
        if use_val:
            series = rows[rows["name"] == "val_loss"].sort_values("step")["value"]
            value[role] = float(series.iloc[-1]) if len(series) else float("nan")
        else:
            series = rows[rows["name"] == "train_loss"].sort_values("step")["value"]
            tail = series.iloc[-max(1, len(series) // 10) :]
            value[role] = float(tail.mean()) if len(tail) else float("nan")
            if len(tail) > 1:
                noise = max(noise, float(tail.std() / np.sqrt(len(tail))))
    what = "final validation loss" if use_val else "training loss, mean of the last 10% of steps"
    lines = [
        f"{what.capitalize()}: "
        + ", ".join(f"{role} = {labels[r]} **{value[role]:.4g}**" for role, r in roles.items())
        + "."
    ]
    if not {"M", "D", "M#D"} <= set(value):
        return lines
    tie = max(SEED_SHARE * (abs(value["M"]) + abs(value["D"])) / 2, 2 * noise)
    lines[0] += (
        f" One seed: a difference under {tie:.2g} counts as level (another seed could move "
        "it that much; the Grid page's tuned comparison measures the seed spread)."
    )
    for graft, own_m, own_d in (("M#D", "M", "D"), ("D#M", "D", "M"), ("replay", "M", "D")):
        if graft not in value:
            continue
        side = graft_side(value[graft], value[own_m], value[own_d], tie=tie)
        m, d = labels[roles[own_m]], labels[roles[own_d]]
        words = {
            "like M": f"like {m}, its magnitude",
            "like D": f"like {d}, its direction",
            "between": f"between {m} and {d}",
        }.get(side["side"], side["side"])
        where = (
            f"position {side['position']:.2f}, 0 = {m}, 1 = {d}"
            if np.isfinite(side["position"])
            else side["why"]
        )
        name = "" if graft == "replay" else f"{graft} = "
        lines.append(f"{name}{labels[roles[graft]]}: **{words}** ({where}).")
    return lines
