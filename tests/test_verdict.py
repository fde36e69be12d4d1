"""Where grafted results land between their parents: positions and verdicts by hand."""

import math

import pandas as pd
import pytest
import torch

from grafting_core.lab.experiments.verdict import (
    comparison_reading,
    grid_leaning,
    in_words,
    matrix_leaning,
    path_leaning,
    position,
)
from grafting_core.lab.tasks.toy2d import Path, grafted_paths, make_problem


def _table(cells: dict[tuple[str, str], list[float]], failed=()) -> pd.DataFrame:
    """A grid_table-like frame: one row per (M, D, seed)."""
    rows = [
        {
            "magnitude": m,
            "direction": d,
            "seed": seed,
            "val_loss": value,
            "status": "failed" if (m, d, seed) in failed else "finished",
        }
        for (m, d), values in cells.items()
        for seed, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


CELLS = {
    ("a", "a"): [1.0, 1.1, 0.9],
    ("a", "b"): [1.2, 1.3, 1.1],
    ("b", "a"): [1.9, 1.0, 1.95],
    ("b", "b"): [2.0, 2.1, 1.9],
}


def test_position_is_zero_at_magnitude_and_one_at_direction():
    assert position(1.0, 1.0, 3.0) == 0.0
    assert position(3.0, 1.0, 3.0) == 1.0
    assert position(0.0, 1.0, 3.0) == -0.5
    assert math.isnan(position(2.0, 1.0, 1.0))


def test_grid_leaning_by_hand():
    lean = grid_leaning(_table(CELLS)).set_index(["magnitude", "direction"])
    assert list(lean.index) == [("a", "b"), ("b", "a")]
    ab = lean.loc[("a", "b")]
    assert ab["position"] == pytest.approx((1.2 - 1.0) / (2.0 - 1.0))
    assert ab["seeds_toward_magnitude"] == 3 and ab["seeds"] == 3
    assert ab["leans"] == "magnitude"
    ba = lean.loc[("b", "a")]
    mean = (1.9 + 1.0 + 1.95) / 3
    assert ba["graft"] == pytest.approx(mean)
    assert ba["position"] == pytest.approx((mean - 2.0) / (1.0 - 2.0))
    assert ba["seeds_toward_magnitude"] == 2  # seed 1 (1.0) sits on a's 1.1
    noise = pd.Series([1.9, 1.0, 1.95]).std()
    assert ba["noise"] == pytest.approx(noise)
    assert 1.0 <= 2 * noise and ba["leans"] == "unclear"  # M and D within the seeds' noise


def test_grid_leaning_toward_direction_neither_and_incomplete_cells():
    cells = {**CELLS, ("a", "b"): [1.9, 2.0, 2.1]}
    lean = grid_leaning(_table(cells)).set_index(["magnitude", "direction"])
    assert lean.loc[("a", "b"), "leans"] == "direction"
    assert lean.loc[("a", "b"), "seeds_toward_magnitude"] == 0
    cells = {**CELLS, ("a", "b"): [0.0, 0.1, -0.1]}  # a whole M-D gap beyond M: like neither
    lean = grid_leaning(_table(cells)).set_index(["magnitude", "direction"])
    assert lean.loc[("a", "b"), "position"] == pytest.approx(-1.0)
    assert lean.loc[("a", "b"), "seeds_toward_magnitude"] == 3
    assert lean.loc[("a", "b"), "leans"] == "neither"
    failed = {("b", "b", s) for s in range(3)}
    lean = grid_leaning(_table(CELLS, failed=failed)).set_index(["magnitude", "direction"])
    assert (lean["leans"] == "incomplete").all() and (lean["seeds"] == 0).all()


def _path(label: str, end: float, stride: float, steps: int = 20) -> Path:
    points = torch.stack([torch.tensor([i * stride, 0.0]) for i in range(steps + 1)])
    losses = torch.logspace(0, math.log10(end), steps + 1, dtype=torch.float64)
    return Path(label, points.double(), losses)


def test_path_leaning_on_log_losses():
    paths = {
        "M": _path("M", 1e-6, 0.1),
        "D": _path("D", 1e-2, 0.3),
        "M#D": _path("M#D", 1e-5, 0.1),
        "D#M": _path("D#M", 1e-3, 0.3),
    }
    table = path_leaning(paths)
    assert table.loc["M", "end_loss"] == pytest.approx((10 ** (-6 * 19 / 20) + 1e-6) / 2)
    assert table.loc["M#D", "mean_step"] == pytest.approx(0.1)
    assert (table["scale"] == "log10").all()
    ends = {k: math.log10(table.loc[k, "end_loss"]) for k in paths}
    assert table.loc["M#D", "position"] == pytest.approx(
        (ends["M#D"] - ends["M"]) / (ends["D"] - ends["M"])
    )
    assert table.loc["D#M", "magnitude_from"] == "D" and table.loc["D#M", "direction_from"] == "M"
    assert table.loc["D#M", "position"] == pytest.approx(
        (ends["D#M"] - ends["D"]) / (ends["M"] - ends["D"])
    )
    assert table.loc["M#D", "leans"] == "magnitude" and table.loc["D#M", "leans"] == "magnitude"


def test_path_leaning_on_real_paths_with_negative_losses():
    paths = grafted_paths(
        make_problem("saddle"), ("adam", {"lr": 0.05}), ("sgd", {"lr": 0.01}), steps=40
    )
    table = path_leaning(paths)
    assert list(table.index) == ["M", "D", "M#D", "D#M"]
    assert (table["scale"] == "linear").all()  # the saddle's losses go below zero
    for key, path in paths.items():
        tail = sorted(path.losses[-4:].tolist())  # 10% of 40 steps
        tail = (tail[1] + tail[2]) / 2
        assert table.loc[key, "end_loss"] == pytest.approx(tail)
    assert table.loc[["M#D", "D#M"], "position"].notna().all()


def test_positions_in_words():
    assert in_words(0.2, "adam", "sgd") == "nearer adam"
    assert in_words(0.8, "adam", "sgd") == "nearer sgd"
    assert in_words(-0.3, "adam", "sgd").startswith("beyond adam")
    assert in_words(1.4, "adam", "sgd").startswith("beyond sgd")
    assert in_words(float("nan")) == "undefined (M and D tie)"


def test_matrix_leaning_splits_the_variance_by_rows_and_columns():
    rows_only = pd.DataFrame([[1.0, 1.0], [3.0, 3.0]], index=["a", "b"], columns=["a", "b"])
    lean = matrix_leaning(rows_only)
    assert lean["magnitude_share"] == pytest.approx(1.0) and lean["leans"] == "magnitude"
    mixed = pd.DataFrame([[1.0, 2.0], [3.0, 5.0]], index=["a", "b"], columns=["a", "b"])
    lean = matrix_leaning(mixed)
    # grand mean 2.75; row means 1.5, 4; column means 2, 3.5; total SS 8.75
    assert lean["magnitude_share"] == pytest.approx(2 * (1.25**2 + 1.25**2) / 8.75)
    assert lean["direction_share"] == pytest.approx(2 * (0.75**2 + 0.75**2) / 8.75)
    assert lean["interaction_share"] == pytest.approx(1 - (6.25 + 2.25) / 8.75)
    assert lean["leans"] == "magnitude"
    assert matrix_leaning(mixed.T)["leans"] == "direction"
    assert matrix_leaning(mixed.where(mixed < 5))["leans"] == "incomplete"


def _verdict_row(m, d, grafted, g, verdict, position_, std=0.01):
    return {
        "magnitude": m,
        "direction": d,
        "grafted": grafted,
        "graft_mean": g,
        "magnitude_mean": 1.4,
        "direction_mean": 1.6,
        "position": position_,
        "verdict": verdict,
        "reason": "because",
        **{f"{arm}_std": std for arm in ("graft", "magnitude", "direction")},
        **{f"{arm}_seeds": 3 for arm in ("graft", "magnitude", "direction")},
    }


def test_comparison_reading_says_edges_verdicts_and_what_a_partial_graft_removes():
    sweep = pd.DataFrame(
        {
            "arm": ["adam", "adam", "sgd", "sgd"],
            "lr": [1e-3, 1e-2, 0.1, 1.0],
            "mean": [1.5, 1.4, 1.6, 1.7],
            "std": [0.01] * 4,
            "seeds": 3,
            "best": [False, True, True, False],
            "at_edge": [False, True, False, False],
        }
    )
    verdicts = pd.DataFrame(
        [
            _verdict_row("adam", "sgd", "hidden", 1.45, "magnitude", 0.25),
            _verdict_row("adam", "sgd", "all", 1.5, "cannot tell", 0.5),
            _verdict_row("sgd", "adam", "all", 1.58, "magnitude", 0.1),
        ]
    )
    lines = comparison_reading(sweep, verdicts)
    adam, sgd = lines[0], lines[1]
    assert "lr 0.01" in adam and "edge" in adam and "lr 0.1" in sgd and "edge" not in sgd
    grafts = [line for line in lines if line.startswith("- **adam#sgd**")]
    assert "cannot tell" in grafts[0] and "hidden layers only" in grafts[1]  # full, then partial
    assert "1 are closer to M, 0 closer to D, 1 cannot" in lines[-2]
    assert "holds for every graft that can be judged (1)" in lines[-2]
    partial = lines[-1]
    assert "1.4500 against the full graft's 1.5000 (-0.05; beyond 2 standard errors" in partial
    assert "removes 50% of the full graft's distance from adam" in partial  # 1 - 0.25/0.5
    noisy = pd.DataFrame(
        [
            _verdict_row("adam", "sgd", "all", 1.5, "cannot tell", 0.5, std=0.3),
            _verdict_row("adam", "sgd", "hidden", 1.45, "magnitude", 0.25, std=0.3),
        ]
    )
    partial = comparison_reading(sweep, noisy)[-1]  # M, D within 2 se: no position, "within"
    assert "within 2 standard errors" in partial and "cannot be told apart" in partial
    assert "removes" not in partial


def test_comparison_reading_cannot_judge_when_every_verdict_is_cannot_tell():
    sweep = pd.DataFrame(
        {
            "arm": ["a", "b"],
            "lr": [1.0, 1.0],
            "mean": [1.0, 1.0],
            "std": [0.1, 0.1],
            "seeds": 2,
            "best": True,
            "at_edge": True,
        }
    )
    verdicts = pd.DataFrame(
        [
            _verdict_row("a", "b", "all", 1.0, "cannot tell", 0.5),
            _verdict_row("b", "a", "all", 1.0, "cannot tell", 0.5),
        ]
    )
    assert "cannot be judged here" in comparison_reading(sweep, verdicts)[-1]
