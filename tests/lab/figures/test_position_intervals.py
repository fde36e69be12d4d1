"""The CI figure draws each graft's position, its CI (at its level) and the equivalence margins."""

import math

import pandas as pd
import pytest

from grafting_core.lab.experiments.verdict import label_words
from grafting_core.lab.figures.experiments import position_intervals


def test_each_graft_is_its_position_with_its_ci_and_the_margins_are_shaded():
    verdicts = pd.DataFrame(
        {
            "magnitude": ["sgd", "adam", "sgd"],
            "direction": ["adam", "sgd", "adam"],
            "grafted": ["all", "all", "hidden"],
            "position": [0.58, -0.05, 3.0],
            "ci_low": [0.52, -0.1, -math.inf],
            "ci_high": [0.64, 0.02, math.inf],
            "label": ["between", "like M", "cannot tell"],
            "margin": [0.25] * 3,
        }
    )
    fig = position_intervals(verdicts)
    (trace,) = fig.data
    assert list(trace.x) == pytest.approx([0.58, -0.05, 2.0])  # clipped to the axis
    assert list(trace.error_x.array) == pytest.approx([0.06, 0.07, 0.0])
    assert list(trace.error_x.arrayminus) == pytest.approx([0.06, 0.05, 3.0])
    assert list(trace.y) == [
        f"{name}<br>{label_words(label, m, d)}"
        for name, label, m, d in [
            ("sgd#adam", "between", "sgd", "adam"),
            ("adam#sgd", "like M", "adam", "sgd"),
            ("sgd#adam [hidden only]", "cannot tell", "sgd", "adam"),
        ]
    ]
    bands = sorted((shape.x0, shape.x1) for shape in fig.layout.shapes if shape.type == "rect")
    assert bands == [(-0.25, 0.25), (0.75, 1.25)]


def test_no_verdicts_yet_is_an_empty_figure_with_a_note():
    fig = position_intervals(pd.DataFrame())
    assert not fig.data and "verdicts come" in fig.layout.annotations[0].text


def test_the_verdict_figure_names_each_graft_by_its_judged_verdict():
    """Where the judged label is present (read_comparison's verdicts), the ticks say it, not
    the older z = 2 verdict (the page showed 'closer to M' above a table saying 'cannot tell')."""
    from grafting_core.lab.figures.experiments import verdict_points

    row = {
        f"{arm}_{key}": 1.0
        for arm in ("graft", "magnitude", "direction")
        for key in ("mean", "std")
    }
    row |= {f"{arm}_seeds": 3 for arm in ("graft", "magnitude", "direction")}
    verdicts = pd.DataFrame(
        [{**row, "magnitude": "adam", "direction": "sgd", "grafted": "all",
          "verdict": "magnitude", "label": "cannot tell"}]
    )  # fmt: skip
    ticks = {x for trace in verdict_points(verdicts, y_title="loss").data for x in trace.x}
    assert ticks == {"adam#sgd<br><i>cannot tell</i>"}


def test_the_figure_says_the_level_each_ci_is_at():
    """Holm judges a family's grafts at stricter levels than 95%: the title says the level
    when all share one, the hover says each; no level given means 95%."""
    row = {"magnitude": "sgd", "direction": "adam", "grafted": "all", "position": 0.5}
    row |= {"ci_low": 0.4, "ci_high": 0.6, "label": "between", "margin": 0.25}
    same = pd.DataFrame([row | {"ci_level": 0.975}, row | {"ci_level": 0.975}])
    assert position_intervals(same).layout.title.text.endswith("97.5% CI")
    mixed = pd.DataFrame([row | {"ci_level": 0.975}, row | {"ci_level": 0.95}])
    fig = position_intervals(mixed)
    assert fig.layout.title.text.endswith("(in the hover)")
    assert [c[3] for c in fig.data[0].customdata] == ["97.5%", "95%"]
    assert position_intervals(pd.DataFrame([row])).layout.title.text.endswith("95% CI")
