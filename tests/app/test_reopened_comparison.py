"""A comparison reopened on the Grid page shows the settings it was made with (issue 27)."""

import pytest

from grafting_core.lab.experiments.compare import compare
from grafting_core.lab.experiments.comparison_plan import SweepPlan
from grafting_core.lab.runs.config import RunConfig
from tests.helpers import COMPARISON_TINY, page

pytestmark = pytest.mark.app_store  # the page reads the store the test writes


def test_a_reopened_comparison_shows_its_own_settings_not_the_forms_defaults(store):
    plan = SweepPlan(points=3, factor=10, extensions=1, warmups=(0.1, 0.4), rung=0.5)
    optimizers = {"sgd": ("sgd", {"lr": 0.05, "momentum": 0.9}), "adam": ("adam", {"lr": 2e-3})}
    base = RunConfig(**{**COMPARISON_TINY, "schedule": "warmup_cosine", "warmup_steps": 3})
    group = compare(store, base, optimizers, seeds=(0, 2), plan=plan).group
    at = page("pages/grid.py", group=group)
    assert not at.exception
    assert at.radio(key="grid.mode").value == "tuned"
    assert at.number_input(key="grid.points").value == 3
    assert at.number_input(key="grid.extensions").value == 1
    assert at.selectbox(key="grid.factor").value == 10.0
    assert at.text_input(key="grid.tuned_seeds").value == "0, 2"
    assert at.text_input(key="grid.warmups").value == "10, 40"
    assert at.text_input(key="grid.tune_seeds").value == ""
    assert at.number_input(key="grid.rung_percent").value == 50
    assert at.number_input(key="grid.steps").value == COMPARISON_TINY["steps"]
    assert at.multiselect(key="grid.optimizers").value == ["sgd", "adam"]
    assert at.number_input(key="grid.lr.sgd").value == 0.05
    assert at.number_input(key="grid.lr.adam").value == 2e-3
    assert at.selectbox(key="grid.dataset").value == "digits"
