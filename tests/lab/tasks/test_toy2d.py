"""The 2-D teaching engine: paths come from Graft and match a float64 hand computation."""

import math

import pytest
import torch

from grafting_core.lab.figures.toy2d import arrow_vectors, curves_figure, export_html, paths_figure
from grafting_core.lab.tasks.toy2d import PRESETS, grafted_paths, make_problem, optimize


def _hand_graft_path(condition, start, steps, per_coordinate):
    """Adam(0.1)#SGD-momentum(0.05) on 0.5(x² + κy²) with torch's own optimizers, float64."""
    w = torch.tensor(start, dtype=torch.float64)
    shadows = {}
    for role, make in (
        ("m", lambda p: torch.optim.Adam(p, lr=0.1)),
        ("d", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ):
        params = [torch.zeros(1, dtype=torch.float64, requires_grad=True) for _ in range(2)]
        shadows[role] = (params, make(params))
    points = [w.clone()]
    for _ in range(steps):
        grad = torch.stack([w[0], condition * w[1]])  # ∇ 0.5(x² + κy²), by hand
        deltas = {}
        for role, (params, opt) in shadows.items():
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.copy_(w[i : i + 1])
                    p.grad = grad[i : i + 1].clone()
            opt.step()
            deltas[role] = torch.cat([p.detach() for p in params]) - w
        if per_coordinate:
            step = deltas["m"].abs() / deltas["d"].abs() * deltas["d"]
        else:
            step = deltas["m"].norm() / deltas["d"].norm() * deltas["d"]
        w = w + step
        points.append(w.clone())
    return torch.stack(points)


@pytest.mark.parametrize("layout", ["joint", "per_coordinate"])
def test_grafted_path_equals_hand_computation(layout):
    problem = make_problem("quadratic", condition=5.0)
    path = optimize(
        problem,
        ("adam", {"lr": 0.1}),
        ("sgd", {"lr": 0.05, "momentum": 0.9}),
        steps=3,
        layout=layout,
        start=(-3.0, 1.0),
    )
    expected = _hand_graft_path(5.0, (-3.0, 1.0), 3, layout == "per_coordinate")
    torch.testing.assert_close(path.points, expected, rtol=1e-12, atol=1e-12)


def test_arrows_are_the_children_proposals():
    problem = make_problem("rosenbrock")
    path = grafted_paths(problem, ("adam", {"lr": 0.05}), ("sgd", {"lr": 1e-3}), steps=5)["M#D"]
    for step in range(5):
        v = arrow_vectors(path, step)
        assert float(v["grafted"].norm()) == pytest.approx(float(v["magnitude"].norm()), rel=1e-9)
        cosine = torch.dot(v["grafted"], v["direction"]) / (
            v["grafted"].norm() * v["direction"].norm()
        )
        assert float(cosine) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("layout", ["joint", "per_coordinate"])
def test_every_preset_and_layout_draws(name, layout):
    problem = make_problem(name)
    paths = grafted_paths(
        problem, ("adam", {"lr": 0.05}), ("sgd", {"lr": 1e-3}), steps=20, layout=layout
    )
    assert set(paths) == {"M", "D", "M#D", "D#M"}
    assert all(p.points.shape == (21, 2) for p in paths.values())
    fig = paths_figure(problem, paths, step=3)
    assert any("grafted step" in (t.name or "") for t in fig.data)
    assert len(curves_figure(paths).data) == 6


def test_changing_direction_or_start_changes_the_path():
    problem = make_problem("quadratic")
    base = optimize(problem, "adam", "sgd", steps=10)
    other_d = optimize(problem, "adam", ("sign_sgd", {"lr": 0.01}), steps=10)
    other_start = optimize(problem, "adam", "sgd", steps=10, start=(2.0, -1.0))
    assert not torch.equal(base.points, other_d.points)
    assert not torch.equal(base.points, other_start.points)


def test_noisy_problem_is_seeded():
    a = optimize(make_problem("noisy_quadratic", seed=1), "adam", "sgd", steps=10)
    b = optimize(make_problem("noisy_quadratic", seed=1), "adam", "sgd", steps=10)
    c = optimize(make_problem("noisy_quadratic", seed=2), "adam", "sgd", steps=10)
    assert torch.equal(a.points, b.points) and not torch.equal(a.points, c.points)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"start": (math.nan, 0.0)}, "start"),
        ({"steps": 0}, "steps"),
        ({"layout": "rows"}, "layout"),
    ],
)
def test_invalid_input_is_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        optimize(make_problem("quadratic"), "adam", "sgd", **kwargs)
    with pytest.raises(ValueError, match="lr"):
        optimize(make_problem("quadratic"), ("adam", {"lr": -1.0}), "sgd")
    with pytest.raises(ValueError, match="condition"):
        make_problem("quadratic", condition=0.5)


def test_html_export_is_standalone_with_frames():
    problem = make_problem("quadratic")
    paths = grafted_paths(problem, "adam", "sgd", steps=30)
    html = export_html(problem, paths)
    assert "<html>" in html[:100] and "Plotly.newPlot" in html and "frames" in html
    assert '<script src="https:' not in html  # plotly.js inlined: works offline


def test_animation_has_one_arrow_scale_a_title_per_frame_and_visible_first_arrows():
    from grafting_core.lab.figures.toy2d import ARROW_SHARE, animated_figure, arrow_vectors

    problem = make_problem("quadratic")
    paths = grafted_paths(problem, ("adam", {"lr": 0.1}), ("sgd", {"lr": 0.02}), steps=40)
    fig = animated_figure(problem, paths)
    names = {t.name for frame in fig.frames for t in frame.data if t.name and "drawn ×" in t.name}
    scales = {name.rsplit("×", 1)[1] for name in names}
    assert len(scales) == 1, scales  # one scale in every frame
    assert scales.pop() in fig.layout.legend.title.text  # and the legend explains it
    titles = [frame.layout.title.text for frame in fig.frames]
    assert titles[0].endswith("step 0") and titles[5].endswith(f"step {fig.frames[5].name}")
    # the arrows of the first frame span a visible share of the box (independent check)
    first = next(t for t in fig.frames[0].data if t.name and t.name.startswith("grafted step"))
    drawn = math.hypot(first.x[1] - first.x[0], first.y[1] - first.y[0])
    true = float(arrow_vectors(paths["M#D"], 0)["grafted"].norm())
    longest0 = max(float(v.norm()) for v in arrow_vectors(paths["M#D"], 0).values())
    box = min(problem.box[1] - problem.box[0], problem.box[3] - problem.box[2])
    assert drawn / true * longest0 >= 0.5 * ARROW_SHARE * box - 1e-9
