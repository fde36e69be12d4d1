"""The search heatmap (``figures.search``): each optimizer's lr × warm-up cells, read back
from the figure built on a hand-made ``Comparison.sweep`` frame."""

import numpy as np
import pandas as pd
import pytest

from grafting_core.lab.figures.search import cell_fate, search_heatmap

STEPS = 400
LRS = {"sgd": [0.001, 0.01, 0.1], "adam": [1e-4, 1e-3, 1e-2]}
WARMUPS = [20, 120]  # 5% and 30% of the steps


def row(arm, lr, warmup, mean, **fate):
    return {
        "arm": arm,
        "lr": lr,
        "warmup": warmup,
        "seeds": 0 if not np.isfinite(mean) else 1,
        "failed": 0,
        "pending": 0,
        "pruned": 0,
        "mean": mean,
        "std": np.nan,
        "best": False,
        "at_edge": False,
        "warmup_at_edge": False,
    } | fate


def sweep_frame() -> pd.DataFrame:
    """sgd: lr 0.001 pruned at both warm-ups, 0.1 diverged at 30%; adam: 1e-2 at 30% still
    training. Means: 2 - lr's index / 2 (+ 0.1 at the long warm-up)."""
    rows = []
    for arm, lrs in LRS.items():
        for warmup in WARMUPS:
            for k, lr in enumerate(lrs):
                rows.append(row(arm, lr, warmup, 2.0 - k / 2 + (0.1 if warmup == 120 else 0)))
    frame = pd.DataFrame(rows)
    sgd, adam = frame["arm"].eq("sgd"), frame["arm"].eq("adam")
    frame.loc[sgd & frame["lr"].eq(0.001), ["mean", "seeds", "pruned"]] = [np.nan, 0, 1]
    diverged = sgd & frame["lr"].eq(0.1) & frame["warmup"].eq(120)
    frame.loc[diverged, ["mean", "seeds", "failed"]] = [np.inf, 0, 1]
    training = adam & frame["lr"].eq(1e-2) & frame["warmup"].eq(120)
    frame.loc[training, ["mean", "seeds", "pending"]] = [np.nan, 0, 1]
    frame.loc[sgd & frame["lr"].eq(0.1) & frame["warmup"].eq(20), "best"] = True
    best_adam = adam & frame["lr"].eq(1e-2) & frame["warmup"].eq(20)
    frame.loc[best_adam, ["best", "at_edge", "warmup_at_edge"]] = True
    return frame


def cell_texts(fig, axis: str) -> dict[tuple[float, int], str]:
    """The text written in each cell of the subplot on x axis ``axis`` ("x", "x2"), by
    (log10 lr, warm-up row)."""
    return {
        (round(a.x, 6), int(a.y)): a.text
        for a in fig.layout.annotations
        if a.xref == axis and a.yref == axis.replace("x", "y")
    }


def test_each_optimizer_has_its_values_in_their_lr_and_warm_up_cells():
    sweep = sweep_frame()
    fig = search_heatmap(sweep, steps=STEPS, z_title="final validation loss", title="Search")
    values = [t for t in fig.data if t.name == "mean"]
    assert [t.xaxis for t in values] == ["x", "x2"]  # one subplot per optimizer, in order
    for trace, arm in zip(values, LRS):
        assert list(trace.x) == pytest.approx(np.log10(LRS[arm]))
        assert list(trace.y) == [0, 1]  # the warm-ups, shortest first
        expected = np.full((2, 3), np.nan)
        for r in sweep[sweep["arm"] == arm].itertuples():
            if cell_fate(pd.Series(r._asdict())) == "value":
                expected[WARMUPS.index(r.warmup), LRS[arm].index(r.lr)] = r.mean
        np.testing.assert_allclose(np.asarray(trace.z, dtype=float), expected)
        assert trace.coloraxis == "coloraxis"  # one colour scale for every optimizer
    finite = sweep["mean"][np.isfinite(sweep["mean"])]
    assert fig.layout.coloraxis.cmin == finite.min() and fig.layout.coloraxis.cmax == finite.max()
    assert fig.layout.coloraxis.colorbar.title.text == "final validation loss"
    assert fig.layout.title.text == "Search"


def test_the_axes_read_lr_on_a_log_scale_and_warm_up_as_a_share_of_the_steps():
    fig = search_heatmap(sweep_frame(), steps=STEPS, z_title="loss")
    assert list(fig.layout.xaxis.ticktext) == ["0.001", "0.01", "0.1"]
    assert list(fig.layout.xaxis.tickvals) == pytest.approx([-3, -2, -1])
    assert list(fig.layout.xaxis2.ticktext) == ["0.0001", "0.001", "0.01"]
    assert list(fig.layout.yaxis.ticktext) == ["5%", "30%"]
    assert fig.layout.xaxis.title.text == "learning rate (log scale)"
    assert fig.layout.yaxis.title.text == "warm-up (% of the 400 steps)"
    assert not fig.layout.yaxis2.title.text  # said once, on the left


def test_cells_without_a_value_say_why_on_their_own_background():
    fig = search_heatmap(sweep_frame(), steps=STEPS, z_title="loss")
    sgd, adam = cell_texts(fig, "x"), cell_texts(fig, "x2")
    assert sgd[(-3, 0)] == sgd[(-3, 1)] == "pruned"
    assert sgd[(-1, 1)] == "diverged /<br>failed"
    assert adam[(-2, 1)] == "training…"
    assert sgd[(-2, 0)] == "1.5" and sgd[(-2, 1)] == "1.6"  # values, 3 digits
    fates = [t for t in fig.data if t.name == "no value"]
    codes = np.asarray(fates[0].z, dtype=float)  # pruned 0, training 1, diverged 2
    np.testing.assert_array_equal(codes[:, 0], [0, 0])
    assert codes[1, 2] == 2 and np.isnan(codes[0, 1:]).all()
    assert np.asarray(fates[1].z, dtype=float)[1, 2] == 1
    assert all(t.showscale is False for t in fates)


def test_the_best_setting_is_framed_and_an_edge_said_in_the_title():
    fig = search_heatmap(sweep_frame(), steps=STEPS, z_title="loss")
    assert cell_texts(fig, "x")[(-1, 0)] == "<b>1</b><br>best"
    assert cell_texts(fig, "x2")[(-2, 0)] == "<b>1</b><br>best"
    frames = [(s.xref, s.x0, s.x1, s.y0, s.y1) for s in fig.layout.shapes]
    assert frames == [
        ("x", pytest.approx(-1.5), pytest.approx(-0.5), -0.5, 0.5),
        ("x2", pytest.approx(-2.5), pytest.approx(-1.5), -0.5, 0.5),
    ]
    titles = [a.text for a in fig.layout.annotations if a.xref == "paper"]
    assert titles[0] == "<b>sgd</b>: best lr 0.1, warm-up 5%"
    assert titles[1].startswith("<b>adam</b>: best lr 0.01, warm-up 5%<br>")
    assert titles[1].endswith("at the edge of the lr tried</span>")  # of 2 warm-ups, either
    three = pd.concat([sweep_frame(), pd.DataFrame([row("adam", 1e-2, 300, 1.2)])])
    fig = search_heatmap(three, steps=STEPS, z_title="loss")
    titles = [a.text for a in fig.layout.annotations if a.xref == "paper"]
    assert titles[1].endswith("at the edge of the lr and warm-up tried</span>")


def test_a_search_still_training_frames_no_best():
    fig = search_heatmap(sweep_frame(), steps=STEPS, z_title="loss", settled={"sgd"})
    assert [s.xref for s in fig.layout.shapes] == ["x"]
    assert cell_texts(fig, "x2")[(-2, 0)] == "1"


def test_a_search_of_the_lr_alone_is_one_row():
    frame = pd.DataFrame([row("sgd", lr, 40, 1.0 + lr) for lr in LRS["sgd"]])
    frame.loc[0, "best"] = True
    fig = search_heatmap(frame, steps=STEPS, z_title="loss")
    (values,) = [t for t in fig.data if t.name == "mean"]
    assert np.asarray(values.z, dtype=float).shape == (1, 3)
    assert list(fig.layout.yaxis.ticktext) == ["10%"]
    titles = [a.text for a in fig.layout.annotations if a.xref == "paper"]
    assert titles == ["<b>sgd</b>: best lr 0.001"]  # no warm-up to name


def test_an_empty_sweep_says_nothing_has_trained():
    fig = search_heatmap(pd.DataFrame(columns=list(row("a", 1, 0, 1.0))), steps=10, z_title="x")
    assert not fig.data
    assert fig.layout.annotations[0].text == "no setting of the search has trained yet"


def test_more_optimizers_than_fit_a_row_wrap():
    frame = pd.DataFrame([row(arm, 0.01, 0, 1.0) for arm in "abcd"])
    fig = search_heatmap(frame, steps=10, z_title="loss")
    values = [t for t in fig.data if t.name == "mean"]
    assert [t.xaxis for t in values] == ["x", "x2", "x3", "x4"]
    assert fig.layout.yaxis4.domain[1] < fig.layout.yaxis.domain[0]  # a second row


def test_the_optimizers_come_in_the_order_asked():
    fig = search_heatmap(sweep_frame(), steps=STEPS, z_title="loss", arms=["adam", "sgd"])
    assert list(fig.layout.xaxis.ticktext) == ["0.0001", "0.001", "0.01"]  # adam's lrs first
    assert [a.text for a in fig.layout.annotations if a.xref == "paper"][0].startswith(
        "<b>adam</b>"
    )
