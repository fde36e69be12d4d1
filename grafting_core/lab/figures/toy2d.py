"""Plotly figures for the 2-D teaching problems (shared by the app page and the notebook)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from grafting_core.lab.tasks.toy2d import Path, Problem

COLORS = {"M": "#1f77b4", "D": "#ff7f0e", "M#D": "#2ca02c", "D#M": "#d62728"}
ARROWS = (
    ("magnitude", "Δ_M (M's proposal)", "#1f77b4"),
    ("direction", "Δ_D (D's proposal)", "#ff7f0e"),
    ("grafted", "grafted step: D's direction, M's length", "#2ca02c"),
)


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


def _arrow_traces(problem: Problem, path: Path, step: int) -> list[go.Scatter]:
    vectors = arrow_vectors(path, step)
    longest = max(float(v.norm()) for v in vectors.values())
    x0, x1, y0, y1 = problem.box
    scale = 0.18 * min(x1 - x0, y1 - y0) / longest if longest > 0 else 1.0
    origin = path.points[step]
    traces = []
    for key, label, color in ARROWS:
        tip = origin + scale * vectors[key]
        traces.append(
            go.Scatter(
                x=[float(origin[0]), float(tip[0])],
                y=[float(origin[1]), float(tip[1])],
                mode="lines+markers",
                name=f"{label} (×{scale:.3g})",
                line={
                    "color": color,
                    "width": 4 if key == "grafted" else 2,
                    "dash": "solid" if key == "grafted" else "dot",
                },
                marker={"symbol": "arrow", "size": [0, 16], "angleref": "previous", "color": color},
            )
        )
    return traces


def _step_traces(problem: Problem, paths: dict[str, Path], step: int) -> list[go.Scatter]:
    """The traces that move with the step: each path's current point and M#D's arrows."""
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
        traces += _arrow_traces(problem, graft, min(step, len(graft.points) - 2))
    return traces


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
    problem: Problem, paths: dict[str, Path], step: int | None = None, *, clickable: bool = False
) -> go.Figure:
    """Loss contours, the four paths and, at ``step`` of M#D, the three step arrows.

    ``clickable`` adds an invisible grid of points last, for choosing the start by a click.
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
        fig.add_traces(_step_traces(problem, paths, step))
    if clickable:
        fig.add_trace(_click_grid(problem))
    x0, x1, y0, y1 = problem.box
    title = f"{problem.name}: paths" + (f" (arrows at step {step})" if step is not None else "")
    fig.update_layout(
        title=title,
        xaxis={"title": "x (parameter 1)", "range": [x0, x1]},
        yaxis={"title": "y (parameter 2)", "range": [y0, y1]},
        legend={"orientation": "h", "y": -0.15},
        height=620,
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
            (graft.magnitude_norms, "‖Δ_M‖", "#1f77b4"),
            (graft.direction_norms, "‖Δ_D‖", "#ff7f0e"),
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
    fig.update_layout(
        height=380,
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
    base = paths_figure(problem, paths, steps[0])
    moving = list(range(len(paths) + 2, len(base.data)))  # after contour, paths and start
    base.frames = [
        go.Frame(data=_step_traces(problem, paths, s), traces=moving, name=str(s)) for s in steps
    ]
    base.update_layout(
        title={"x": 0.2},
        legend={"orientation": "h", "y": -0.42},
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


def export_html(problem: Problem, paths: dict[str, Path]) -> str:
    """A standalone HTML page (plotly.js inlined: works offline, e.g. in slides)."""
    return animated_figure(problem, paths).to_html(
        include_plotlyjs=True, full_html=True, auto_play=False
    )
