"""Plotly figures of the lab's experiments: the M#D grid, a tuned comparison's lr sweeps and
verdicts, a run's implicit schedule, static ratios, optimizer-state memory, and step sizes by
kind of layer across optimizers.

Plain functions from the engine's DataFrames to a Figure, shared by the app's experiment
pages and the notebooks, in the style of ``figures`` (the live-run figures).

    fig = grid_heatmap(matrix, z_title="final validation loss")
    fig.show()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grafting_core.lab.experiments.comparison_reading import graft_name
from grafting_core.lab.experiments.implicit_schedules import LAYER_GROUPS, layer_series
from grafting_core.lab.experiments.ratio_study import WINDOWS
from grafting_core.lab.experiments.verdict import closer_to_words, label_words
from grafting_core.lab.figures.runs import (
    MAX_POINTS,
    NORM_TITLE,
    PALETTE,
    RATIO_TITLE,
    STEP_TITLE,
    decimate,
    empty_figure,
    log_dtick,
    run_colors,
    smooth,
    style,
    with_ratio,
)


def grid_heatmap(
    matrix: pd.DataFrame,
    *,
    z_title: str,
    notes: pd.DataFrame | None = None,
    title: str = "",
    lower_is_better: bool = True,
) -> go.Figure:
    """M (rows) × D (columns) of one final metric, the value written in each cell.

    ``matrix``: ``experiments.grid_matrix`` (NaN = no finished run yet); ``notes``: the same
    shape of short texts shown in cells without a value ("running", "diverged"). The
    diagonal A#A is plain A. Colours run from bad to good either way (``lower_is_better``).
    """
    z = matrix.to_numpy(dtype=float)
    rows, columns = [str(r) for r in matrix.index], [str(c) for c in matrix.columns]
    finite = z[np.isfinite(z)]
    middle = float(finite.min() + finite.max()) / 2 if finite.size else 0.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=columns,
            y=rows,
            colorscale="Viridis",
            reversescale=lower_is_better,
            colorbar={"title": {"text": z_title, "side": "right"}},
            xgap=2,
            ygap=2,
            hovertemplate="M = %{y}<br>D = %{x}<br>"
            + z_title.replace("<br>", " ")
            + " = %{z:.4g}<extra></extra>",
        )
    )
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            value = z[i, j]
            if np.isfinite(value):
                dark = (value > middle) == lower_is_better  # dark end of the colour scale
                text, color = f"{value:.3g}", "white" if dark else "black"
            else:
                note = notes.iat[i, j] if notes is not None else ""
                text, color = (note if isinstance(note, str) else ""), "#666"
            fig.add_annotation(
                x=column, y=row, text=text, showarrow=False, font={"size": 13, "color": color}
            )
    side = max(300, 90 + 70 * len(rows))
    style(
        fig,
        title=title,
        x_title="direction optimizer D (gives the step direction)",
        y_title="magnitude optimizer M<br>(gives the step size)",
        height=side,
    )
    fig.update_layout(hovermode="closest", showlegend=False)
    fig.update_xaxes(side="bottom", type="category")
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def lr_sweep(
    sweep: pd.DataFrame,
    *,
    y_title: str,
    notes: Mapping[float, str] | None = None,
    settled: bool = True,
    title: str = "",
) -> go.Figure:
    """One optimizer's learning-rate sweep: the final metric's mean over seeds against lr
    (log x), ± one std as error bars, the best lr starred and, when it sits at the grid's
    edge, said so. Lrs without a mean are named along the top by ``notes`` (lr → "training…",
    "stopped" ...; default "diverged / failed": a run of that lr did not finish).
    ``settled``: False while the sweep trains or when it was cut short: no best is marked.

    ``sweep``: one arm's rows of ``compare.Comparison.sweep`` (lr, seeds, mean, std, best,
    at_edge; with ``warmup``, one line per warm-up searched; settings pruned at the rung have
    no mean).
    """
    rows = sweep.sort_values("lr")
    done = rows[np.isfinite(rows["mean"].to_numpy(float))]
    warmups = sorted(done["warmup"].unique()) if "warmup" in done else [None]
    fig = go.Figure()
    for i, warmup in enumerate(warmups):  # a line per warm-up searched
        line = done if warmup is None else done[done["warmup"] == warmup]
        fig.add_trace(
            go.Scatter(
                x=line["lr"],
                y=line["mean"],
                mode="lines+markers",
                name="mean over seeds, ± std"
                if len(warmups) == 1
                else f"warm-up {warmup} steps, ± std",
                error_y={
                    "type": "data",
                    "array": line["std"].fillna(0.0),
                    "visible": True,
                    "thickness": 1.5,
                    "width": 6,
                },
                customdata=np.column_stack([line["std"], line["seeds"]]),
                hovertemplate="lr %{x:.3g}: %{y:.4g} ± %{customdata[0]:.2g} "
                "(%{customdata[1]} seeds)<extra></extra>",
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
                marker={"size": 8},
            )
        )
    best = done[done["best"].astype(bool)]
    if not best.empty and settled:
        lr, value, edge = best["lr"].iloc[0], best["mean"].iloc[0], bool(best["at_edge"].iloc[0])
        fig.add_trace(
            go.Scatter(
                x=[lr],
                y=[value],
                mode="markers",
                name="best: the tuned lr",
                hovertemplate=f"best lr {lr:.3g}: %{{y:.4g}}<extra></extra>",
                marker={
                    "symbol": "star",
                    "size": 18,
                    "color": PALETTE[3],
                    "line": {"color": "white", "width": 1},
                },
            )
        )
        fig.add_annotation(
            x=np.log10(lr),
            y=value,
            ax=0,
            ay=-30,
            showarrow=True,
            arrowhead=0,
            text=f"best {lr:.3g}",
            font={"size": 12},
            bgcolor="rgba(255, 255, 255, 0.8)",
        )
        if edge:
            fig.add_annotation(
                x=1.0,
                y=1.0,
                xref="paper",
                yref="paper",
                xanchor="right",
                yanchor="bottom",
                showarrow=False,
                text="<b>best at the grid's edge</b>",
                font={"size": 12, "color": "#b00"},
            )
    if done.empty:
        fig.update_yaxes(showticklabels=False)  # no value yet: no scale to read
    for lr in rows.loc[~rows.index.isin(done.index), "lr"]:
        note = (notes or {}).get(float(lr), "diverged / failed")
        fig.add_annotation(
            x=np.log10(lr),
            y=1.0,
            yref="paper",
            yanchor="top",
            showarrow=False,
            text=note.replace(" / ", " /<br>"),
            font={
                "size": 11,
                "color": "#b00" if "diverged" in note or "failed" in note else "#666",
            },
        )
    style(fig, title=title, x_title="learning rate (log scale)", y_title=y_title, height=340)
    span = np.log10(rows["lr"].to_numpy(float))
    fig.update_xaxes(
        type="log",
        range=[span.min() - 0.3, span.max() + 0.3] if span.size else None,
        tickvals=rows["lr"].tolist(),
        ticktext=[f"{lr:.3g}" for lr in rows["lr"]],
    )
    fig.update_layout(
        hovermode="closest", legend={"title": {"text": ""}, "orientation": "h", "y": -0.3, "x": 0}
    )
    return fig


def graft_lr_figure(
    table: pd.DataFrame, *, magnitude: str, direction: str, y_title: str, title: str = ""
) -> go.Figure:
    """M#D at each lr of M (log x): the final metric's mean over seeds, ± one std, a line
    per variant (the whole graft, each partial one); the comparison's own graft (at M's tuned
    lr) ringed, each variant's best lr starred (and said so when it is the edge of the lrs
    tried); tuned M and tuned D as dashed lines across. An lr where a seed did not finish is
    named along the top.

    ``table``: ``graft_lrs.graft_lr_table``.
    """
    fig = go.Figure()
    for i, (variant, rows) in enumerate(table.sort_values("lr").groupby("variant", sort=True)):
        done = rows[rows["mean"].notna()]
        name = graft_name(magnitude, direction, variant)
        color = PALETTE[(i + 2) % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=done["lr"],
                y=done["mean"],
                mode="lines+markers",
                name=name,
                error_y={"type": "data", "array": done["std"].fillna(0.0), "visible": True},
                customdata=np.column_stack([done["std"], done["seeds"], done["position"]]),
                hovertemplate=f"{name}<br>M's lr %{{x:.3g}}: %{{y:.4g}} ± %{{customdata[0]:.2g}}"
                " (%{customdata[1]} seeds), position %{customdata[2]:.2f}<extra></extra>",
                line={"color": color, "width": 2},
                marker={"size": 8},
            )
        )
        for marked, symbol, size, legend in (
            (done[done["tuned_lr"]], "circle-open", 18, "at M's tuned lr (the comparison's)"),
            (done[done["best"]], "star", 16, "best lr of the line"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=marked["lr"],
                    y=marked["mean"],
                    mode="markers",
                    name=legend,
                    legendgroup=legend,
                    showlegend=i == 0,
                    hoverinfo="skip",
                    marker={"symbol": symbol, "size": size, "color": color, "line": {"width": 2}},
                )
            )
        for lr in done.loc[done["at_edge"].astype(bool), "lr"]:
            fig.add_annotation(
                x=np.log10(lr),
                y=float(done.loc[done["lr"] == lr, "mean"].iloc[0]),
                ax=0,
                ay=-34,
                text="<b>best at the edge:</b><br>try beyond",
                font={"size": 11, "color": "#b00"},
                bgcolor="rgba(255, 255, 255, 0.8)",
            )
        for lr in rows.loc[rows["mean"].isna(), "lr"]:
            fig.add_annotation(
                x=np.log10(lr),
                y=1.0,
                yref="paper",
                yanchor="top",
                showarrow=False,
                text="diverged /<br>failed"
                if rows.loc[rows["lr"] == lr, "failed"].any()
                else "training…",
                font={"size": 11, "color": "#b00"},
            )
    for column, label, color in (
        ("magnitude_mean", f"{magnitude} alone, tuned", PALETTE[0]),
        ("direction_mean", f"{direction} alone, tuned", PALETTE[1]),
    ):
        if len(table) and np.isfinite(table[column].iloc[0]):
            fig.add_hline(
                y=table[column].iloc[0],
                line_color=color,
                line_dash="dash",
                annotation_text=label,
                annotation_position="top left",
            )
    style(
        fig,
        title=title,
        x_title=f"{magnitude}'s learning rate in the graft (log scale)",
        y_title=y_title,
        height=380,
    )
    lrs = sorted(table["lr"].unique())
    fig.update_xaxes(type="log", tickvals=lrs, ticktext=[f"{lr:.3g}" for lr in lrs])
    fig.update_layout(
        hovermode="closest", legend={"title": {"text": ""}, "orientation": "h", "y": -0.3, "x": 0}
    )
    return fig


VERDICT_ARMS = (  # (column prefix of protocol.Comparison.verdicts, legend name, colour)
    ("magnitude", "M alone, tuned", PALETTE[0]),
    ("graft", "M#D at M's tuned lr", PALETTE[2]),
    ("direction", "D alone, tuned", PALETTE[1]),
)


def position_intervals(
    verdicts: pd.DataFrame,
    *,
    title: str = "",
    names: Sequence[str] | None = None,
    words: Sequence[str] | None = None,
    ends: tuple[str, str] = ("M", "D"),
    x_title: str = "position (M#D − M) / (D − M)",
) -> go.Figure:
    """Each graft's position on the M–D segment (0 = M, 1 = D) with its CI as a bar, the
    equivalence margins around M and D shaded, and its verdict in the hover and the tick:
    what ``verdict.judge`` decided, drawn. An unbounded CI runs off both ends of the axis.

    ``verdicts``: ``compare.Comparison.verdicts`` (magnitude, direction, grafted, position,
    ci_low, ci_high, label, margin; ``ci_level``: each CI's level, 95% or the stricter one
    Holm judged it at, said in the title and the hover; 95% where absent). ``names``: each
    row's name on the axis (else its graft's, from magnitude, direction and grafted); ``words``:
    each row's verdict as written under it (else its label with M's and D's names); ``ends``:
    what the margins at 0 and 1 are called ("like M", "like D")."""
    if verdicts.empty:
        return empty_figure("the verdicts come when the grafts have trained", x_title="position")
    if names is None:
        names = [
            graft_name(m, d, g)
            for m, d, g in zip(verdicts["magnitude"], verdicts["direction"], verdicts["grafted"])
        ]
    if words is None:
        words = [
            label_words(label, m, d)
            for label, m, d in zip(verdicts["label"], verdicts["magnitude"], verdicts["direction"])
        ]
    margin = float(verdicts["margin"].iloc[0])
    low, high = -1.0, 2.0  # what the axis shows; an interval beyond it is clipped there
    lows = np.clip(verdicts["ci_low"].to_numpy(float), low, high)
    highs = np.clip(verdicts["ci_high"].to_numpy(float), low, high)
    positions = np.clip(verdicts["position"].to_numpy(float), low, high)
    ticks = [f"{name}<br>{word}" for name, word in zip(names, words)]
    levels = verdicts["ci_level"] if "ci_level" in verdicts else [0.95] * len(verdicts)
    level_text = [f"{100 * level:.3g}%" for level in levels]
    ci_name = (
        f"{level_text[0]} CI"
        if len(set(level_text)) == 1
        else "CI at the level Holm judged it (in the hover)"
    )
    fig = go.Figure()
    for centre, text in ((0.0, f"like {ends[0]}"), (1.0, f"like {ends[1]}")):
        fig.add_vrect(
            x0=centre - margin,
            x1=centre + margin,
            fillcolor=PALETTE[0] if centre == 0 else PALETTE[1],
            opacity=0.12,
            line_width=0,
            annotation_text=f"{text} (±{margin:g})",
            annotation_position="top",
        )
    fig.add_vline(x=0.5, line={"dash": "dot", "color": "grey"})
    fig.add_trace(
        go.Scatter(
            x=positions,
            y=ticks,
            mode="markers",
            name=f"position, {ci_name}",
            marker={"size": 10, "color": PALETTE[2]},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": highs - positions,
                "arrayminus": positions - lows,
                "thickness": 2,
                "width": 6,
            },
            customdata=np.column_stack(
                [
                    verdicts["ci_low"].to_numpy(float),
                    verdicts["ci_high"].to_numpy(float),
                    words,
                    level_text,
                ]
            ),
            hovertemplate="position %{x:.2f}, %{customdata[3]} CI [%{customdata[0]:.2f}, "
            "%{customdata[1]:.2f}]: %{customdata[2]}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"Where each graft lands: 0 = M, 1 = D, with its {ci_name}",
        xaxis={"title": x_title, "range": [low, high]},
        yaxis={"autorange": "reversed", "automargin": True},  # long arm names fit
        height=140 + 60 * len(verdicts),
        showlegend=False,
    )
    return fig


def study_intervals(
    table: pd.DataFrame, magnitude: str, direction: str, *, title: str = ""
) -> go.Figure:
    """Each static-ratio arm of ``ratio_study.static_ratio_table`` between tuned D (0) and tuned
    M (1), its CI at the level Holm judged it, the margins shaded, its verdict under its name:
    the study's verdicts drawn as ``position_intervals`` draws a comparison's."""
    static = table[table["role"] == "static_ratios"] if not table.empty else table
    if static.empty or "label" not in static:
        return empty_figure(
            "the verdicts come when the static-ratio runs have trained", x_title="position"
        )
    return position_intervals(
        static,
        names=list(static["arm"]),
        words=list(static["verdict"]),
        ends=(f"tuned {direction}", f"tuned {magnitude}"),
        x_title=f"position (arm − tuned {direction}) / (tuned {magnitude} − tuned {direction})",
        title=title
        or f"Each arm between tuned {direction} (0) and tuned {magnitude} (1), with its CI at "
        "the level Holm judged it (in the hover)",
    )


def verdict_points(verdicts: pd.DataFrame, *, y_title: str, title: str = "") -> go.Figure:
    """Per graft M#D (full, or partial: ``[hidden only]``): tuned M, the graft and tuned D side
    by side, each its mean over seeds with ± one std as error bars, so where M#D lands and how
    far the seeds spread read at a glance; each graft's verdict is written under its name.

    ``verdicts``: ``protocol.Comparison.verdicts`` (magnitude, direction, <arm>_mean, <arm>_std,
    <arm>_seeds for arm in graft, magnitude, direction; ``label``, the judged verdict, when
    present, else the older ``verdict``).
    """
    if verdicts.empty:
        return empty_figure(
            "the verdicts come when the grafts have trained", x_title="pair", y_title=y_title
        )
    grafted = verdicts["grafted"] if "grafted" in verdicts else pd.Series("all", verdicts.index)
    judged = "label" in verdicts  # the paired, calibrated verdict (``verdict.judge``)
    words = label_words if judged else closer_to_words
    pairs = [
        f"{graft_name(m, d, g)}<br><i>{words(v, m, d)}</i>"
        for m, d, g, v in zip(
            verdicts["magnitude"],
            verdicts["direction"],
            grafted,
            verdicts["label"] if judged else verdicts["verdict"],
        )
    ]
    who = {
        "magnitude": verdicts["magnitude"],
        "direction": verdicts["direction"],
        "graft": verdicts["magnitude"] + "#" + verdicts["direction"],
    }
    fig = go.Figure()
    for arm, name, color in VERDICT_ARMS:
        fig.add_trace(
            go.Scatter(
                x=pairs,
                y=verdicts[f"{arm}_mean"],
                mode="markers",
                name=name,
                error_y={
                    "type": "data",
                    "array": verdicts[f"{arm}_std"].fillna(0.0),
                    "visible": True,
                    "thickness": 2,
                    "width": 8,
                },
                customdata=np.column_stack(
                    [who[arm], verdicts[f"{arm}_std"], verdicts[f"{arm}_seeds"]]
                ),
                hovertemplate="%{customdata[0]}: %{y:.4g} ± %{customdata[1]:.2g} "
                "(%{customdata[2]} seeds)<extra></extra>",
                marker={
                    "size": 12,
                    "color": color,
                    "symbol": "diamond" if arm == "graft" else "circle",
                },
            )
        )
    style(fig, title=title, x_title="", y_title=y_title, height=400)
    fig.update_layout(
        scattermode="group", scattergap=0.5, hovermode="closest", legend={"title": {"text": ""}}
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=_spread_range(verdicts))
    return fig


def _spread_range(verdicts: pd.DataFrame) -> list[float] | None:
    """A y range around every mean ± std of the verdicts' arms, with a margin: the spread,
    not the distance to zero, is what the reader compares."""
    ends = [
        verdicts[f"{arm}_mean"] + sign * verdicts[f"{arm}_std"].fillna(0.0)
        for arm, _, _ in VERDICT_ARMS
        for sign in (-1, 1)
    ]
    values = pd.concat(ends).to_numpy(float)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    low, high = float(values.min()), float(values.max())
    pad = 0.15 * (high - low) if high > low else 0.05 * abs(high) + 1e-3
    return [low - pad, high + pad]


def implicit_schedule(
    norms: pd.DataFrame,
    *,
    layers: Sequence[str] | None = None,
    title: str = "",
    max_points: int = MAX_POINTS,
) -> go.Figure:
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
    rows = (  # top to bottom: the column plotted and its axis title
        ("step_norm", "step size ‖Δ‖<br>(L2 norm, weight units)"),
        ("effective_lr", "effective lr ‖Δ‖/‖g‖<br>(weight units per gradient unit)"),
    )
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for i, layer in enumerate(shown):
        series = decimate(wide[wide["layer"] == layer], max_points)
        color = PALETTE[i % len(PALETTE)]
        for row, (field, _) in enumerate(rows, start=1):
            fig.add_trace(
                go.Scatter(
                    x=series["step"],
                    y=series[field],
                    name=str(layer),
                    mode="lines",
                    legendgroup=str(layer),
                    showlegend=row == 1,
                    line={"color": color, "width": 1.5},
                ),
                row=row,
                col=1,
            )
    style(fig, title=title, height=560)
    fig.update_layout(legend={"title": {"text": "layer"}})
    fig.update_xaxes(title_text="", row=1, col=1)
    fig.update_xaxes(title_text=STEP_TITLE, row=2, col=1)
    picked = wide[wide["layer"].isin(shown)]
    for row, (field, axis_title) in enumerate(rows, start=1):
        fig.update_yaxes(
            title_text=axis_title,
            type="log",
            tickformat=".2~g",
            dtick=log_dtick(picked[field].to_numpy(float)),
            row=row,
            col=1,
        )
    return fig


def ratio_lines(
    ratios: pd.DataFrame,
    *,
    window: tuple[int, int] | None = None,
    values: Mapping[str, float] | None = None,
    title: str = "",
    max_points: int = MAX_POINTS,
) -> go.Figure:
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
        fig.add_trace(
            go.Scatter(
                x=series["step"],
                y=series["ratio"],
                name=str(layer),
                mode="lines",
                legendgroup=str(layer),
                line={"color": color, "width": 1.5},
            )
        )
        if window is not None and values and layer in values:
            fig.add_trace(
                go.Scatter(
                    x=[window[0], window[1] - 1],
                    y=[values[layer]] * 2,
                    mode="lines",
                    name=f"{layer}: static value",
                    legendgroup=str(layer),
                    showlegend=False,
                    hovertemplate=f"{layer}: static multiplier %{{y:.3g}}<extra></extra>",
                    line={"color": color, "width": 3, "dash": "dash"},
                )
            )
    if window is not None:
        fig.add_vrect(
            x0=window[0],
            x1=window[1] - 1,
            fillcolor="#888",
            opacity=0.15,
            line_width=0,
            annotation_text="estimation window",
            annotation_position="top left",
        )
    style(fig, title=title, y_title=RATIO_TITLE, log_y=True, height=460)
    fig.update_layout(legend={"title": {"text": "layer (dashed: its static value)"}})
    fig.update_yaxes(dtick=log_dtick(ratios["ratio"].to_numpy(dtype=float)))
    return fig


def _bytes_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "bytes"


def memory_bars(
    state_bytes: Mapping[str, float],
    *,
    weight_bytes: float | None = None,
    colors: Mapping[str, str] | None = None,
    title: str = "",
) -> go.Figure:
    """Optimizer-state memory per run (one bar each), labelled in copies of the weights
    (``2×``: twice the weights' bytes) when ``weight_bytes`` is given.

    ``state_bytes``: label → bytes (``optimizer_state_bytes``; NaN = not recorded yet).
    """
    known = {k: float(v) for k, v in state_bytes.items() if np.isfinite(v)}
    if not known:
        return empty_figure(
            "memory is recorded when a run ends", x_title="run", y_title="optimizer state"
        )
    scale, unit = _bytes_unit(max(known.values()))
    fig = go.Figure()
    for i, (label, size) in enumerate(known.items()):  # bar text: copies of the weights
        text = f"{size / weight_bytes:.2g}×" if weight_bytes else f"{size / scale:.3g}"
        copies = f" = {text} the weights" if weight_bytes else ""
        fig.add_trace(
            go.Bar(
                x=[label],
                y=[size / scale],
                name=label,
                text=[text],
                textposition="outside",
                textangle=0,
                cliponaxis=False,
                textfont={"size": 13},
                marker_color=(colors or {}).get(label, PALETTE[i % len(PALETTE)]),
                hovertemplate=f"{label}: %{{y:.4g}} {unit}{copies}<extra></extra>",
            )
        )
    style(fig, title=title, x_title="run", y_title=f"optimizer state ({unit})")
    top = max(known.values()) / scale
    fig.update_layout(hovermode="closest", bargap=0.3, margin={"t": 70})
    fig.update_yaxes(range=[0, top * 1.35])  # room for the labels above the bars
    if weight_bytes:
        fig.add_hline(y=weight_bytes / scale, line_dash="dot", line_color="#555")
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name="one copy of the weights<br>(float32); bar labels<br>count copies",
                line={"dash": "dot", "color": "#555"},
            )
        )  # its legend entry
    return fig


def layer_kind_curves(
    norms: pd.DataFrame,
    *,
    field: str = "step_norm",
    labels: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | None = None,
    normalize: bool = True,
    smoothing: float = 0.9,
    title: str = "",
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """One panel per layer kind (embedding, attention, mlp, norm, head ...), one line per run:
    the median over that kind's layers of ``field`` against step, log scale.

    ``norms``: layer_norms frames of several runs with a ``run_id`` column; ``field`` a
    recorded field or a derived one (``effective_lr`` = ‖Δ‖/‖g‖, ``ratio``), see
    :func:`grafting_core.lab.experiments.implicit_schedules.layer_series`. With ``normalize``
    each curve is divided by its own maximum (after smoothing), so optimizers whose steps differ by
    orders of magnitude compare by *shape*: warm-up, decay or flat.
    """
    frame = norms if "run_id" in norms else norms.assign(run_id="run")
    series = layer_series(frame, field)
    series = series[series["value"] > 0]
    if series.empty:
        return empty_figure(f"no {field} recorded yet")
    kinds = [k for k in LAYER_GROUPS if k in set(series["kind"])]
    run_ids = list(dict.fromkeys(labels or {})) or list(dict.fromkeys(series["run_id"]))
    colors = colors or run_colors(run_ids)
    median = series.groupby(["run_id", "kind", "step"], observed=True)["value"].median()
    fig = make_subplots(
        rows=1, cols=len(kinds), shared_yaxes=True, horizontal_spacing=0.02, subplot_titles=kinds
    )
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
            fig.add_trace(
                go.Scatter(
                    x=points["step"],
                    y=points["value"],
                    mode="lines",
                    legendgroup=run_id,
                    name=(labels or {}).get(run_id, run_id),
                    showlegend=col == 1,
                    line={"color": colors.get(run_id), "width": 2},
                ),
                row=1,
                col=col,
            )
    what = {
        "effective_lr": "effective lr ‖Δ‖/‖g‖",
        "ratio": "‖Δ_M‖/‖Δ_D‖",
        "step_norm": "step norm ‖Δ‖",
        "magnitude_norm": "‖Δ_M‖",
        "direction_norm": "‖Δ_D‖",
        "grad_norm": "‖g‖",
        "weight_norm": "‖w‖",
    }.get(field, field)
    y_title = f"{what}<br>(÷ its own maximum)" if normalize else what
    style(fig, title=title, y_title="", log_y=True, height=380)
    drawn = (
        np.concatenate([np.asarray(t.y, dtype=float) for t in fig.data])
        if fig.data
        else np.empty(0)
    )
    fig.update_yaxes(dtick=log_dtick(drawn))
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_xaxes(title_text="step", nticks=4)
    return fig


def ratio_study_figure(
    table: pd.DataFrame, *, y_title: str = "final validation loss", title: str = ""
) -> go.Figure:
    """A static-ratio study: one point per arm (mean over seeds ± one std), tuned M and tuned
    D as shaded bands (mean ± std) across the figure, so each static-ratio arm reads against
    both.

    ``table``: ``ratio_study.static_ratio_table`` (arm, role, window, scope, mean, std, seeds,
    failed; an arm with failed seeds says so under its name: its mean is the finished seeds').
    """
    if table.empty:
        return empty_figure("no finished runs yet", x_title="arm", y_title=y_title)
    static = table[table["role"] == "static_ratios"]
    order = {name: i for i, name in enumerate(WINDOWS)}  # windows in time order, then scope
    static = static.assign(_order=static["window"].map(order).fillna(len(order))).sort_values(
        ["_order", "scope"]
    )
    fig = go.Figure()
    tuned = table[table["role"] == "tuned"].reset_index(drop=True)
    for i, row in tuned.iterrows():
        color = PALETTE[(i + 1) % len(PALETTE)]
        std = row["std"] if np.isfinite(row["std"]) else 0.0
        fig.add_hrect(
            y0=row["mean"] - std, y1=row["mean"] + std, fillcolor=color, opacity=0.15, line_width=0
        )
        fig.add_hline(y=row["mean"], line_color=color, line_dash="dash")
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name=f"{row['arm']} (tuned), mean ± std",
                line={"color": color, "dash": "dash"},
            )
        )
    names = [
        f"{w}<br>{s}" + (f"<br><i>{k} of {k + n} failed</i>" if k else "")
        for w, s, k, n in zip(static["window"], static["scope"], static["failed"], static["seeds"])
    ]
    fig.add_trace(
        go.Scatter(
            x=names,
            y=static["mean"],
            mode="markers",
            name="static ratios, mean ± std",
            marker={"size": 11, "color": PALETTE[0]},
            error_y={
                "type": "data",
                "array": static["std"].fillna(0.0),
                "visible": True,
                "thickness": 2,
                "width": 7,
            },
            customdata=np.column_stack([static["arm"], static["std"], static["seeds"]]),
            hovertemplate="%{customdata[0]}: %{y:.4g} ± %{customdata[1]:.2g} "
            "(%{customdata[2]} seeds)<extra></extra>",
        )
    )
    style(
        fig, title=title, x_title="window, scope of the static ratios", y_title=y_title, height=420
    )
    fig.update_layout(hovermode="closest", legend={"title": {"text": ""}})
    fig.update_xaxes(type="category")
    return fig
