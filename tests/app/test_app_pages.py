"""The Grid, Schedule transfer and Static ratios pages through AppTest.

Each page renders on an empty store, trains a tiny experiment started from the page in
the worker processes and shows its result, and refuses bad input without creating runs
(the Grid page in both modes: a grid at fixed lrs, and a tuned comparison).
Pages run standalone (FIELD-NOTES §3); one store and one executor serve the module and
are shut down at its end. Timers never fire in AppTest: ``settle`` calls ``at.run()``
again, a bounded number of times, while the workers train.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from grafting_core.lab.experiments.analysis import static_ratios_from_run
from grafting_core.lab.experiments.compare import (
    LR_COLUMN,
    SweepPlan,
    compare,
    comparison_request,
    read_comparison,
)
from grafting_core.lab.experiments.comparison_plan import plan_comparison
from grafting_core.lab.experiments.comparison_reading import control_text
from grafting_core.lab.experiments.graft_lrs import graft_lr_table
from grafting_core.lab.experiments.ratio_study import (
    static_ratio_table,
    study_reading,
    study_verdicts_text,
    window_of,
)
from grafting_core.lab.experiments.verdict import closer_to_words, label_words
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.groups import TERMINAL
from grafting_core.lab.store.run_store import RunStore
from grafting_core.lab.tasks.data import load_dataset
from grafting_core.lab.tasks.models import build_model
from tests.helpers import (
    STUDY_BASE,
    chart_traces,
    page,
    page_figures,
    tiny_comparison,
    train_inline,
)
from ui.static_ratio_widgets import STUDY_COLUMNS  # the study table's columns, as shown

pytestmark = pytest.mark.app_store  # the pages read the store the tests write

PAGES = ["pages/grid.py", "pages/schedule_transfer.py", "pages/static_ratios.py"]
TINY = {"width": 16, "steps": 40}  # ~40 steps of a width-16 MLP: a second or two per run


def settle(at, store: RunStore, count: int, group: str | None = None, tries: int = 240):
    """Re-run ``at`` until ``count`` runs (of ``group``) have ended; returns their frame."""
    for _ in range(tries):
        runs = store.runs(group=group)
        if len(runs) >= count and runs["status"].isin(TERMINAL).all():
            break
        time.sleep(0.25)
        at.run()
    at.run()
    assert not at.exception
    return store.runs(group=group)


def start_tuned(at, store: RunStore, count: int) -> tuple[str, pd.DataFrame]:
    """Press the tuned form's Start: the comparison's group and, once settled, its runs."""
    at.button(key="grid.tuned.start").click().run()
    assert not at.exception and not at.error
    group = at.query_params["group"]
    return group, settle(at, store, count, group)


def chart_titled(at, start: str) -> int:
    """Index of the page's plotly chart whose title starts with ``start``."""
    titles = [figure["layout"].get("title", {}).get("text", "") for figure in page_figures(at)]
    matches = [i for i, title in enumerate(titles) if title.startswith(start)]
    assert matches, f"no chart titled {start!r} in {titles}"
    return matches[0]


def content_name(ratios) -> str:
    """``static_ratios:<sha256[:12]>`` of the measurement's JSON (sorted keys, no spaces)."""
    data = ratios if isinstance(ratios, dict) else ratios.to_dict()
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return f"static_ratios:{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def final_value(store: RunStore, run_id: str, name: str) -> float:
    """The last recorded value of one metric, read straight from the store."""
    metrics = store.metrics(run_id, names=[name])
    return float(metrics.sort_values("step")["value"].iloc[-1])


@pytest.mark.parametrize("path", PAGES)
def test_page_renders_on_an_empty_store(store, path):
    at = page(path)
    assert not at.exception and not at.error
    assert at.title and len(at.markdown) > 0  # the title and the explanation for a student
    assert any("Start" in info.value for info in at.info)  # says how to begin
    assert any(str(store.root) in caption.value for caption in at.sidebar.caption)
    assert store.runs().empty


# --------------------------------------------------------------------------------- Grid
def test_grid_trains_every_pair_and_fills_the_heatmap(store):
    at = page("pages/grid.py")
    at.multiselect(key="grid.optimizers").set_value(["sgd", "adam"])
    at.number_input(key="grid.width.mlp").set_value(TINY["width"])
    at.number_input(key="grid.steps").set_value(TINY["steps"])
    at.number_input(key="grid.lr.adam").set_value(3e-3)
    at.button(key="grid.start").click().run()
    assert not at.exception and not at.error
    group = at.query_params["group"]
    assert group.startswith("grid-")
    runs = settle(at, store, 4, group)
    assert sorted(runs["name"]) == ["adam#adam", "adam#sgd", "sgd#adam", "sgd#sgd"]
    assert (runs["status"] == "finished").all()
    adam = runs.loc[runs["name"] == "adam#sgd", "config.magnitude_hparams.lr"].iloc[0]
    assert adam == pytest.approx(3e-3)  # the edited lr reached the run

    (heat,) = chart_traces(at, chart_titled(at, "Final validation loss"))
    assert heat["type"] == "heatmap" and list(heat["y"]) == ["sgd", "adam"]
    z = np.asarray(heat["z"], dtype=float)
    by_name = runs.set_index("name")["run_id"]
    for i, m in enumerate(["sgd", "adam"]):
        for j, d in enumerate(["sgd", "adam"]):
            expected = final_value(store, by_name[f"{m}#{d}"], "val_loss")
            assert z[i, j] == pytest.approx(expected)
    reading = next(m.value for m in at.markdown if m.value.startswith("**Reading:**"))
    rows = np.mean([np.ptp(z[0]), np.ptp(z[1])])
    columns = np.mean([np.ptp(z[:, 0]), np.ptp(z[:, 1])])
    verdict = (
        "Rows look alike"
        if rows * 1.5 <= columns
        else "Columns look alike"
        if columns * 1.5 <= rows
        else "Neither"
    )
    assert verdict in reading and f"{rows:.3g}" in reading and f"{columns:.3g}" in reading

    at.selectbox(key="grid.metric").set_value("val_accuracy").run()
    (heat,) = chart_traces(at, chart_titled(at, "Final validation accuracy"))
    assert np.nanmax(np.asarray(heat["z"], dtype=float)) <= 1.0
    assert not at.button(key="grid.start").disabled


@pytest.mark.parametrize(
    "change, reason",
    [
        (("text_input", "grid.seeds", "0, x"), "seeds"),
        (("multiselect", "grid.optimizers", ["adam"]), "at least two optimizers"),
        (("number_input", "grid.lr.sgd", -0.1), "lr"),
        (("number_input", "grid.lr.sgd", 0.0), "lr: 0"),  # what a browser sends for 1e400
        (("number_input", "grid.steps", 0), "steps"),  # no min_value: what is shown is refused
        (("number_input", "grid.batch_size", -64), "batch_size"),
        (("number_input", "grid.batch_size", 10**9), "is more than the"),
    ],
)
def test_grid_refuses_bad_input_and_starts_nothing(store, change, reason):
    kind, key, value = change
    at = page("pages/grid.py")
    getattr(at, kind)(key=key).set_value(value)
    at.button(key="grid.start").click().run()
    assert not at.exception
    assert any("Not started" in e.value and reason in e.value for e in at.error)
    assert store.runs().empty


def tuned_page(
    optimizers=("sgd", "adam"), seeds="0, 1", points=2, steps=TINY["steps"], protocol=False
):
    """The Grid page in its tuned mode with a tiny comparison set up (not started);
    ``protocol``: the page's default search (lr × warm-up, tuning seed, halving), else the lr
    alone on the reporting seeds, every setting to the end (what the counts below assume)."""
    at = page("pages/grid.py")
    at.radio(key="grid.mode").set_value("tuned").run()
    at.multiselect(key="grid.optimizers").set_value(list(optimizers))
    at.number_input(key="grid.width.mlp").set_value(TINY["width"])
    at.number_input(key="grid.steps").set_value(steps)
    at.text_input(key="grid.tuned_seeds").set_value(seeds)
    at.number_input(key="grid.points").set_value(points)
    if not protocol:
        at.text_input(key="grid.warmups").set_value("")
        at.text_input(key="grid.tune_seeds").set_value("")
        at.number_input(key="grid.rung_percent").set_value(0)
        at.checkbox(key="grid.control").uncheck()
    return at.number_input(key="grid.extensions").set_value(0).run()


def table_with(at, column: str) -> pd.DataFrame:
    """The page's table (or dataframe) that has ``column``."""
    tables = [frame.value for frame in [*at.table, *at.dataframe] if column in frame.value]
    assert tables, f"no table with a {column!r} column"
    return tables[0]


def test_tuned_comparison_by_default_searches_lr_and_warm_up_on_a_tuning_seed(store):
    """The page's default is the lab's protocol: its plan (from the engine) counts the runs
    and run-equivalents before Start; each sweep figure draws a line per warm-up."""
    at = tuned_page(seeds="0, 1", points=2, protocol=True)
    shown = [c.value for c in at.caption]
    at.button(key="grid.tuned.start").click().run()
    assert not at.exception and not at.error
    group = at.query_params["group"]
    request = comparison_request(store, group)
    assert request["plan"] == SweepPlan(
        points=2,
        extensions=0,
        warmups=(0.05, 0.3),
        tune_seeds=(10_000, 10_001),
        rung=0.5,
        control=True,
        back_off=True,
    )
    planned = plan_comparison(**request)  # the engine's plan of what the page started
    assert any(text.startswith(planned.text()[:-1]) for text in shown), shown
    assert "run-equivalents" in planned.text()
    runs = settle(at, store, planned.fewest, group)
    assert set(runs.loc[runs["role"] == "sweep_point", "config.seed"]) == {10_000, 10_001}
    assert set(runs.loc[runs["role"] == "tuned", "config.seed"]) == {0, 1}
    result = read_comparison(store, group)
    said = [x.value for x in (*at.success, *at.warning)]
    assert control_text(result.controls) in said  # both controls, said first
    assert list(result.controls["control"]) == ["positive", "negative"]
    for arm in ("sgd", "adam"):
        traces = chart_traces(at, chart_titled(at, f"{arm}'s sweep"))
        lines = [t for t in traces if t["name"].startswith("warm-up")]
        assert sorted(t["name"] for t in lines) == sorted(
            f"warm-up {w} steps, ± std"
            for w in result.sweep.loc[result.sweep["arm"] == arm, "warmup"].unique()
        )


def test_tuned_comparison_sweeps_grafts_and_shows_the_verdicts_with_their_spread(store):
    at = tuned_page()
    assert any(
        c.value.startswith(
            "2 optimizers × 2 lrs × 2 seeds = 8 sweep runs, then 2 grafts × 2 seeds: 12 runs"
        )
        for c in at.caption
    )
    at.button(key="grid.tuned.start").click().run()
    assert not at.exception and not at.error
    group = at.query_params["group"]
    assert group.startswith("compare-")
    for arm in ("sgd", "adam"):  # drawn from the first rerun on, while the sweeps train
        chart_titled(at, f"{arm}'s sweep")
    runs = settle(at, store, 12, group)
    assert (runs["status"] == "finished").all()
    assert (runs["config.schedule"] == "warmup_cosine").all()  # the default: 10% warm-up
    assert (runs["config.warmup_steps"] == TINY["steps"] // 10).all()
    assert sorted(runs["role"].value_counts().items()) == [
        ("graft", 4),
        ("sweep_point", 4),
        ("tuned", 4),
    ]
    result = read_comparison(store, group)

    for arm in ("sgd", "adam"):  # each sweep figure draws the sweep table's means and stds
        sweep = result.sweep[result.sweep["arm"] == arm].sort_values("lr")
        assert sorted(sweep["lr"]) == pytest.approx(
            sorted(
                runs.loc[
                    runs["magnitude_arm"].eq(arm) & runs["role"].ne("graft"),
                    "config.magnitude_hparams.lr",
                ].unique()
            )
        )
        means, best = chart_traces(at, chart_titled(at, f"{arm}'s sweep"))
        assert list(means["x"]) == pytest.approx(sweep["lr"].tolist())
        assert list(means["y"]) == pytest.approx(sweep["mean"].tolist())
        assert list(means["error_y"]["array"]) == pytest.approx(sweep["std"].tolist())
        assert list(best["x"]) == pytest.approx(sweep.loc[sweep["best"], "lr"].tolist())

    table = table_with(at, "verdict").set_index("pair")
    verdicts = result.verdicts.assign(
        pair=result.verdicts["magnitude"] + "#" + result.verdicts["direction"]
    ).set_index("pair")
    assert sorted(table.index) == ["adam#sgd", "sgd#adam"]
    for column, source in (
        ("M#D mean", "graft_mean"),
        ("M#D std", "graft_std"),
        ("M mean", "magnitude_mean"),
        ("M std", "magnitude_std"),
        ("D mean", "direction_mean"),
        ("D std", "direction_std"),
    ):
        assert table[column].to_dict() == pytest.approx(verdicts[source].to_dict())
    bounded = verdicts["ci_low"] > -math.inf  # no position where M and D cannot be told apart
    assert table["position"].to_dict() == pytest.approx(
        verdicts["position"].where(bounded).to_dict(), nan_ok=True
    )
    levels = {f"{100 * level:.3g}%" for level in verdicts["ci_level"]}
    positions = chart_titled(at, "Where each graft lands")
    title = page_figures(at)[positions]["layout"]["title"]["text"]
    assert title.endswith(f"{levels.pop()} CI" if len(levels) == 1 else "(in the hover)")
    for pair, row in verdicts.iterrows():  # the paired, Holm-corrected judgment
        m, d = pair.split("#")
        assert table.loc[pair, "verdict"] == label_words(row["label"], m, d)
        level = f"{100 * row['ci_level']:.3g}%"
        assert table.loc[pair, "CI"] == f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}] at {level}"
        assert table.loc[pair, "reason"] == row["judgment"]
    # the verdict figure: M, M#D and D per pair, means with their stds as error bars
    figure = chart_traces(at, chart_titled(at, "Tuned M, M#D and tuned D"))
    for trace, arm in zip(figure, ("magnitude", "graft", "direction")):
        assert list(trace["y"]) == pytest.approx(result.verdicts[f"{arm}_mean"].tolist())
        assert list(trace["error_y"]["array"]) == pytest.approx(
            result.verdicts[f"{arm}_std"].tolist()
        )
    assert any("M's tuned lr" in c.value and "D's lr cancels" in c.value for c in at.caption)
    assert not at.button(key="grid.tuned.start").disabled  # done: the next one may start

    again = page("pages/grid.py", group=group)  # a reloaded tab re-attaches, in tuned mode
    assert again.radio(key="grid.mode").value == "tuned"
    assert table_with(again, "verdict").equals(table_with(at, "verdict"))


def test_a_finished_comparison_continues_with_more_seeds_from_the_page(store):
    """Continue trains only the new seed's runs, in the same group, with the stored
    settings: the verdicts equal those of the comparison made with both seeds in one go."""
    at = tuned_page(seeds="0")
    group, first = start_tuned(at, store, 6)
    seeds = at.text_input(key=f"grid.tuned.more_seeds.{group}.0")
    assert seeds.value == "0, 1, 2"  # two more by default
    seeds.set_value("0").run()
    assert at.button(key="grid.tuned.continue").disabled  # nothing new to train
    many = ", ".join(map(str, range(40)))
    at.text_input(key=f"grid.tuned.more_seeds.{group}.0").set_value(many).run()
    assert at.button(key="grid.tuned.continue").disabled  # too many: the CLI command to use
    command = f"python -m grafting_core compare --group {group} --seeds " + " ".join(
        map(str, range(40))
    )
    (caption,) = [c.value for c in at.caption if command in c.value]
    # 40 seeds × (2 optimizers × 2 lrs + 2 grafts) = 240 runs, less seed 0's 4 sweep runs
    assert caption.startswith("With these seeds the comparison trains up to 236 new runs")
    at.text_input(key=f"grid.tuned.more_seeds.{group}.0").set_value("0, 1").run()
    assert any("trains at least 6 new runs" in c.value for c in at.caption)
    at.button(key="grid.tuned.continue").click().run()
    assert not at.exception and not at.error
    assert at.query_params["group"] == group
    runs = settle(at, store, 12, group)
    assert set(first["run_id"]) < set(runs["run_id"])  # kept, not trained again
    assert sorted(set(runs["config.seed"])) == [0, 1]
    request = comparison_request(store, group)
    assert request["seeds"] == (0, 1)
    fresh = compare(store, **request)  # both seeds in one go, inline, in a new group
    shown = table_with(at, "verdict").set_index("pair")
    for pair, row in (
        fresh.verdicts.assign(pair=fresh.verdicts["magnitude"] + "#" + fresh.verdicts["direction"])
        .set_index("pair")
        .iterrows()
    ):
        assert shown.loc[pair, "M#D mean"] == pytest.approx(row["graft_mean"])
        assert shown.loc[pair, "M#D std"] == pytest.approx(row["graft_std"])
        assert shown.loc[pair, "seeds"] == row["graft_seeds"] == 2


def test_a_tuned_comparison_can_tune_each_grafts_lr_too(store):
    at = tuned_page(seeds="0, 1, 2, 3, 4, 5", points=5)
    at.checkbox(key="grid.tune_grafts").check().run()  # too many for the page: said at once
    assert any(c.value.startswith("Up to 120 runs is more than this page") for c in at.caption)
    at = tuned_page(seeds="0")
    at.checkbox(key="grid.tune_grafts").check().run()
    assert any(
        c.value.startswith(
            "2 optimizers × 2 lrs × 1 seed = 4 sweep runs, then 2 grafts × 1 seed, then each "
            "graft's lrs: 10 runs"
        )
        for c in at.caption
    )
    group, runs = start_tuned(at, store, 10)
    assert sorted(runs["role"].value_counts().items()) == [
        ("graft", 2),
        ("graft_lr", 4),
        ("sweep_point", 2),
        ("tuned", 2),
    ]
    assert comparison_request(store, group)["tune_grafts"] is True
    (bar,) = at.get("progress")
    assert bar.proto.text == (
        "Sweeps: 4 of 4 runs done; grafts at M's tuned lr: 2 of 2 done; "
        "grafts at other lrs of M: 4 of 4 done"
    )
    for m, d in (("sgd", "adam"), ("adam", "sgd")):
        chart_titled(at, f"{m}#{d} at each lr of {m}")
    tuned = read_comparison(store, group).tuned_grafts
    assert len(tuned) == 2 and set(tuned["magnitude"]) == {"sgd", "adam"}


def test_a_tuned_comparison_from_the_page_adds_partial_grafts_per_pair(store):
    """Two partial grafts per pair: the second choice appears once the first has kinds (a
    third once the second has), and each one trains per pair, stored with the group."""
    at = tuned_page(seeds="0")
    assert [m.key for m in at.multiselect if m.key.startswith("grid.partial")] == ["grid.partial"]
    at.multiselect(key="grid.partial").set_value(["hidden"]).run()
    at.multiselect(key="grid.partial.2").set_value(["bias", "hidden"]).run()
    assert [m.key for m in at.multiselect if m.key.startswith("grid.partial")] == [
        "grid.partial",
        "grid.partial.2",
        "grid.partial.3",
    ]
    assert any(
        c.value.startswith(
            "2 optimizers × 2 lrs × 1 seed = 4 sweep runs, then 6 grafts (whole and partial) "
            "× 1 seed: 10 runs"
        )
        for c in at.caption
    )
    group, runs = start_tuned(at, store, 10)
    partial = runs[runs["role"] == "partial_graft"]
    assert sorted(zip(partial["magnitude_arm"], partial["config.grafted"])) == [
        ("adam", '["bias", "hidden"]'),  # stored as JSON
        ("adam", '["hidden"]'),
        ("sgd", '["bias", "hidden"]'),
        ("sgd", '["hidden"]'),
    ]
    assert comparison_request(store, group)["partial"] == [("hidden",), ("bias", "hidden")]
    shown = table_with(at, "verdict")
    assert sorted(shown["pair"]) == [
        "adam#sgd",
        "adam#sgd [bias+hidden only]",
        "adam#sgd [hidden only]",
        "sgd#adam",
        "sgd#adam [bias+hidden only]",
        "sgd#adam [hidden only]",
    ]


def test_a_comparisons_grafts_train_at_other_lrs_of_m_from_the_page(store):
    """The form trains sgd#adam again at another lr of SGD in the comparison's group; the
    page's table and figure show graft_lr_table's values; bad input starts nothing."""
    at = tuned_page(seeds="0, 1")
    group, first = start_tuned(at, store, 12)
    tuned_sgd = first.loc[
        first["role"].eq("tuned") & first["magnitude_arm"].eq("sgd"), LR_COLUMN
    ].iloc[0]
    at.selectbox(key="grid.graft_lrs.pair").set_value(("sgd", "adam")).run()
    lrs = at.text_input(key=f"grid.graft_lrs.lrs.{group}.sgd#adam")
    assert lrs.value == f"{tuned_sgd * 10**0.5:.3g}, {tuned_sgd * 10:.3g}"
    for text, variants, reason in (("-1", [""], "lrs"), ("0.2", [], "choose at least one")):
        at.text_input(key=f"grid.graft_lrs.lrs.{group}.sgd#adam").set_value(text)
        at.multiselect(key=f"grid.graft_lrs.variants.{group}.sgd#adam").set_value(variants)
        at.button(key="grid.graft_lrs.start").click().run()
        assert any("Not started" in e.value and reason in e.value for e in at.error)
        assert len(store.runs(group=group)) == len(first)
    at.text_input(key=f"grid.graft_lrs.lrs.{group}.sgd#adam").set_value(f"{tuned_sgd:g}, 0.2")
    at.multiselect(key=f"grid.graft_lrs.variants.{group}.sgd#adam").set_value([""])
    at.button(key="grid.graft_lrs.start").click().run()
    assert not at.exception and not at.error
    typed = f"grid.graft_lrs.lrs.{group}.sgd#adam"  # kept while the runs train (a form
    assert at.text_input(key=typed).value == f"{tuned_sgd:g}, 0.2"  # hidden lost it)
    runs = settle(at, store, len(first) + 2, group)
    assert at.text_input(key=typed).value == f"{tuned_sgd:g}, 0.2"
    # a run of the comparison live (owned by this process): the form stays, its button off
    config = store.run(first["run_id"].iloc[0])["config"]
    live_run = store.create_run(
        config, group=group, kind="compare", arm=("graft_lr", "sgd", "", "")
    )
    at.run()
    assert at.button(key="grid.graft_lrs.start").disabled
    assert at.text_input(key=typed).value == f"{tuned_sgd:g}, 0.2"
    store.delete_run(live_run)
    at.run()
    assert not at.button(key="grid.graft_lrs.start").disabled
    new = runs[~runs["run_id"].isin(first["run_id"])]
    assert (new["role"] == "graft_lr").all() and sorted(new[LR_COLUMN]) == [0.2, 0.2]
    ended = new[["status", "error", "last_step"]].to_dict("records")
    assert new["status"].isin(["finished", "diverged"]).all(), ended  # none left to resume
    expected = graft_lr_table(store, group, magnitude="sgd", direction="adam")
    assert sorted(expected["lr"]) == sorted([tuned_sgd, 0.2])
    shown = table_with(at, "tuned_lr")
    assert list(shown["lr"]) == list(expected["lr"])
    for column in ("seeds", "mean", "std", "position"):
        assert list(shown[column]) == pytest.approx(list(expected[column]), nan_ok=True)
    assert list(shown["verdict"]) == [
        closer_to_words(v, "sgd", "adam") for v in expected["verdict"]
    ]
    at.button(key="grid.graft_lrs.start").click().run()  # the same lrs again
    assert any("Nothing new to train" in info.value for info in at.info), (
        [i.value for i in at.info],
        [e.value for e in at.error],
        at.exception,
        store.runs(group=group)[["role", LR_COLUMN, "config.seed", "status", "name"]]
        .to_string()
        .splitlines(),
    )
    assert len(store.runs(group=group)) == len(runs)
    (bar,) = at.get("progress")  # the added runs count apart from the sweeps and grafts
    assert bar.proto.text == (
        "Sweeps: 8 of 8 runs done; grafts at M's tuned lr: 4 of 4 done; "
        "grafts at other lrs of M: 2 of 2 done"
    )
    line = chart_traces(at, chart_titled(at, "sgd#adam at each lr of sgd"))[0]
    finished = expected[expected["mean"].notna()]
    assert list(line["x"]) == pytest.approx(list(finished["lr"]))
    assert list(line["y"]) == pytest.approx(list(finished["mean"]))


def test_a_comparisons_partial_grafts_are_named_apart_in_its_verdicts(store):
    """A comparison made with --partial (the CLI's): each graft's row and point on the page
    carries its layer kinds, and its numbers are the verdicts' own."""
    result = compare(
        store,
        RunConfig(**STUDY_BASE),
        {"sgd": ("sgd", {"lr": 1e-2, "momentum": 0.9}), "adam": ("adam", {"lr": 3e-3})},
        seeds=(0,),
        plan=SweepPlan(points=2, factor=10, extensions=0),
        partial=[["hidden"]],
    )
    at = page("pages/grid.py", group=result.group)
    assert not at.exception
    shown = table_with(at, "verdict").set_index("pair")
    assert sorted(shown.index) == [
        "adam#sgd",
        "adam#sgd [hidden only]",
        "sgd#adam",
        "sgd#adam [hidden only]",
    ]
    for _, row in result.verdicts.iterrows():
        name = row["magnitude"] + "#" + row["direction"]
        name += "" if row["grafted"] == "all" else f" [{row['grafted']} only]"
        assert shown.loc[name, "M#D mean"] == pytest.approx(row["graft_mean"])
    points = chart_traces(at, chart_titled(at, "Tuned M, M#D and tuned D"))[1]["x"]
    assert sorted(x.split("<br>")[0] for x in points) == sorted(shown.index)


def test_a_comparison_made_before_settings_were_kept_says_how_to_continue(store):
    at = tuned_page(seeds="0")
    group, _ = start_tuned(at, store, 6)
    store._write(lambda conn: conn.execute("DELETE FROM groups"))  # as an older version left it
    at.run()
    assert "grid.tuned.continue" not in [button.key for button in at.button]
    assert any(f"compare --group {group}" in c.value for c in at.caption)


def test_stopping_a_tuned_comparison_stops_its_runs_and_starts_no_grafts(store):
    from ui.resources import orchestrating

    at = tuned_page(steps=100_000)
    at.button(key="grid.tuned.start").click().run()
    group = at.query_params["group"]
    for _ in range(120):  # wait until a run trains, so Stop meets running and queued ones
        if (store.runs(group=group)["last_step"].fillna(0) > 0).any():
            break
        time.sleep(0.25)
    at.button(key="grid.tuned.stop").click().run()
    for _ in range(120):
        if not orchestrating(group):
            break
        time.sleep(0.25)
    runs = settle(at, store, 8, group)
    assert not orchestrating(group)
    assert len(runs) == 8 and (runs["status"] == "stopped").all()
    assert set(runs["role"]) == {"sweep_point"}  # no phase started after Stop, none tuned
    assert any("ended before its grafts" in info.value for info in at.info)
    assert not at.button(key="grid.tuned.start").disabled


@pytest.mark.parametrize(
    "change, reason",
    [
        (("text_input", "grid.tuned_seeds", "0, 0"), "seeds"),
        (("multiselect", "grid.optimizers", ["adam"]), "at least two optimizers"),
        (("number_input", "grid.lr.sgd", -0.1), "lr"),
        (("number_input", "grid.steps", 0), "steps"),
        (("multiselect", "grid.partial", ["embedding"]), "the model has no such layers"),
        (("multiselect", "grid.partial.2", ["bias"]), "asked for twice"),
    ],
)
def test_tuned_comparison_refuses_bad_input_and_starts_nothing(store, change, reason):
    kind, key, value = change
    at = tuned_page()
    if key == "grid.partial.2":  # shown once the first partial graft has kinds
        at.multiselect(key="grid.partial").set_value(["bias"]).run()
    getattr(at, kind)(key=key).set_value(value)
    at.button(key="grid.tuned.start").click().run()
    assert not at.exception
    assert any("Not started" in e.value and reason in e.value for e in at.error)
    assert "group" not in at.query_params
    assert store.runs().empty


# -------------------------------------------------------------------- Schedule transfer
def test_schedule_transfer_replays_m_after_it_finishes(store):
    at = page("pages/schedule_transfer.py")
    at.number_input(key="transfer.width.mlp").set_value(TINY["width"])
    at.number_input(key="transfer.steps").set_value(TINY["steps"])
    at.button(key="transfer.start").click().run()
    assert not at.exception and not at.error
    group = at.query_params["group"]
    runs = settle(at, store, 4, group)
    assert (runs["status"] == "finished").all()
    by_name = runs.set_index("name")
    m_alone = by_name.loc["adam#adam", "run_id"]
    replay = by_name.loc["replay(adam)#sgd", "run_id"]
    assert store.run(replay)["config"]["replay"] == f"run:{m_alone}"
    recorded = store.layer_norms(m_alone, fields=["magnitude_norm"])
    replayed = store.layer_norms(replay, fields=["magnitude_norm"])
    assert recorded["step"].nunique() == TINY["steps"]  # it waited for M's whole schedule
    assert replayed["value"].to_numpy() == pytest.approx(recorded["value"].to_numpy())

    loss = chart_traces(at, chart_titled(at, "Training loss"))
    assert [t["name"] for t in loss] == [
        "adam (M alone)",
        "sgd (D alone)",
        "adam#sgd",
        "replay(adam)#sgd",
    ]
    assert all(len(t["x"]) == TINY["steps"] for t in loss)
    schedule = chart_traces(at, chart_titled(at, "adam (M alone): step size"))
    layers = store.layer_norm_names(m_alone)[0]
    assert {t["name"] for t in schedule} == set(layers)  # every layer, ‖Δ‖ and ‖Δ‖/‖g‖
    norms = store.layer_norms(m_alone, fields=["step_norm", "grad_norm"], layers=[layers[0]])
    wide = norms.pivot(index="step", columns="field", values="value")
    first = [t for t in schedule if t["name"] == layers[0]]
    assert np.asarray(first[0]["y"], float) == pytest.approx(wide["step_norm"].to_numpy())
    assert np.asarray(first[1]["y"], float) == pytest.approx(
        (wide["step_norm"] / wide["grad_norm"]).to_numpy()
    )
    check = [t["name"] for t in chart_traces(at, chart_titled(at, f"Layer {layers[0]}"))]
    assert "replay(adam)#sgd ‖Δ_M‖" in check and "adam (M alone) ‖Δ‖" in check


def test_schedule_transfer_from_a_saved_run_starts_the_replay_at_once(store):
    saved = train_inline(store, name="saved-adam", magnitude="adam", **TINY)
    at = page("pages/schedule_transfer.py")
    at.radio(key="transfer.source_mode").set_value("Use a saved run").run()
    assert not at.exception
    assert at.selectbox(key="transfer.saved_run").value == saved
    chart_titled(at, "saved-adam (saved run): step size")  # its schedule, before Start
    at.button(key="transfer.start").click().run()
    group = at.query_params["group"]
    runs = settle(at, store, 3, group)
    assert sorted(runs["name"]) == ["adam#sgd", "replay(adam)#sgd", "sgd#sgd"]
    assert (runs["status"] == "finished").all()
    replay = runs.loc[runs["name"] == "replay(adam)#sgd", "run_id"].iloc[0]
    assert store.run(replay)["config"]["replay"] == f"run:{saved}"
    names = [t["name"] for t in chart_traces(at, chart_titled(at, "Training loss"))]
    assert names[0] == "saved-adam (saved run)" and len(names) == 4


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("transfer.direction.sgd.lr", -1.0, "lr"),
        ("transfer.direction.sgd.lr", 0.0, "lr: 0"),
        ("transfer.batch_size", 0, "batch_size"),
    ],
)
def test_schedule_transfer_refuses_bad_input_and_starts_nothing(store, key, value, reason):
    at = page("pages/schedule_transfer.py")
    at.number_input(key=key).set_value(value)
    at.button(key="transfer.start").click().run()
    assert not at.exception
    assert any("Not started" in e.value and reason in e.value for e in at.error)
    assert store.runs().empty


# ------------------------------------------------------------------------ Static ratios
def test_static_ratios_measures_exports_and_compares_memory(store, tmp_path, monkeypatch):
    at = page("pages/static_ratios.py")
    at.number_input(key="ratios.width.mlp").set_value(TINY["width"])
    at.number_input(key="ratios.source_steps").set_value(TINY["steps"])
    at.button(key="ratios.start_source").click().run()
    assert not at.exception and not at.error
    source = at.query_params["source"]
    settle(at, store, 1)
    assert store.run(source)["status"] == "finished"

    at.slider(key="ratios.window").set_value((10, 30)).run()
    ratio_chart = chart_traces(at, chart_titled(at, "‖Δ_M‖/‖Δ_D‖ per layer"))
    layers = store.layer_norm_names(source)[0]
    assert [t["name"] for t in ratio_chart if not t["name"].endswith("static value")] == layers
    table = at.dataframe[0].value.set_index("layer")
    norms = store.layer_norms(source, fields=["magnitude_norm", "direction_norm"])
    wide = norms.pivot_table(
        index=["step", "layer"], columns="field", values="value", observed=True
    ).reset_index()
    window = wide[(wide["step"] >= 10) & (wide["step"] < 30)]
    for layer in layers:  # each multiplier is the median ratio over steps 10..29
        rows = window[window["layer"] == layer]
        median = float(np.median(rows["magnitude_norm"] / rows["direction_norm"]))
        assert table.loc[layer, "multiplier c"] == pytest.approx(median, rel=1e-5)
    assert at.get("download_button")[0].proto.label == "Download multipliers (JSON)"
    snippet = at.code[0].value
    assert (
        'torch.optim.SGD(\n    StaticRatios.load("ratios.json").param_groups('
        "model.named_parameters()),\n    momentum=0.9)"
    ) in snippet
    monkeypatch.chdir(tmp_path)  # the snippet runs as shown, on the file the button gives
    static_ratios_from_run(store, source, window=(10, 30)).save("ratios.json")
    model = build_model("mlp", load_dataset("mnist1d"), width=TINY["width"])
    scope = {"model": model}
    exec(snippet, scope)
    lrs = {g["param_names"][0]: g["lr"] for g in scope["optimizer"].param_groups}
    assert lrs["fc1.weight"] == pytest.approx(0.1 * table.loc["fc1.weight", "multiplier c"])

    at.number_input(key="ratios.steps").set_value(TINY["steps"])
    at.text_input(key="ratios.lrs").set_value("0.1")
    at.button(key="ratios.start").click().run()
    assert not at.exception and not at.error
    group = at.query_params["group"]
    runs = settle(at, store, 3, group)
    assert sorted(runs["name"]) == ["adam#adam", "sgd(lr=0.1)", "sgd+ratios(adam)"]
    assert (runs["status"] == "finished").all()
    used = runs.loc[runs["name"] == "sgd+ratios(adam)", "config.static_ratios"].iloc[0]
    measured = static_ratios_from_run(store, source, window=(10, 30)).to_dict()
    name = content_name(measured)
    assert used == f"run:{source}:{name}"  # the run refers to the measurement by its content
    assert store.get_artifact(source, name) == measured
    assert store.get_artifact(source, name)["info"]["window"] == [10, 30]

    bars = {
        t["name"]: float(np.asarray(t["y"], float)[0])
        for t in chart_traces(at, chart_titled(at, "Optimizer state memory"))
        if t["type"] == "bar"
    }
    assert set(bars) == {"sgd+ratios(adam)", "adam (M alone)", "sgd(lr=0.1)"}
    assert bars["adam (M alone)"] == pytest.approx(2 * bars["sgd+ratios(adam)"])  # m, v vs m
    assert bars["sgd(lr=0.1)"] == pytest.approx(bars["sgd+ratios(adam)"])


@pytest.mark.parametrize(
    "change, reason",
    [
        (("text_input", "ratios.lrs", "0.1, abc"), "learning rates"),
        (("slider", "ratios.window", (5, 5)), "window"),
        (("number_input", "ratios.steps", 0), "steps"),
    ],
)
def test_static_ratios_refuses_bad_input_and_starts_nothing(store, change, reason):
    saved = train_inline(
        store,
        name="adam#sgd",
        magnitude="adam",
        direction="sgd",
        direction_hparams={"lr": 0.1, "momentum": 0.9},
        **TINY,
    )
    at = page("pages/static_ratios.py")
    at.radio(key="ratios.source_mode").set_value("Use a saved M#D run").run()
    assert at.selectbox(key="ratios.saved_run").value == saved
    kind, key, value = change
    getattr(at, kind)(key=key).set_value(value)
    at.button(key="ratios.start").click().run()
    assert not at.exception
    assert any("Not started" in e.value and reason in e.value for e in at.error)
    assert list(store.runs()["run_id"]) == [saved]


def study_page(group: str, windows: list[str]):
    """The Static ratios page with the study of ``group``'s adam#sgd set up (not started)."""
    at = page("pages/static_ratios.py")
    assert at.selectbox(key="ratios.study.group").value == group  # the newest comparison
    at.selectbox(key="ratios.study.magnitude").set_value("adam")
    at.selectbox(key="ratios.study.direction").set_value("sgd")
    return at.multiselect(key="ratios.study.windows").set_value(windows).run()


def test_static_ratio_study_trains_into_the_comparison_and_shows_its_table(store):
    from ui import live

    group = tiny_comparison(store)
    before = store.runs(group=group)
    (source,) = before.loc[
        before["role"].eq("graft") & before["magnitude_arm"].eq("adam"), "run_id"
    ]
    at = study_page(group, ["whole"])
    assert "study" not in at.query_params  # the URL links a study once one is started
    assert at.multiselect(key="ratios.study.scopes").value == ["per_layer", "global"]
    at.button(key="ratios.study.start").click().run()
    assert not at.exception and not at.error
    assert at.query_params["study"] == group
    runs = settle(at, store, len(before) + 2, group)
    new = runs[~runs["run_id"].isin(before["run_id"])]
    assert (new["role"] == "static_ratios").all() and (new["status"] == "finished").all()
    assert (new["magnitude_arm"] == "sgd").all() and (new["config.direction"] == "").all()
    whole = window_of("whole", RunConfig.from_dict(store.run(source)["config"]))
    expected_refs = {  # each run refers to its measurement by content (sha256 of its JSON)
        f"whole,{scope}": f"run:{source}:{content_name(measured)}"
        for scope in ("global", "per_layer")
        for measured in [
            static_ratios_from_run(store, source, window=whole, per_layer=scope == "per_layer")
        ]
    }
    assert dict(zip(new["arm_variant"], new["config.static_ratios"])) == expected_refs

    expected = static_ratio_table(store, group, magnitude="adam", direction="sgd")
    assert sorted(expected["arm"]) == [
        "adam",
        "sgd",
        "sgd+ratios[whole,global]",
        "sgd+ratios[whole,per_layer]",
    ]
    shown = table_with(at, "gap_closed")
    assert list(shown.columns) == STUDY_COLUMNS
    for column in STUDY_COLUMNS:
        if column in ("arm", "window", "scope"):
            assert list(shown[column]) == list(expected[column])
        else:
            assert list(shown[column]) == pytest.approx(list(expected[column]), nan_ok=True)

    index = chart_titled(at, "Static ratios from adam#sgd")
    traces = {trace["name"]: trace for trace in chart_traces(at, index)}
    assert set(traces) == {
        "adam (tuned), mean ± std",
        "sgd (tuned), mean ± std",
        "static ratios, mean ± std",
    }
    static = expected[expected["role"] == "static_ratios"]
    points = dict(
        zip(traces["static ratios, mean ± std"]["x"], traces["static ratios, mean ± std"]["y"])
    )
    assert points == pytest.approx(
        dict(zip(static["window"] + "<br>" + static["scope"], static["mean"]))
    )
    lines = [
        shape["y0"]
        for shape in page_figures(at)[index]["layout"]["shapes"]
        if shape["type"] == "line"
    ]
    tuned = expected[expected["role"] == "tuned"]["mean"]
    assert sorted(lines) == pytest.approx(sorted(tuned))

    reading = next(m.value for m in at.markdown if m.value.startswith("**Reading:**"))
    assert reading == "**Reading:** " + live.literal(study_reading(expected, "adam", "sgd"))
    means = expected.set_index("arm")["mean"]
    if means["adam"] < means["sgd"]:  # a gap to close: the arm that closed the most of it
        best = static.loc[static["gap_closed"].idxmax()]
        assert live.literal(best["arm"]) in reading and f"{best['gap_closed']:.0%}" in reading
    else:
        assert "no gap" in reading and f"{means['sgd']:.4g}" in reading

    # the verdicts: each arm judged between tuned sgd and tuned adam, drawn and tabled
    verdicts = next(m.value for m in at.markdown if m.value.startswith("**Verdicts:**"))
    assert verdicts == "**Verdicts:** " + live.literal(study_verdicts_text(expected, "adam", "sgd"))
    judged = table_with(at, "ci_level")
    assert list(judged["arm"]) == list(static["arm"])
    assert list(judged["verdict"]) == list(static["verdict"])
    assert list(judged["position"]) == pytest.approx(list(static["position"]), nan_ok=True)
    index = chart_titled(at, "Each arm between tuned sgd (0) and tuned adam (1)")
    (trace,) = [t for t in chart_traces(at, index) if t.get("mode") == "markers"]
    assert [y.split("<br>")[0] for y in trace["y"]] == list(static["arm"])

    at.button(key="ratios.study.start").click().run()  # the same choices again
    assert not at.exception and not at.error
    assert any("Nothing new to train" in info.value for info in at.info), (
        [i.value for i in at.info],
        [e.value for e in at.error],
        at.exception,
        store.runs(group=group)[["role", LR_COLUMN, "config.seed", "status", "name"]]
        .to_string()
        .splitlines(),
    )
    assert len(store.runs(group=group)) == len(runs)

    again = page("pages/static_ratios.py", study=group, study_m="adam", study_d="sgd")
    assert table_with(again, "gap_closed").equals(shown)  # a reloaded tab re-attaches


class HeldJobs:
    """Jobs that queue runs and never start them, as on a busy machine: Stop cancels them."""

    max_workers = 2  # the sidebar says how many train at a time

    def __init__(self) -> None:
        self.queued: list[tuple[str, bool]] = []

    def submit(self, run_id: str, *, resume: bool = False) -> None:
        self.queued.append((run_id, resume))

    def cancel(self, run_id: str) -> bool:
        return True


def test_static_ratio_study_shows_progress_stops_and_resumes(store, monkeypatch):
    import ui.resources

    group = tiny_comparison(store)
    before = len(store.runs(group=group))
    held, workers = HeldJobs(), ui.resources.get_jobs
    monkeypatch.setattr(ui.resources, "get_jobs", lambda: held)
    at = study_page(group, ["whole"])
    at.button(key="ratios.study.start").click().run()
    assert not at.exception and not at.error
    runs = store.runs(group=group)
    study = runs.loc[runs["role"] == "static_ratios", "run_id"].tolist()
    assert len(study) == 2 and sorted(held.queued) == sorted((r, False) for r in study)
    (bar,) = at.get("progress")  # while they wait: one bar for the study, Start disabled
    assert bar.proto.text == "0 of 2 runs done, 2 running or queued"
    assert at.button(key="ratios.study.start").disabled
    assert not at.button(key="ratios.study.stop").disabled

    at.button(key="ratios.study.stop").click().run()
    runs = store.runs(group=group)
    assert (runs.set_index("run_id").loc[study, "status"] == "stopped").all()
    assert not at.get("progress") and not at.button(key="ratios.study.start").disabled
    shown = table_with(at, "gap_closed")  # the stopped runs count for nothing
    assert not shown["arm"].str.contains("ratios").any()

    monkeypatch.setattr(ui.resources, "get_jobs", workers)  # Start resumes the stopped runs
    at.button(key="ratios.study.start").click().run()
    for _ in range(240):  # "stopped" until a worker takes them up: settle would not wait
        if store.runs(group=group).set_index("run_id").loc[study, "status"].eq("finished").all():
            break
        time.sleep(0.25)
    runs = settle(at, store, before + 2, group)
    assert len(runs) == before + 2
    assert (runs.set_index("run_id").loc[study, "status"] == "finished").all()
    shown = table_with(at, "gap_closed")
    assert sorted(shown.loc[shown["arm"].str.contains("ratios"), "seeds"]) == [1, 1]


def test_static_ratio_study_refuses_bad_input_and_starts_nothing(store):
    at = page("pages/static_ratios.py")
    assert any("Grid" in info.value and "tuned" in info.value for info in at.info)
    group = tiny_comparison(store)
    count = len(store.runs())
    at = study_page(group, [])
    at.button(key="ratios.study.start").click().run()
    assert any("Not started" in e.value and "window" in e.value for e in at.error)
    at.multiselect(key="ratios.study.windows").set_value(["early"])
    at.multiselect(key="ratios.study.scopes").set_value([]).run()
    at.button(key="ratios.study.start").click().run()
    assert any("Not started" in e.value and "scope" in e.value for e in at.error)
    at.multiselect(key="ratios.study.scopes").set_value(["global"])
    at.selectbox(key="ratios.study.direction").set_value("adam").run()  # no adam#adam graft
    at.button(key="ratios.study.start").click().run()
    assert not at.exception
    assert any("Not started" in e.value and "adam#adam" in e.value for e in at.error)
    assert len(store.runs()) == count
    assert not any(
        "static_ratios" in name for r in store.runs()["run_id"] for name in store.artifact_names(r)
    )


def test_live_pages_poll_every_second_unless_a_redraw_costs_too_much(monkeypatch):
    from ui import live

    state = {}
    monkeypatch.setattr(live.st, "session_state", state)  # (no script context here)
    runs = pd.DataFrame({"run_id": ["a", "b"]})
    state["p.redraw_seconds"] = [(0.3, 0.3), (0.3, 2.0), (0.4, 0.4)]  # (CPU, wall) seconds
    assert live.refresh_every(runs, True, "p") == 1.0  # every second
    state["p.redraw_seconds"] = [(4.0, 4.0)]  # one slow redraw (a session's first)
    assert live.refresh_every(runs, True, "p") == 1.0
    state["p.redraw_seconds"] = [(0.8, 0.8), (3.0, 3.0), (0.9, 0.9)]  # the least of the last three
    assert live.refresh_every(runs, True, "p") == 2.0  # at most half the time busy
    state["p.redraw_seconds"] = [(30.0, 30.0)] * 3
    assert live.refresh_every(runs, True, "p") == live.INTERVALS[-1]  # never slower than 10 s
    assert live.refresh_every(runs, False, "p") is None  # nothing live: polling off
    # timed() measures CPU (thread) and wall seconds; a clock that moves only when told keeps
    # this independent of the machine's speed (speed lives in bench/).
    clock = {"cpu": 0.0, "wall": 0.0}
    monkeypatch.setattr(
        live,
        "time",
        SimpleNamespace(thread_time=lambda: clock["cpu"], perf_counter=lambda: clock["wall"]),
    )
    for _ in range(4):
        with live.timed("q"):  # a redraw that computes for 0.05 s
            clock["cpu"] += 0.05
            clock["wall"] += 0.05
    assert len(state["q.redraw_seconds"]) == 3  # the last three
    assert live.redraw_cost("q") == pytest.approx(0.05) and live.redraw_wait("q") == 0.0
    for _ in range(3):
        with live.timed("q"):  # one that waits (for the CPU, say): it costs nothing
            clock["wall"] += 0.2
    assert live.redraw_cost("q") == 0.0 and live.redraw_wait("q") == pytest.approx(0.2)
    assert live.refresh_every(runs, True, "q") == 1.0  # a redraw that waited: still every second


def test_live_metric_polls_read_only_new_rows_and_miss_none(tmp_path, monkeypatch):
    from ui import live

    store = RunStore(tmp_path)
    run_id = store.create_run({"steps": 200}, name="r", kind="lab")
    monkeypatch.setattr(live.st, "session_state", {"p.metric_cache": {}})
    monkeypatch.setattr(live, "get_store", lambda: store)
    reads = []
    full_read = store.metrics
    monkeypatch.setattr(store, "metrics", lambda *a, **k: reads.append(k) or full_read(*a, **k))

    def poll(status="running"):
        runs = pd.DataFrame({"run_id": [run_id], "status": [status]})
        got = live.poll_metrics(runs, "p.metric_cache").sort_values(["step", "name"])
        want = full_read(run_id).sort_values(["step", "name"])
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))

    # A trainer writes each metric in step order, but not all metrics in step order: an
    # evaluation at step 99 lands before the flush that holds the losses of steps 80-120.
    store.log_metrics_many(run_id, [(s, "train_loss", 1.0 / (s + 1)) for s in range(80)])
    poll()
    store.log_metrics_many(run_id, [(99, "val_loss", 0.5), (99, "val_accuracy", 0.8)])
    poll()
    store.log_metrics_many(run_id, [(s, "train_loss", 1.0 / (s + 1)) for s in range(80, 121)])
    poll()
    assert reads[1:] == [{"since_step": 78}, {"since_step": 78}]  # only the recent steps
    store.log_metrics_many(run_id, [(199, "optimizer_state_bytes", 64.0)])
    poll(status="finished")  # an ended run is read whole once more ...
    poll(status="finished")  # ... and then never again
    assert reads[-1] == {} and len(reads) == 4
    store.close()
