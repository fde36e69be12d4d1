"""Grafting on two-parameter problems, for teaching: paths, step arrows, norms.

Every path is computed by the project's own optimizers: plain M and plain D, and
``Graft`` for M#D and D#M. For the arrows at each M#D step (M's proposed step, D's
proposed step and the grafted step), two shadow copies of M and D receive the same
gradients at the same points, so their proposals are exactly what Graft combined.

    problem = make_problem("rosenbrock")
    paths = grafted_paths(problem, ("adam", {"lr": 0.1}), ("sgd", {"lr": 1e-3}), steps=200)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from grafting_core import Graft, as_spec, build_optimizer

LAYOUTS = ("joint", "per_coordinate")  # both coordinates one layer, or each its own


@dataclass(frozen=True)
class Problem:
    """A loss over (x, y) with a start point, a plotting box and what to look for."""

    name: str
    loss: Callable[[Tensor, Tensor], Tensor]  # the clean loss (plotted)
    start: tuple[float, float]
    box: tuple[float, float, float, float]  # x_min, x_max, y_min, y_max
    about: str  # what the problem is, for students (no prediction of the outcome)
    noise: float = 0.0  # std of the gradient noise (noisy problems)
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def _quadratic(condition: float):
    return lambda x, y: 0.5 * (x**2 + condition * y**2)


# Where a path starts and the box it is drawn in, shared by the presets on the same loss.
_VALLEY = {"start": (-4.0, 1.5), "box": (-5.0, 5.0, -2.5, 2.5)}  # the quadratics
_BANANA = {"start": (-1.5, 2.0), "box": (-2.0, 2.0, -1.0, 3.0)}  # Rosenbrock's

#: Per preset: a title, the loss it uses, options with defaults, start, plotting box, what the
#: problem *is* (``about``: no prediction of what the paths will do; the page computes that
#: from the paths on screen), and learning rates that make the optimizers move visibly in
#: ~100 steps. The two "decides" presets also name their M, D and step count: on them the
#: paths show one side deciding clearly, and ``tests/test_toy2d.py`` checks that they do.
PRESETS: dict[str, dict[str, Any]] = {
    "quadratic": {
        "title": "narrow valley (quadratic)",
        "suggested_lr": {"adam": 0.1, "sgd": 0.02},
        "defaults": {"condition": 20.0},
        **_VALLEY,
        "about": "A valley κ times steeper across (y) than along (x). The gradient, SGD's "
        "direction, points mostly across it; Adam divides each coordinate by its own "
        "running gradient size, so its direction points more along it.",
    },
    "magnitude_decides": {
        "title": "round bowl: magnitude decides",
        "loss": "quadratic",
        "suggested_lr": {"adam": 0.03, "sgd": 0.03},
        "optimizers": {"magnitude": "adam", "direction": "sgd"},
        "steps": 100,
        "defaults": {"condition": 5.0},
        **_VALLEY,
        "about": "A nearly round bowl (κ = 5): every sensible direction points downhill, so "
        "how far each step goes is what differs. Adam at lr 0.03 moves about 0.03 a step; "
        "SGD with momentum takes long steps while the slope is steep.",
    },
    "direction_decides": {
        "title": "curved valley: direction decides",
        "loss": "rosenbrock",
        "suggested_lr": {"sign_sgd": 0.03, "adam": 0.1},
        "optimizers": {"magnitude": "sign_sgd", "direction": "adam"},
        "steps": 300,
        "defaults": {},
        **_BANANA,
        "about": "Rosenbrock's curved valley: signSGD can only step diagonally (±1, ±1) and "
        "bounces between the valley's walls; Adam's direction can turn with the valley.",
    },
    "rosenbrock": {
        "title": "curved valley (Rosenbrock)",
        "suggested_lr": {"adam": 0.05, "sgd": 0.0005},
        "defaults": {},
        **_BANANA,
        "about": "A curved banana valley with its minimum at (1, 1): the floor bends, so a "
        "path must turn to follow it.",
    },
    "saddle": {
        "title": "saddle",
        "suggested_lr": {"adam": 0.05, "sgd": 0.01},
        "defaults": {},
        "start": (-2.0, 0.01),
        "box": (-2.5, 2.5, -2.5, 2.5),
        "about": "Starting next to a saddle point: the gradient along y is tiny at first, so "
        "how fast a path escapes depends on how an optimizer sizes small gradients.",
    },
    "beale": {
        "title": "plateaus and walls (Beale)",
        "suggested_lr": {"adam": 0.05, "sgd": 0.001},
        "defaults": {},
        "start": (1.0, 1.4),
        "box": (-1.0, 4.0, -1.5, 2.0),
        "about": "Flat plateaus and steep walls: gradient sizes vary by orders of magnitude "
        "along the way, so the step sizes M and D imply differ the most.",
    },
    "noisy_quadratic": {
        "title": "noisy valley (quadratic + gradient noise)",
        "loss": "quadratic",
        "suggested_lr": {"adam": 0.05, "sgd": 0.01},
        "defaults": {"condition": 10.0, "noise": 1.0, "seed": 0},
        **_VALLEY,
        "about": "A valley with noisy gradients, like minibatches: paths jitter near the "
        "minimum, and the end loss is read over the last 10% of the steps.",
    },
}


def make_problem(name: str, **options: Any) -> Problem:
    """A preset problem; options: ``condition`` (quadratics), ``noise`` and ``seed``."""
    if name not in PRESETS:
        raise ValueError(f"Unknown problem {name!r} (valid: {', '.join(PRESETS)})")
    preset = PRESETS[name]
    unknown = sorted(set(options) - set(preset["defaults"]))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for {name!r} (valid: {sorted(preset['defaults'])})"
        )
    opts = {**preset["defaults"], **options}
    if opts.get("condition", 1.0) < 1 or not math.isfinite(opts.get("condition", 1.0)):
        raise ValueError(f"Invalid condition: {opts['condition']!r} (must be >= 1)")
    if opts.get("noise", 0.0) < 0:
        raise ValueError(f"Invalid noise: {opts['noise']!r} (must be >= 0)")
    losses = {
        "quadratic": _quadratic(opts.get("condition", 1.0)),
        "rosenbrock": lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
        "saddle": lambda x, y: x**2 - y**2 + 0.25 * y**4,
        "beale": lambda x, y: (
            (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2
        ),
    }
    return Problem(
        name,
        losses[preset.get("loss", name)],
        preset["start"],
        preset["box"],
        preset["about"],
        noise=float(opts.get("noise", 0.0)),
        seed=int(opts.get("seed", 0)),
        options=opts,
    )


@dataclass
class Path:
    """One optimizer's path: points ``(steps+1, 2)``, losses, and for grafts the arrows."""

    label: str
    points: Tensor
    losses: Tensor
    magnitude_steps: Tensor | None = None  # (steps, 2): M's proposal at each point
    direction_steps: Tensor | None = None  # (steps, 2): D's proposal at each point
    magnitude_norms: Tensor | None = None  # (steps,) ‖Δ_M‖ (joint layout: of the pair)
    direction_norms: Tensor | None = None  # (steps,) ‖Δ_D‖


def _gradient(problem: Problem, w: Tensor, step: int) -> Tensor:
    x = w.detach().clone().requires_grad_(True)
    problem.loss(x[0], x[1]).backward()
    grad = x.grad
    if problem.noise:
        gen = torch.Generator().manual_seed(problem.seed * 100_003 + step)
        grad = grad + problem.noise * torch.randn(2, generator=gen, dtype=w.dtype)
    return grad


def _params(start: Tensor, layout: str) -> tuple[list[tuple[str, Tensor]], Callable[[], Tensor]]:
    if layout == "joint":
        w = torch.nn.Parameter(start.clone())
        return [("xy", w)], lambda: w.detach()
    x, y = torch.nn.Parameter(start[:1].clone()), torch.nn.Parameter(start[1:].clone())
    return [("x", x), ("y", y)], lambda: torch.cat([x.detach(), y.detach()])


def _set_grads(named: list[tuple[str, Tensor]], grad: Tensor) -> None:
    if len(named) == 1:
        named[0][1].grad = grad.clone()
    else:
        named[0][1].grad, named[1][1].grad = grad[:1].clone(), grad[1:].clone()


def optimize(
    problem: Problem,
    magnitude: Any,
    direction: Any | None,
    *,
    start=None,
    steps: int = 100,
    layout: str = "joint",
    label: str = "",
) -> Path:
    """The path of M#D (plain M when ``direction`` is None) from ``start`` for ``steps``."""
    if layout not in LAYOUTS:
        raise ValueError(f"Invalid layout: {layout!r} (valid: {LAYOUTS})")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (must be an int >= 1)")
    start = torch.tensor(problem.start if start is None else start, dtype=torch.float64)
    if start.shape != (2,) or not torch.isfinite(start).all():
        raise ValueError(f"Invalid start: {start.tolist()} (two finite numbers)")
    magnitude, direction = as_spec(magnitude), direction and as_spec(direction)
    named, read = _params(start, layout)
    graft = Graft(named, magnitude, direction)
    shadows = []
    if direction is not None:  # same gradients at the same points: the children's proposals
        shadow_named, shadow_read = _params(start, layout)
        shadows = [
            (build_optimizer(s, shadow_named), shadow_named, shadow_read)
            for s in (magnitude, direction)
        ]
    points, losses, proposals = [read().clone()], [], ([], [])
    for step in range(steps):
        w = read()
        losses.append(problem.loss(w[0], w[1]).detach())
        grad = _gradient(problem, w, step)
        _set_grads(named, grad)
        for i, (opt, s_named, _) in enumerate(shadows):
            with torch.no_grad():
                for (_, p), value in zip(s_named, ([w] if len(s_named) == 1 else w.split(1))):
                    p.copy_(value)
            _set_grads(s_named, grad)
            params, deltas = opt.compute_steps()
            proposals[i].append(torch.cat([d.reshape(-1) for d in deltas]))
        graft.step()
        points.append(read().clone())
    w = read()
    losses.append(problem.loss(w[0], w[1]).detach())
    path = Path(
        label or (f"{magnitude.name}#{direction.name}" if direction else magnitude.name),
        torch.stack(points),
        torch.stack(losses),
    )
    if shadows:
        path.magnitude_steps, path.direction_steps = (torch.stack(p) for p in proposals)
        path.magnitude_norms = path.magnitude_steps.norm(dim=1)
        path.direction_norms = path.direction_steps.norm(dim=1)
    return path


def grafted_paths(
    problem: Problem,
    magnitude: Any,
    direction: Any,
    *,
    start=None,
    steps: int = 100,
    layout: str = "joint",
) -> dict[str, Path]:
    """M alone, D alone, M#D and D#M from the same start (keys: "M", "D", "M#D", "D#M")."""
    m, d = as_spec(magnitude), as_spec(direction)
    kwargs = {"start": start, "steps": steps, "layout": layout}
    return {
        "M": optimize(problem, m, None, label=f"M = {m.name}", **kwargs),
        "D": optimize(problem, d, None, label=f"D = {d.name}", **kwargs),
        "M#D": optimize(problem, m, d, label=f"M#D = {m.name}#{d.name}", **kwargs),
        "D#M": optimize(problem, d, m, label=f"D#M = {d.name}#{m.name}", **kwargs),
    }
