"""What the teaching pages say is computed from what they show, and the 2-D presets named
"magnitude decides" / "direction decides" really do show that (checked from the paths'
losses with a formula written out here, not with the page's reading)."""

from __future__ import annotations

import math

import pytest
import torch

from grafting_core.lab.figures import runs as run_figures
from grafting_core.lab.figures.toy2d import reading
from grafting_core.lab.tasks.toy2d import PRESETS, Path, grafted_paths, make_problem

LAB_HPARAMS = {  # the app's defaults (ui.forms.lab_hparams) for the optimizers used here
    "sgd": {"momentum": 0.9},
    "adam": {},
    "sign_sgd": {},
}


def preset_paths(name: str):
    preset = PRESETS[name]
    m, d = preset["optimizers"]["magnitude"], preset["optimizers"]["direction"]
    spec = {k: (k, {**LAB_HPARAMS[k], "lr": preset["suggested_lr"][k]}) for k in (m, d)}
    return grafted_paths(make_problem(name), spec[m], spec[d], steps=preset["steps"])


def end(path) -> float:
    """log10 of the median loss over the last 10% of the steps."""
    tail = path.losses[-round(0.1 * (len(path.losses) - 1)) :]
    return math.log10(float(tail.median()))


def position(graft: float, magnitude: float, direction: float) -> float:
    return (graft - magnitude) / (direction - magnitude)


def test_the_magnitude_decides_preset_shows_both_grafts_following_their_magnitude():
    paths = preset_paths("magnitude_decides")
    e = {k: end(p) for k, p in paths.items()}
    assert abs(e["M"] - e["D"]) > 2  # M and D end decades apart: the picture can tell
    assert abs(position(e["M#D"], e["M"], e["D"])) < 0.25
    assert abs(position(e["D#M"], e["D"], e["M"])) < 0.25
    text = " ".join(reading(paths))
    assert "Both grafts follow their magnitude" in text and "like adam, its magnitude" in text


def test_the_direction_decides_preset_shows_both_grafts_following_their_direction():
    paths = preset_paths("direction_decides")
    e = {k: end(p) for k, p in paths.items()}
    assert abs(e["M"] - e["D"]) > 1
    assert abs(position(e["M#D"], e["M"], e["D"]) - 1) < 0.25
    assert abs(position(e["D#M"], e["D"], e["M"]) - 1) < 0.25
    text = " ".join(reading(paths))
    assert "Both grafts follow their direction" in text and "like adam, its direction" in text


def fake(losses: dict[str, float], steps: int = 20) -> dict[str, Path]:
    """Four paths whose loss falls from 10 to the given end value and stays there."""
    out = {}
    for key, value in losses.items():
        curve = torch.full((steps + 1,), value, dtype=torch.float64)
        curve[0] = 10.0
        out[key] = Path(f"{key} = {key.lower()}", torch.zeros(steps + 1, 2), curve)
    return out


@pytest.mark.parametrize(
    "ends,says",
    [
        ({"M": 1.0, "D": 0.1, "M#D": 3.0, "D#M": 0.1}, "M#D = m#d: **worse than both**"),
        ({"M": 1.0, "D": 0.1, "M#D": 0.02, "D#M": 0.1}, "M#D = m#d: **better than both**"),
        ({"M": 1.0, "D": 0.1, "M#D": 0.9, "D#M": 0.1}, "M#D = m#d: **like m, its magnitude**"),
        ({"M": 1.0, "D": 0.1, "M#D": 0.12, "D#M": 0.1}, "M#D = m#d: **like d, its direction**"),
        ({"M": 1.0, "D": 0.1, "M#D": 0.3, "D#M": 0.1}, "M#D = m#d: **between m and d**"),
        ({"M": 1.0, "D": 0.95, "M#D": 0.5, "D#M": 2.0}, "**Cannot tell**: M and D end level"),
    ],
)
def test_the_2d_reading_uses_the_protocol_words_and_says_when_it_cannot_tell(ends, says):
    lines = reading(fake(ends))
    assert any(says in line for line in lines), lines
    assert f"{ends['M']:.3g}" in lines[0] and f"{ends['M#D']:.3g}" in lines[0]


def test_the_default_picture_no_longer_claims_a_side_when_both_reach_the_bottom():
    paths = grafted_paths(
        make_problem("quadratic"),
        ("adam", {"lr": 0.1}),
        ("sgd", {"lr": 0.02, "momentum": 0.9}),
        steps=100,
    )
    text = " ".join(reading(paths))
    assert "Cannot tell" in text and "magnitude decided" not in text


def test_side_words_are_the_comparison_protocols():
    from grafting_core.lab.experiments import verdict

    labels = getattr(verdict, "LABELS", None)
    if labels is None:
        pytest.skip("verdict.LABELS not there yet")
    assert set(run_figures.SIDE_WORDS) <= set(labels)


def test_graft_side_thresholds():
    side = run_figures.graft_side
    assert side(1.0, 1.0, 1.05, tie=0.1)["side"] == "cannot tell"
    assert side(1.0, 1.0, 2.0, tie=0.1)["side"] == "like M"
    assert side(2.1, 1.0, 2.0, tie=0.1)["side"] == "like D"
    assert side(1.5, 1.0, 2.0, tie=0.1)["side"] == "between"
    assert side(0.5, 1.0, 2.0, tie=0.1)["side"] == "better than both"
    assert side(2.5, 1.0, 2.0, tie=0.1)["side"] == "worse than both"
    assert side(2.5, 2.0, 1.0, tie=0.1)["side"] == "worse than both"
    assert side(float("nan"), 1.0, 2.0, tie=0.1)["side"] == "cannot tell"
