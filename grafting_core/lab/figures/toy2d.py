"""Plotly figures for the 2-D teaching problems (shared by the app page and the notebook),
and the reading of a picture computed from its paths (``reading``)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from grafting_core.lab.experiments.verdict import path_leaning
from grafting_core.lab.figures.runs import LOOK, OKABE_ITO, graft_side
from grafting_core.lab.tasks.toy2d import Path, Problem

#: Okabe-Ito colours (colour-blind safe, readable on a projector): M blue, D orange, M#D
#: bluish green, D#M reddish purple; each arrow has its path's colour.
COLORS = {
    "M": OKABE_ITO["blue"],
    "D": OKABE_ITO["orange"],
    "M#D": OKABE_ITO["green"],
    "D#M": OKABE_ITO["purple"],
}
ARROWS = (
    ("magnitude", "Δ_M (M's proposal)", COLORS["M"]),
    ("direction", "Δ_D (D's proposal)", COLORS["D"]),
    ("grafted", "grafted step: D's direction, M's length", COLORS["M#D"]),
)
ARROW_SHARE = 0.2  # the longest arrow of the whole animation spans this share of the box
TIE_DECADES = 0.1  # end losses closer than this (a factor 1.26) are level on these pictures
CONVERGED = 1e-3  # M and D both below this share of the start loss: both reached the bottom


def _contour(problem: Problem, resolution: int = 120) -> go.Contour:
    x0, x1, y0, y1 = problem.box
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    z = problem.loss(grid_x, grid_y)
    z = torch.log10(z - z.min() + 1e-3)  # log scale: valleys and plateaus both visible
    return go.Contour(
        x=xs.tolist(),
        y=ys.tolist(),
        z=z.tolist(),
        colorscale="Greys",
        reversescale=True,
        showscale=True,
        ncontours=30,
        opacity=0.6,
        colorbar={"title": {"text": "log₁₀ loss"}},
        name="loss",
        hoverinfo="skip",
        contours={"showlines": True},
    )


def _clip(points: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """Keep divergent paths on the chart: clamp far-away points to twice the box."""
    x0, x1, y0, y1 = box
    w, h = x1 - x0, y1 - y0
    lo = torch.tensor([x0 - w, y0 - h], dtype=points.dtype)
    hi = torch.tensor([x1 + w, y1 + h], dtype=points.dtype)
    return torch.nan_to_num(points, nan=0.0).clamp(lo, hi)


def arrow_vectors(path: Path, step: int) -> dict[str, torch.Tensor]:
    """Δ_M, Δ_D and the applied grafted step at ``step`` of an M#D path."""
    if path.magnitude_steps is None:
        raise ValueError(f"{path.label} is not a grafted path: it has no proposals")
    return {
        "magnitude": path.magnitude_steps[step],
        "direction": path.direction_steps[step],
        "grafted": path.points[step + 1] - path.points[step],
    }


def arrow_scale(problem: Problem, path: Path, steps: list[int] | None = None) -> float:
    """One drawing scale for the arrows of ``steps`` (all by default): the longest arrow among
    them spans ``ARROW_SHARE`` of the box. Fixed across an animation, so that arrow lengths
    compare between frames (steps that shrink look shorter)."""
    steps = range(len(path.points) - 1) if steps is None else steps
    longest = max(
        (float(v.norm()) for s in steps for v in arrow_vectors(path, s).values()), default=0.0
    )
    x0, x1, y0, y1 = problem.box
    return ARROW_SHARE * min(x1 - x0, y1 - y0) / longest if longest > 0 else 1.0


def _arrow_traces(
    problem: Problem, path: Path, step: int, scale: float | None = None
) -> list[go.Scatter]:
    vectors = arrow_vectors(path, step)
    if scale is None:  # a still picture: its own arrows fill the share
        scale = arrow_scale(problem, path, [step])
    origin = path.points[step]
    traces = []
    for key, label, color in ARROWS:
        tip = origin + scale * vectors[key]
        traces.append(
            go.Scatter(
                x=[float(origin[0]), float(tip[0])],
                y=[float(origin[1]), float(tip[1])],
                mode="lines+markers",
                name=f"{label}, drawn ×{scale:.3g}",
                line={
                    "color": color,
                    "width": 4 if key == "grafted" else 2,
                    "dash": "solid" if key == "grafted" else "dot",
                },
                marker={"symbol": "arrow", "size": [0, 16], "angleref": "previous", "color": color},
            )
        )
    return traces


def _step_traces(
    problem: Problem, paths: dict[str, Path], step: int, scale: float | None = None
) -> list[go.Scatter]:
    """The traces that move with the step: each path's current point and M#D's arrows
    (drawn ``scale`` times their length; None: scaled to this step's longest arrow)."""
    traces = []
    for key, path in paths.items():
        p = _clip(path.points, problem.box)[min(step, len(path.points) - 1)]
        traces.append(
            go.Scatter(
                x=[float(p[0])],
                y=[float(p[1])],
                mode="markers",
                showlegend=False,
                hoverinfo="skip",
                marker={
                    "color": COLORS.get(key),
                    "size": 10,
                    "line": {"color": "white", "width": 1},
                },
            )
        )
    graft = paths.get("M#D")
    if graft is not None and graft.magnitude_steps is not None:
        traces += _arrow_traces(problem, graft, min(step, len(graft.points) - 2), scale)
    return traces


def frame_title(problem: Problem, step: int | None) -> str:
    """The paths chart's title; it names the step whose arrows are drawn."""
    name = problem.name.replace("_", " ")
    return f"{name}: paths" + (f", arrows at step {step}" if step is not None else "")


CLICK_GRID = "click to start here"  # name of the clickable (invisible) grid trace


def _click_grid(problem: Problem, n: int = 41) -> go.Scatter:
    """Invisible points over the box: clicking one tells the app where to start."""
    x0, x1, y0, y1 = problem.box
    xs = torch.linspace(x0, x1, n).tolist()
    ys = torch.linspace(y0, y1, n).tolist()
    return go.Scatter(
        x=[x for x in xs for _ in ys],
        y=[y for _ in xs for y in ys],
        mode="markers",
        name=CLICK_GRID,
        showlegend=False,
        marker={"size": 14, "opacity": 0.0},
        hovertemplate="start here: (%{x:.2f}, %{y:.2f})<extra></extra>",
    )


def paths_figure(
    problem: Problem,
    paths: dict[str, Path],
    step: int | None = None,
    *,
    clickable: bool = False,
    scale: float | None = None,
) -> go.Figure:
    """Loss contours, the four paths and, at ``step`` of M#D, the three step arrows.

    ``clickable`` adds an invisible grid of points last, for choosing the start by a click.
    ``scale``: the arrows' drawing scale (None: this step's longest arrow fills the share).
    """
    fig = go.Figure([_contour(problem)])
    for key, path in paths.items():
        pts = _clip(path.points, problem.box)
        fig.add_scatter(
            x=pts[:, 0].tolist(),
            y=pts[:, 1].tolist(),
            mode="lines",
            name=path.label,
            line={"color": COLORS.get(key), "width": 2},
        )
    start = next(iter(paths.values())).points[0].tolist()
    fig.add_scatter(
        x=[start[0]],
        y=[start[1]],
        mode="markers",
        name="start",
        marker={"symbol": "x", "size": 12, "color": "black"},
    )
    if step is not None:
        fig.add_traces(_step_traces(problem, paths, step, scale))
    if clickable:
        fig.add_trace(_click_grid(problem))
    x0, x1, y0, y1 = problem.box
    title = frame_title(problem, step)
    fig.update_layout(
        title=title,
        xaxis={"title": "x (parameter 1)", "range": [x0, x1]},
        yaxis={"title": "y (parameter 2)", "range": [y0, y1]},
        legend={"orientation": "h", "y": -0.15},
        height=620,
        template=LOOK,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
    )
    return fig


def curves_figure(paths: dict[str, Path]) -> go.Figure:
    """Loss vs step of the four paths, and ‖Δ_M‖, ‖Δ_D‖ vs step of M#D."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("loss per step", "M#D: proposed step norms")
    )
    for key, path in paths.items():
        fig.add_scatter(
            x=list(range(len(path.losses))),
            y=path.losses.tolist(),
            mode="lines",
            name=path.label,
            line={"color": COLORS.get(key)},
            row=1,
            col=1,
        )
    graft = paths.get("M#D")
    if graft is not None and graft.magnitude_norms is not None:
        for values, label, color in (
            (graft.magnitude_norms, "‖Δ_M‖", COLORS["M"]),
            (graft.direction_norms, "‖Δ_D‖", COLORS["D"]),
        ):
            fig.add_scatter(
                x=list(range(len(values))),
                y=values.tolist(),
                mode="lines",
                name=label,
                line={"color": color, "dash": "dot"},
                row=1,
                col=2,
            )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", type="log", row=1, col=1)
    fig.update_yaxes(title_text="step norm (parameter units)", type="log", row=1, col=2)
    fig.update_yaxes(exponentformat="power")  # 10⁻⁴, not "100μ"
    fig.update_layout(
        height=380,
        template=LOOK,
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
    )
    return fig


def animated_figure(
    problem: Problem, paths: dict[str, Path], *, max_frames: int = 100
) -> go.Figure:
    """The paths figure with one animation frame per step (decimated) and a step slider."""
    total = len(paths["M#D"].points) - 1
    stride = max(1, total // max_frames)
    steps = list(range(0, total, stride))
    scale = animation_scale(problem, paths["M#D"], steps)
    base = paths_figure(problem, paths, steps[0], scale=scale)
    moving = list(range(len(paths) + 2, len(base.data)))  # after contour, paths and start
    base.frames = [
        go.Frame(
            data=_step_traces(problem, paths, s, scale),
            traces=moving,
            name=str(s),
            layout={"title": {"text": frame_title(problem, s)}},
        )
        for s in steps
    ]
    base.update_layout(
        title={"x": 0.2},
        legend={
            "orientation": "h",
            "y": -0.42,
            "title": {
                "text": f"arrows drawn ×{scale:.3g} their true length, the same in every "
                "frame (a shorter arrow is a smaller step)<br>",
                "side": "top",
            },
        },
        height=760,
        margin={"l": 60, "r": 20, "t": 50, "b": 200},
        updatemenus=[
            {
                "type": "buttons",
                "showactive": False,
                "x": 0,
                "y": 1.12,
                "direction": "left",
                "buttons": [
                    {
                        "label": "▶ play",
                        "method": "animate",
                        "args": [
                            None,
                            {"frame": {"duration": 120, "redraw": True}, "fromcurrent": True},
                        ],
                    },
                    {
                        "label": "❚❚ pause",
                        "method": "animate",
                        "args": [[None], {"mode": "immediate"}],
                    },
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "currentvalue": {"prefix": "step "},
                "y": -0.08,
                "steps": [
                    {
                        "label": str(s),
                        "method": "animate",
                        "args": [[str(s)], {"mode": "immediate", "frame": {"redraw": True}}],
                    }
                    for s in steps
                ],
            }
        ],
    )
    return base


def animation_scale(problem: Problem, path: Path, steps: list[int]) -> float:
    """One arrow scale for a whole animation: its longest arrow spans ``ARROW_SHARE`` of the
    box, raised (never lowered) so that the arrows at its first frame span at least half
    that: a first frame with tiny arrows shows nothing to a class."""
    scale = arrow_scale(problem, path, steps)
    first = arrow_scale(problem, path, steps[:1])
    return max(scale, 0.5 * first)


def export_html(problem: Problem, paths: dict[str, Path]) -> str:
    """A standalone HTML page (plotly.js inlined: works offline, e.g. in slides)."""
    return animated_figure(problem, paths).to_html(
        include_plotlyjs=True, full_html=True, auto_play=False
    )


def end_losses(
    paths: dict[str, Path], *, noisy: bool = False
) -> tuple[dict[str, float], float, str]:
    """Each path's end loss (``verdict.path_leaning``: the median over its last 10% of steps),
    the tie threshold on the scale compared, and that scale ("log10" or "linear").

    Log10 when every end loss is positive (losses span decades): differences under
    ``TIE_DECADES`` are level. On a linear scale (losses that go negative), under 2% of the
    range the losses covered. ``noisy`` (gradient noise): also under twice the standard
    error of a tail's median (≈ 0.93 · IQR / √n), the widest of the four paths'."""
    table = path_leaning(paths)
    ends = {k: float(v) for k, v in table["end_loss"].items()}
    log = table["scale"].iloc[0] == "log10"
    spread = 0.0
    for path in paths.values() if noisy else ():
        tail = path.losses.double()[-max(1, round(0.1 * (len(path.losses) - 1))) :]
        values = tail.log10() if log else tail
        if len(values) > 3 and bool(torch.isfinite(values).all()):
            q = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=values.dtype))
            spread = max(spread, 0.93 * float(q[1] - q[0]) / math.sqrt(len(values)))
    if log:
        return ends, max(TIE_DECADES, 2 * spread), "log10"
    seen = torch.cat([p.losses.double() for p in paths.values()])
    seen = seen[torch.isfinite(seen)]
    span = float(seen.max() - seen.min()) if len(seen) else 0.0
    return ends, max(0.02 * span, 2 * spread), "linear"


def reading(paths: dict[str, Path], *, noisy: bool = False) -> list[str]:
    """What these four paths show, computed from them (Markdown lines): each end loss, where
    each graft lands between its two parents in the comparison protocol's words
    (``figures.runs.graft_side``), and "cannot tell" when the parents end level.
    ``noisy``: the problem has gradient noise (``end_losses``)."""
    ends, tie, scale = end_losses(paths, noisy=noisy)
    value = {
        k: (math.log10(v) if scale == "log10" else v) if np.isfinite(v) else float("nan")
        for k, v in ends.items()
    }
    label = {k: p.label.split(" = ", 1)[-1] for k, p in paths.items()}
    unit = f"{tie:.2g} decade (a factor {10**tie:.2g})" if scale == "log10" else f"{tie:.2g}"
    lines = [
        "End loss (median of the last 10% of steps): "
        + ", ".join(f"{k} = {label[k]} **{ends[k]:.3g}**" for k in paths)
        + f". A difference under {unit} counts as level here."
    ]
    start = float(next(iter(paths.values())).losses[0])
    if (
        scale == "log10"
        and start > 0
        and max(ends.get("M", 1.0), ends.get("D", 1.0)) < CONVERGED * start
    ):
        lines.append(
            f"**Cannot tell**: M and D both reached the bottom (each ended below "
            f"{CONVERGED:g} × the start loss {start:.3g}); what is left between them is the "
            "last wiggles, not which side decides. Try fewer steps, a harder problem or a "
            "preset that separates them (*round bowl: magnitude decides*, *curved valley: "
            "direction decides*)."
        )
        return lines
    if {"M", "D"} <= set(value) and abs(value["D"] - value["M"]) <= tie:
        gap = abs(value["D"] - value["M"])
        lines.append(
            f"**Cannot tell**: M and D end level (they differ by {gap:.2g}"
            + (" decade" if scale == "log10" else "")
            + "), so where a graft lands says nothing about magnitude against direction "
            "on this picture. Try more steps, another start or a preset that separates them "
            "(*round bowl: magnitude decides*, *curved valley: direction decides*)."
        )
        return lines
    sides = {}
    for graft, own_m, own_d in (("M#D", "M", "D"), ("D#M", "D", "M")):
        if graft not in paths:
            continue
        side = graft_side(value[graft], value[own_m], value[own_d], tie=tie)
        sides[graft] = side["side"]
        words = {
            "like M": f"like {label[own_m]}, its magnitude",
            "like D": f"like {label[own_d]}, its direction",
            "between": f"between {label[own_m]} and {label[own_d]}",
        }.get(side["side"], side["side"])
        where = (
            f"position {side['position']:.2f} on {scale} loss, 0 = {label[own_m]}, "
            f"1 = {label[own_d]}"
            if np.isfinite(side["position"])
            else side["why"]
        )
        lines.append(f"{graft} = {label[graft]}: **{words}** ({where}).")
    if sides.get("M#D") == "like M" and sides.get("D#M") in (None, "like M"):
        lines.append("Both grafts follow their magnitude: on this picture the step length decides.")
    elif sides.get("M#D") == "like D" and sides.get("D#M") in (None, "like D"):
        lines.append("Both grafts follow their direction: on this picture the direction decides.")
    elif "cannot tell" not in sides.values():
        lines.append(
            "The two grafts do not follow the same side: neither the step length nor the "
            "direction decides alone here."
        )
    return lines
