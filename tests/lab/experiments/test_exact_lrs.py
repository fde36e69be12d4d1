"""Learning rates of a grid are the exact powers (issue 27, item 4): a sweep extended beyond
its edge lands where a wider grid around the same centre would have put it (0.01, not
0.0316 / 3.162 = 0.00999), through the engine functions a comparison plans with."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from grafting_core.lab.experiments.common import beyond_edge
from grafting_core.lab.experiments.compare import _extensions
from grafting_core.lab.experiments.comparison_plan import SweepPlan

HALF_DECADE = math.sqrt(10)


def _sweep(arm: str, lrs: list[float], best: float) -> pd.DataFrame:
    """A sweep table as ``compare`` reads it: one row per lr, ``best`` marked at the edge."""
    return pd.DataFrame(
        {
            "arm": arm,
            "lr": lrs,
            "best": [lr == best for lr in lrs],
            "at_edge": [lr == best and best in (min(lrs), max(lrs)) for lr in lrs],
        }
    )


def test_the_grid_around_0_1_extended_twice_downwards_gives_0_01_and_0_00316():
    plan = SweepPlan(factor=HALF_DECADE, points=3)
    grid = plan.grid(0.1)
    assert grid == [0.0316, 0.1, 0.316]
    tried = list(grid)
    for expected in (0.01, 0.00316):  # the best sits on the low edge each time
        beyond = _extensions(_sweep("sgd", tried, min(tried)), plan)
        assert beyond == {"sgd": expected}
        tried.append(beyond["sgd"])
    up = list(grid)
    for expected in (1.0, 3.16):
        up.append(beyond_edge(max(up), up, plan.factor))
        assert up[-1] == expected


@pytest.mark.parametrize("center", [0.1, 1e-3, 0.05, 3e-4, 0.02, 7e-5, 1.0])
@pytest.mark.parametrize("points", [2, 3, 4, 5])
@pytest.mark.parametrize("factor", [HALF_DECADE, 10.0, 2.0])
def test_extensions_land_on_the_wider_grid(center, points, factor):
    plan = SweepPlan(factor=factor, points=points)
    grid = plan.grid(center)
    low, high = list(grid), list(grid)
    for _ in range(3):
        low.append(beyond_edge(min(low), low, factor))
        high.append(beyond_edge(max(high), high, factor))
    assert sorted(set(low) | set(high)) == SweepPlan(factor=factor, points=points + 6).grid(center)


def test_a_drifted_extension_of_an_old_group_extends_to_the_exact_lr():
    """An old group extended before this fix holds 0.00999 (as the runs' configs store it):
    its next extension is computed from the grid's exact centre (0.1 × √10⁻³ = 0.00316), and
    the drifted runs stay what they are (a continuation reuses them by config)."""
    old = [0.00999, 0.0316, 0.1, 0.316]
    assert beyond_edge(0.00999, old, HALF_DECADE) == 0.00316
    assert beyond_edge(0.999, [0.0316, 0.1, 0.316, 0.999], HALF_DECADE) == 3.16


def test_typed_lrs_off_the_lattice_do_not_move_the_extension():
    assert beyond_edge(0.05, [0.01, 0.0316, 0.05], HALF_DECADE) == 0.158
