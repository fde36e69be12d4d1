"""A stored tuned comparison on the Grid page: its search as a heatmap per optimizer and the
line saying how far it trained (issue 26, item 6); every number the engine's."""

import time
import types

import numpy as np
import pytest

from grafting_core.lab.experiments.compare import compare, read_comparison
from grafting_core.lab.experiments.comparison_plan import SweepPlan, plan_comparison
from grafting_core.lab.experiments.pace import PLAN_SLACK, comparison_pace
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store import run_store
from tests.helpers import PAIR, SEARCH_TINY, chart_traces, page, page_figures

pytestmark = pytest.mark.app_store  # the page reads the store the test writes

SEARCH = SweepPlan(points=2, factor=10, extensions=0, warmups=(0.1, 0.4), rung=0.5)
BASE = RunConfig(**SEARCH_TINY)  # 15 steps, warm-up + cosine


@pytest.fixture
def searched(store):
    """A tuned sgd/adam comparison (one seed) that searched lr × warm-up, halved at 50%."""
    return compare(store, BASE, PAIR, seeds=(0,), plan=SEARCH).group


def heatmap_of(at) -> tuple[dict, list[dict]]:
    """The search heatmap's figure (its layout) and its traces, arrays decoded."""
    (index,) = [
        i
        for i, f in enumerate(page_figures(at))
        if f["layout"].get("title", {}).get("text", "").startswith("Mean final validation loss")
    ]
    return page_figures(at)[index], chart_traces(at, index)


def test_the_search_heatmap_shows_each_settings_mean_and_fate(store, searched):
    at = page("pages/grid.py", group=searched)
    assert not at.exception
    sweep = read_comparison(store, searched).sweep
    figure, traces = heatmap_of(at)
    assert figure["layout"]["title"]["text"] == (
        "Mean final validation loss on seed 0, per lr × warm-up (lower is better)"
    )
    values = [t for t in traces if t["name"] == "mean"]
    assert len(values) == 2  # a heatmap per optimizer
    for trace, arm in zip(values, ("sgd", "adam")):
        cells = sweep[sweep["arm"] == arm]
        lrs, warmups = sorted(cells["lr"].unique()), sorted(cells["warmup"].unique())
        assert trace["x"] == pytest.approx(np.log10(lrs).tolist())
        z = np.array(trace["z"], dtype=float)
        for cell in cells.itertuples():
            value = z[warmups.index(cell.warmup), lrs.index(cell.lr)]
            if cell.pruned or not np.isfinite(cell.mean):
                assert np.isnan(value)  # no colour: its fate is written instead
            else:
                assert value == pytest.approx(cell.mean)
    texts = [a["text"] for a in figure["layout"]["annotations"]]
    pruned = sweep["pruned"].gt(0) & sweep["failed"].eq(0)
    assert pruned.sum() == 4  # per arm and warm-up, one of the two lrs stopped at the rung
    assert texts.count("pruned") == pruned.sum()
    assert sum(t.endswith("<br>best") for t in texts) == 2  # each arm's tuned setting
    assert len(figure["layout"]["shapes"]) == 2
    titles = [f["layout"].get("title", {}).get("text", "") for f in page_figures(at)]
    assert {"sgd's sweep", "adam's sweep"} <= set(titles)  # the curves, in an expander
    assert at.expander[0].label == "Each optimizer's search as curves (mean ± std)"
    steps = SEARCH.warmup_steps(BASE)  # the y ticks: each warm-up as a share of the steps
    assert figure["layout"]["yaxis"]["ticktext"] == [f"{100 * w / BASE.steps:.3g}%" for w in steps]


def test_a_finished_comparison_says_what_it_trained_and_a_training_one_its_time_left(
    store, searched, monkeypatch
):
    pace = comparison_pace(store, searched)
    runs = store.runs(group=searched)
    assert pace.state == "finished"
    assert pace.done == pytest.approx(runs["last_step"].sum() / BASE.steps)
    low, high = plan_comparison(BASE, PAIR, seeds=(0,), plan=SEARCH).budget
    assert pace.planned == (low, high)
    # the plan counts a pruned setting as rung x steps; it trains round(rung x steps) = 8 of 15
    assert low * (1 - PLAN_SLACK) <= pace.done <= high * (1 + PLAN_SLACK)
    at = page("pages/grid.py", group=searched)
    assert not at.exception
    captions = [c.value for c in at.caption]
    assert pace.text in captions
    assert pace.text.startswith(f"Finished: {pace.done:.1f} run-equivalents trained in ")

    # a run of the group training again (say, by the CLI): the line gives the time left
    rerun = runs.iloc[0]
    config = store.run(rerun["run_id"])["config"]
    run_id = store.create_run(
        {**config, "seed": 7}, group=searched, kind="compare", arm=("tuned", "sgd", "", "")
    )
    later = time.time() + 60  # its 5 steps took a minute: a pace to measure, whatever the
    with monkeypatch.context() as patch:  # speed of this machine
        patch.setattr(run_store, "time", types.SimpleNamespace(time=lambda: later))
        store.heartbeat(run_id, step=5)
    try:
        at = page("pages/grid.py", group=searched)
        assert not at.exception
        line = comparison_pace(store, searched).text
        # the plan is trained already: no time left at any pace, the extra run counted
        assert line == (
            f"Under a minute left ({pace.done + 5 / BASE.steps:.1f} of {low:.1f} "
            "run-equivalents trained)."
        )
        assert line in [c.value for c in at.caption]
    finally:
        store.set_status(run_id, "stopped", step=5)
