"""Figures of stored runs: traces per run, point caps, ratios and heatmaps, checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grafting_core.lab.figures import experiments as experiment_figures
from grafting_core.lab.figures import runs as run_figures


def _metrics(runs: dict[str, np.ndarray], name: str = "train_loss") -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame({"run_id": r, "step": np.arange(len(v)), "name": name, "value": v})
            for r, v in runs.items()
        ],
        ignore_index=True,
    )


def _norms(run_id: str, steps: int, layers: list[str], m: float, d: float) -> pd.DataFrame:
    rows = [
        (run_id, s, layer, field, value * (i + 1))
        for s in range(steps)
        for i, layer in enumerate(layers)
        for field, value in (("magnitude_norm", m), ("direction_norm", d))
    ]
    frame = pd.DataFrame(rows, columns=["run_id", "step", "layer", "field", "value"])
    frame["layer"] = pd.Categorical(frame["layer"], categories=layers)
    return frame


def test_metric_curves_one_trace_per_run_in_label_order_and_capped():
    data = _metrics({"a": np.linspace(2, 1, 5000), "b": np.linspace(3, 2, 100)})
    fig = run_figures.metric_curves(data, labels={"b": "run b", "a": "run a"}, max_points=2000)
    assert [t.name for t in fig.data] == ["run b", "run a"]
    assert len(fig.data[0].x) == 100 and len(fig.data[1].x) == 2000
    assert fig.data[1].x[0] == 0 and fig.data[1].x[-1] == 4999  # ends kept
    assert fig.layout.xaxis.title.text == run_figures.STEP_TITLE
    assert fig.layout.yaxis.title.text and fig.layout.showlegend


def test_smoothing_is_a_debiased_moving_average():
    values = pd.Series([1.0, 3.0])
    smoothed = run_figures.smooth(values, 0.5)
    assert smoothed.iloc[0] == 1.0
    assert smoothed.iloc[1] == pytest.approx((0.5 * 1.0 + 1.0 * 3.0) / 1.5)


def test_a_diverging_run_does_not_flatten_the_others():
    blown = np.r_[np.linspace(2, 1, 200), 1e12]
    fig = run_figures.metric_curves(_metrics({"ok": np.linspace(2, 1, 200), "bad": blown}))
    low, high = fig.layout.yaxis.range
    assert low < 1.0 and 2.0 < high < 10.0


def test_norm_trajectories_ratio_and_plain_runs():
    norms = pd.concat(
        [_norms("g", 5, ["w", "b"], m=0.2, d=0.05), _norms("p", 5, ["w", "b"], m=0.1, d=0.1)]
    )
    fig = run_figures.norm_trajectories(
        norms, layer="w", labels={"p": "adam", "g": "adam#sgd"}, plain=["p"]
    )
    names = [t.name for t in fig.data]
    assert names == ["adam ‖Δ‖", "adam#sgd ‖Δ_M‖", "adam#sgd ‖Δ_D‖", "adam#sgd ratio"]
    ratio = fig.data[-1]
    assert np.allclose(ratio.y, 0.2 / 0.05)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"


def test_long_norm_trajectories_keep_evenly_spaced_steps_with_their_values():
    rng = np.random.default_rng(0)
    norms = pd.concat(
        [_norms("a", 3000, ["w", "b"], m=1.0, d=1.0), _norms("c", 700, ["w", "b"], m=1.0, d=1.0)],
        ignore_index=True,
    )
    norms["value"] = rng.uniform(0.1, 1.0, len(norms))
    fig = run_figures.norm_trajectories(norms, layer="b", max_points=500)
    for run_id, steps in (("a", 3000), ("c", 700)):
        want = norms[(norms["run_id"] == run_id) & (norms["layer"] == "b")]
        want = want.pivot(index="step", columns="field", values="value")
        want = run_figures.decimate(want, 500)  # the first and last step, evenly spaced between
        m, d, ratio = (t for t in fig.data if t.name.startswith(run_id))
        assert len(m.x) == 500 and m.x[0] == 0 and m.x[-1] == steps - 1
        assert np.array_equal(m.x, want.index) and np.allclose(m.y, want["magnitude_norm"])
        assert np.allclose(d.y, want["direction_norm"])
        assert np.allclose(ratio.y, want["magnitude_norm"] / want["direction_norm"])


def test_heatmap_is_layers_by_binned_steps_in_log10():
    norms = _norms("g", 1000, ["w", "b", "out"], m=0.3, d=0.03).drop(columns="run_id")
    fig = run_figures.norm_heatmap(norms, quantity="ratio", max_steps=100)
    heat = fig.data[0]
    assert list(heat.y) == ["w", "b", "out"]
    assert np.asarray(heat.z).shape == (3, 100)
    assert np.allclose(heat.z, 1.0)  # log10(0.3 / 0.03)
    with pytest.raises(ValueError, match="quantity"):
        run_figures.norm_heatmap(norms, quantity="nope")


def test_grid_heatmap_writes_values_and_notes_in_cells():
    matrix = pd.DataFrame(
        [[1.0, 2.0], [np.nan, 0.5]], index=["sgd", "adam"], columns=["sgd", "adam"]
    )
    notes = pd.DataFrame(
        [["", ""], ["running 40%", ""]], index=matrix.index, columns=matrix.columns
    )
    fig = experiment_figures.grid_heatmap(matrix, z_title="final loss", notes=notes)
    (heat,) = fig.data
    assert list(heat.y) == ["sgd", "adam"] and list(heat.x) == ["sgd", "adam"]
    assert np.isnan(heat.z[1][0]) and heat.z[1][1] == 0.5
    cells = {(a.y, a.x): a.text for a in fig.layout.annotations}
    assert cells == {
        ("sgd", "sgd"): "1",
        ("sgd", "adam"): "2",
        ("adam", "sgd"): "running 40%",
        ("adam", "adam"): "0.5",
    }
    assert heat.reversescale  # lower loss is the good end of the scale
    assert "magnitude" in fig.layout.yaxis.title.text and "direction" in fig.layout.xaxis.title.text


def _sweep(means, stds, best: int, at_edge: bool = False) -> pd.DataFrame:
    lrs = [0.01, 0.0316, 0.1, 0.316][: len(means)]
    return pd.DataFrame(
        {
            "arm": "sgd",
            "lr": lrs,
            "seeds": 3,
            "failed": 0,
            "mean": means,
            "std": stds,
            "best": [i == best for i in range(len(lrs))],
            "at_edge": [at_edge and i == best for i in range(len(lrs))],
        }
    )


def test_lr_sweep_draws_means_with_std_bars_stars_the_best_and_names_missing_lrs():
    sweep = _sweep([1.2, 0.9, np.inf, np.inf], [0.1, 0.05, np.nan, np.nan], best=1)
    fig = experiment_figures.lr_sweep(sweep.iloc[::-1], y_title="loss")
    means, best = fig.data
    assert list(means.x) == [0.01, 0.0316] and list(means.y) == [1.2, 0.9]  # finite, by lr
    assert list(means.error_y.array) == [0.1, 0.05]
    assert (list(best.x), list(best.y)) == ([0.0316], [0.9])
    notes = {round(10**a.x, 4): a.text for a in fig.layout.annotations}
    assert notes == {
        0.0316: "best 0.0316",
        0.1: "diverged /<br>failed",
        0.316: "diverged /<br>failed",
    }
    training = experiment_figures.lr_sweep(
        sweep, y_title="loss", notes={0.316: "training…"}, settled=False
    )
    assert len(training.data) == 1  # no best while an lr still trains
    notes = {round(10**a.x, 4): a.text for a in training.layout.annotations}
    assert notes == {0.1: "diverged /<br>failed", 0.316: "training…"}
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.ticktext) == [
        "0.01",
        "0.0316",
        "0.1",
        "0.316",
    ]
    edge = experiment_figures.lr_sweep(
        _sweep([1.2, 0.9], [0.1, np.nan], best=1, at_edge=True), y_title="loss"
    )
    assert "best at the grid's edge" in edge.layout.annotations[1].text
    assert list(edge.data[0].error_y.array) == [0.1, 0.0]  # one seed: no bar


def test_verdict_points_put_m_mgd_and_d_side_by_side_with_their_spread():
    verdicts = pd.DataFrame(
        [
            {
                "magnitude": "adam",
                "direction": "sgd",
                "verdict": "magnitude",
                "graft_mean": 1.0,
                "graft_std": 0.1,
                "graft_seeds": 3,
                "magnitude_mean": 0.9,
                "magnitude_std": 0.05,
                "magnitude_seeds": 3,
                "direction_mean": 2.0,
                "direction_std": 0.2,
                "direction_seeds": 3,
            },
            {
                "magnitude": "sgd",
                "direction": "adam",
                "verdict": "cannot tell",
                "graft_mean": 1.5,
                "graft_std": 0.3,
                "graft_seeds": 3,
                "magnitude_mean": 2.0,
                "magnitude_std": 0.2,
                "magnitude_seeds": 3,
                "direction_mean": 0.9,
                "direction_std": 0.05,
                "direction_seeds": 3,
            },
        ]
    )
    fig = experiment_figures.verdict_points(verdicts, y_title="loss")
    assert [t.name for t in fig.data] == ["M alone, tuned", "M#D at M's tuned lr", "D alone, tuned"]
    assert list(fig.data[0].x) == [
        "adam#sgd<br><i>closer to M (adam)</i>",
        "sgd#adam<br><i>cannot tell</i>",
    ]
    assert list(fig.data[1].y) == [1.0, 1.5] and list(fig.data[1].error_y.array) == [0.1, 0.3]
    assert list(fig.data[2].y) == [2.0, 0.9] and list(fig.data[0].y) == [0.9, 2.0]
    assert fig.layout.scattermode == "group"  # the three side by side, not on one another
    assert list(fig.layout.yaxis.range) == pytest.approx([0.85 - 0.2025, 2.2 + 0.2025])
    empty = experiment_figures.verdict_points(pd.DataFrame(), y_title="loss")
    assert not empty.data and "grafts" in empty.layout.annotations[0].text


def test_implicit_schedule_draws_step_norm_and_effective_lr_per_layer():
    rows = [("step_norm", 0.2), ("grad_norm", 4.0)]
    frame = pd.DataFrame(
        [(s, layer, f, v * (s + 1)) for s in range(3) for layer in ("a", "b") for f, v in rows],
        columns=["step", "layer", "field", "value"],
    )
    fig = experiment_figures.implicit_schedule(frame)
    assert [t.name for t in fig.data] == ["a", "a", "b", "b"]
    assert list(fig.data[0].y) == pytest.approx([0.2, 0.4, 0.6])
    assert list(fig.data[1].y) == pytest.approx([0.05, 0.05, 0.05])  # ‖Δ‖/‖g‖
    assert [t.showlegend for t in fig.data] == [True, False, True, False]
    assert "‖Δ‖/‖g‖" in fig.layout.yaxis2.title.text


def test_ratio_lines_shade_the_window_and_draw_the_static_values():
    ratios = pd.DataFrame(
        {
            "step": [0, 1, 2, 0, 1, 2],
            "layer": ["a"] * 3 + ["b"] * 3,
            "ratio": [1.0, 2.0, 3.0, 10.0, 20.0, 30.0],
        }
    )
    fig = experiment_figures.ratio_lines(ratios, window=(1, 3), values={"a": 2.5, "b": 25.0})
    assert [t.name for t in fig.data] == ["a", "a: static value", "b", "b: static value"]
    assert list(fig.data[1].x) == [1, 2] and list(fig.data[1].y) == [2.5, 2.5]
    (shade,) = fig.layout.shapes
    assert (shade.x0, shade.x1) == (1, 2)
    assert fig.layout.yaxis.type == "log"


def test_memory_bars_in_kib_with_copies_of_the_weights():
    fig = experiment_figures.memory_bars(
        {"adam": 8192.0, "sgd": 4096.0, "running": float("nan")}, weight_bytes=4096.0
    )
    assert [t.name for t in fig.data][:2] == ["adam", "sgd"]
    assert fig.data[2].name.startswith("one copy of the weights")  # the dotted line's legend
    assert fig.data[0].y[0] == 8.0 and "KiB" in fig.layout.yaxis.title.text
    assert fig.data[0].text[0] == "2×" and fig.data[1].text[0] == "1×"  # copies of weights


def test_steady_ranges_move_in_coarse_steps_so_live_redraws_keep_their_axes():
    assert run_figures.steady_range(np.array([0.02, 0.3]), log=True) == [-2.0, -0.5]
    assert run_figures.steady_range(np.array([0.03, 0.2, np.nan]), log=True) == [-2.0, -0.5]
    assert run_figures.steady_range(np.array([0.0, -1.0]), log=True) is None
    low, high = run_figures.steady_range(np.array([2.31, 1.62]))
    assert low < 1.62 and high > 2.31 and high - low < 2 * (2.31 - 1.62)
    assert run_figures.steady_range(np.array([0.01, 2.4]))[0] == 0.0  # a loss: not below zero
    assert run_figures.steady_range(np.array([-0.01, 2.4]))[0] < -0.01
    loss = 2.3 * np.exp(-np.arange(3000) / 1500)  # a falling loss, a second of steps at a time
    ranges = [tuple(run_figures.steady_range(loss[:n])) for n in range(100, 3001, 100)]
    assert len(set(ranges)) <= 10 and len(set(ranges[15:])) <= 3  # 30 redraws: axes settle
    fig = run_figures.metric_curves(_metrics({"a": loss}), x_max=5000)
    assert list(fig.layout.xaxis.range) == [0, 5000]
    assert list(fig.layout.yaxis.range) == run_figures.steady_range(loss)


def test_verdict_points_name_a_partial_graft_by_the_layers_it_grafts():
    verdicts = pd.DataFrame(
        {
            "magnitude": ["adam", "adam"],
            "direction": ["sgd", "sgd"],
            "grafted": ["all", "hidden"],
            "verdict": ["cannot tell", "magnitude"],
            **{f"{arm}_mean": [1.5, 1.5] for arm in ("graft", "magnitude", "direction")},
            **{f"{arm}_std": [0.02, 0.01] for arm in ("graft", "magnitude", "direction")},
            **{f"{arm}_seeds": [3, 3] for arm in ("graft", "magnitude", "direction")},
        }
    )
    graft = experiment_figures.verdict_points(verdicts, y_title="loss").data[1]
    assert graft.x[0] == "adam#sgd<br><i>cannot tell</i>"
    assert graft.x[1] == "adam#sgd [hidden only]<br><i>closer to M (adam)</i>"


def test_ratio_study_figure_sets_static_arms_against_tuned_bands():
    table = pd.DataFrame(
        {
            "arm": ["adam", "sgd", "sgd+ratios[late,global]", "sgd+ratios[early,global]"],
            "role": ["tuned", "tuned", "static_ratios", "static_ratios"],
            "window": ["", "", "late", "early"],
            "scope": ["", "", "global", "global"],
            "mean": [1.4, 1.7, 1.45, 1.5],
            "std": [0.01, 0.02, 0.03, 0.04],
            "seeds": [3, 3, 3, 3],
            "failed": [0, 0, 0, 0],
        }
    )
    fig = experiment_figures.ratio_study_figure(table)
    bands = [(s.y0, s.y1) for s in fig.layout.shapes if s.type == "rect"]
    assert bands == [pytest.approx((1.39, 1.41)), pytest.approx((1.68, 1.72))]
    (points,) = [t for t in fig.data if t.mode == "markers"]
    assert list(points.x) == ["early<br>global", "late<br>global"]  # windows in time order
    assert list(points.y) == [1.5, 1.45] and list(points.error_y.array) == [0.04, 0.03]
    fig = experiment_figures.ratio_study_figure(table.assign(failed=[0, 0, 1, 0]))
    (points,) = [t for t in fig.data if t.mode == "markers"]
    assert list(points.x) == ["early<br>global", "late<br>global<br><i>1 of 4 failed</i>"]
