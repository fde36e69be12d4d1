"""A tuned comparison's search as heatmaps: per optimizer, lr (log, x) × warm-up (% of the
steps, y), coloured by the mean final metric over the search's seeds, each cell's value or
fate written in it (pruned at the rung, diverged, still training) and the best one framed.

    fig = search_heatmap(read_comparison(store, group).sweep, steps=400,
                         z_title="final validation loss")
    fig.show()
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grafting_core.lab.figures.runs import OKABE_ITO, empty_figure, style

COLUMNS = 3  # optimizers side by side; more wrap onto another row
#: A cell without a value says why, on its own background (the colour scale is for values).
FATES = {  # fate -> (text in the cell, background, text colour)
    "pruned": ("pruned", "#e8e8e8", "#555"),
    "training": ("training…", "#eef3f9", "#555"),
    "diverged": ("diverged /<br>failed", "#f8dcd4", "#b00"),
}
BEST_LINE = {"color": OKABE_ITO["vermillion"], "width": 4}
X_TITLE = "learning rate (log scale)"


def cell_fate(row: pd.Series) -> str:
    """What a row of ``Comparison.sweep`` shows: ``"diverged"`` (a seed diverged or failed:
    mean inf), ``"training"`` (a seed still to finish), ``"pruned"`` (paused at the rung,
    not continued), ``"value"`` (a mean over its finished seeds) or ``""`` (nothing yet)."""
    if row["failed"] > 0 or row["mean"] == np.inf:
        return "diverged"
    if row["pending"] > 0:
        return "training"
    if row["pruned"] > 0:
        return "pruned"
    return "value" if np.isfinite(row["mean"]) else ""


def search_heatmap(
    sweep: pd.DataFrame,
    *,
    steps: int,
    z_title: str,
    title: str = "",
    settled: bool | Collection[str] = True,
    arms: Sequence[str] = (),
) -> go.Figure:
    """Per optimizer (a subplot each, one shared colour scale), the search's lr × warm-up.

    ``sweep``: ``compare.Comparison.sweep`` (arm, lr, warmup in steps, seeds, failed,
    pending, pruned, mean, std, best, at_edge, warmup_at_edge); ``steps``: a run's steps
    (the warm-up is shown as a share of them). ``settled``: the optimizers whose search has
    ended (True: all), whose best setting is framed; while one trains, its best is not.
    ``arms``: the optimizers' order (default: the sweep's); others of the sweep follow.
    Lower values are better: they take the bright end of the colour scale.
    """
    if sweep.empty:
        return empty_figure(
            "no setting of the search has trained yet",
            x_title=X_TITLE,
            y_title="warm-up (% of steps)",
        )
    arms = [arm for arm in dict.fromkeys([*arms, *sweep["arm"]]) if arm in set(sweep["arm"])]
    columns = min(len(arms), COLUMNS)
    rows = math.ceil(len(arms) / columns)
    values = sweep["mean"].to_numpy(float)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    titles = [_arm_title(sweep[sweep["arm"] == arm], arm, steps) for arm in arms]
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=titles,
        horizontal_spacing=0.08,
        vertical_spacing=0.3 / rows,
    )
    warmup_rows = 1
    for i, arm in enumerate(arms):
        cells = sweep[sweep["arm"] == arm]
        ended = settled is True or (settled is not False and arm in settled)
        shown = _arm_cells(fig, cells, i // columns + 1, i % columns + 1, steps, (low, high), ended)
        warmup_rows = max(warmup_rows, shown)
    fig.update_layout(
        coloraxis={
            "colorscale": "Viridis",
            "reversescale": True,  # lower is better: the bright end
            "cmin": low,
            "cmax": high,
            "colorbar": {"title": {"text": z_title, "side": "right"}, "outlinewidth": 0},
        }
    )
    top = (50 if title else 20) + 18 * max(t.count("<br>") + 1 for t in titles)  # arm titles
    style(
        fig,
        title=title,
        x_title=X_TITLE,
        height=top + rows * (110 + 55 * warmup_rows),
    )
    fig.update_layout(hovermode="closest", showlegend=False, margin={"t": top + 10})
    fig.update_annotations(font_size=13, selector={"xref": "paper"})  # the arms' titles
    fig.update_xaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(title_text=f"warm-up (% of the {steps} steps)", col=1)
    return fig


def _arm_title(cells: pd.DataFrame, arm: str, steps: int) -> str:
    """``sgd: best lr 0.0316, warm-up 5%``, with a warning when it sits at the edge of the
    lrs tried, or of three or more warm-ups."""
    best = cells[cells["best"].astype(bool)]
    if best.empty:
        return f"<b>{arm}</b>"
    row = best.iloc[0]
    text = f"<b>{arm}</b>: best lr {row['lr']:.3g}"
    if cells["warmup"].nunique() > 1:
        text += f", warm-up {_percent(row['warmup'], steps)}"
    # of two warm-ups either is an edge: said only when one lay between them
    inner = cells["warmup"].nunique() > 2
    edges = [
        what
        for what, flag in (("lr", "at_edge"), ("warm-up", "warmup_at_edge"))
        if bool(row.get(flag, False)) and (what == "lr" or inner)
    ]
    if edges:
        text += (
            f"<br><span style='color:#b00'>at the edge of the {' and '.join(edges)} tried</span>"
        )
    return text


def _percent(warmup: float, steps: int) -> str:
    """A warm-up of ``warmup`` steps as a share of ``steps``: ``5%``, ``6.67%``."""
    return f"{100 * warmup / steps:.3g}%" if steps else f"{warmup:g} steps"


def _arm_cells(
    fig: go.Figure,
    cells: pd.DataFrame,
    row: int,
    col: int,
    steps: int,
    scale: tuple[float, float],
    settled: bool,
) -> int:
    """One optimizer's lr × warm-up cells in subplot (row, col): the values' heatmap, the
    cells without a value on their fate's background, each cell's text, the best framed.
    Returns how many warm-ups it has."""
    lrs = sorted(cells["lr"].unique())
    warmups = sorted(cells["warmup"].unique())
    x = np.log10(np.asarray(lrs, dtype=float))
    shape = (len(warmups), len(lrs))
    z, fate_z = np.full(shape, np.nan), np.full(shape, np.nan)
    hover = np.full(shape, "", dtype=object)
    middle = sum(scale) / 2
    fates = list(FATES)
    for cell in cells.itertuples(index=False):
        i, j = warmups.index(cell.warmup), lrs.index(cell.lr)
        record = pd.Series(cell._asdict())
        fate = cell_fate(record)
        where = f"lr {cell.lr:.3g}, warm-up {_percent(cell.warmup, steps)} ({cell.warmup} steps)"
        if fate == "value":
            z[i, j] = cell.mean
            spread = f" ± {cell.std:.2g}" if np.isfinite(cell.std) else ""
            hover[i, j] = f"{where}<br>{cell.mean:.4g}{spread} ({cell.seeds} seeds)"
            text = f"{cell.mean:.3g}"
            color = "white" if cell.mean > middle else "black"  # the dark end of the scale
            if cell.best and settled:
                text = f"<b>{text}</b><br>best"
                _frame_cell(fig, x, j, i, row, col)
        elif fate:
            fate_z[i, j] = fates.index(fate)
            text, _, color = FATES[fate]
            hover[i, j] = f"{where}<br>{text.replace('<br>', ' ')}"
        else:
            continue
        fig.add_annotation(
            x=float(x[j]),
            y=i,
            text=text,
            showarrow=False,
            font={"size": 12, "color": color},
            row=row,
            col=col,
        )
    common = {"x": x, "y": list(range(len(warmups))), "xgap": 2, "ygap": 2, "text": hover}
    fig.add_trace(
        go.Heatmap(
            z=fate_z,
            colorscale=[[k / (len(FATES) - 1), FATES[f][1]] for k, f in enumerate(FATES)],
            zmin=0,
            zmax=len(FATES) - 1,
            showscale=False,
            hovertemplate="%{text}<extra></extra>",
            name="no value",
            **common,
        ),
        row=row,
        col=col,
    )
    fig.add_trace(
        go.Heatmap(
            z=z,
            coloraxis="coloraxis",
            hovertemplate="%{text}<extra></extra>",
            name="mean",
            **common,
        ),
        row=row,
        col=col,
    )
    fig.update_xaxes(
        tickvals=x.tolist(),
        ticktext=[f"{lr:.3g}" for lr in lrs],
        range=[x[0] - _half(x[:2]), x[-1] + _half(x[-2:])],  # the cells' outer edges
        row=row,
        col=col,
    )
    fig.update_yaxes(
        tickvals=list(range(len(warmups))),
        ticktext=[_percent(w, steps) for w in warmups],
        range=[-0.5, len(warmups) - 0.5],
        row=row,
        col=col,
    )
    return len(warmups)


def _half(x: np.ndarray) -> float:
    """Half the gap of two neighbouring log-lrs (an edge cell's half width, as plotly draws
    it); half a decade for a single lr."""
    return float(x[1] - x[0]) / 2 if len(x) > 1 else 0.5


def _frame_cell(fig: go.Figure, x: np.ndarray, j: int, i: int, row: int, col: int) -> None:
    """A thick frame around cell (warm-up i, lr j): the best setting."""
    left = (x[j - 1] + x[j]) / 2 if j > 0 else x[0] - _half(x[:2])
    right = (x[j] + x[j + 1]) / 2 if j + 1 < len(x) else x[-1] + _half(x[-2:])
    fig.add_shape(
        type="rect",
        x0=float(left),
        x1=float(right),
        y0=i - 0.5,
        y1=i + 0.5,
        line=BEST_LINE,
        row=row,
        col=col,
    )
