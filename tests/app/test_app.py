"""The Streamlit app through AppTest: pages render, Graft lab trains live, Runs manages runs.

Pages run standalone (``AppTest.from_file("pages/x.py")``, FIELD-NOTES §3), each drawing
the shared sidebar itself. One run store and one executor (worker processes) serve the
whole module; each test starts from an empty store. Timers never fire in AppTest, so a
test waits for background runs by calling ``at.run()`` again, a bounded number of times.
"""

from __future__ import annotations

import io
import json
import time

import pandas as pd
import pytest

from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run
from tests.helpers import APP_TINY as TINY
from tests.helpers import chart_traces, page, train_inline

pytestmark = pytest.mark.app_store  # the pages read the store the tests write

PAGES = ["app.py", "pages/graft_lab.py", "pages/runs.py"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_on_an_empty_store(store, path):
    at = page(path)
    assert not at.exception
    assert at.title  # every page has its title ...
    assert any("Start" in info.value for info in at.info)  # ... and says how to begin
    assert any(str(store.root) in caption.value for caption in at.sidebar.caption)


def test_graft_lab_trains_side_by_side_and_shows_results(store):
    at = page("pages/graft_lab.py")
    at.number_input(key="lab.width.mlp").set_value(16)
    at.number_input(key="lab.steps").set_value(60)
    at.checkbox(key="lab.reverse").uncheck()
    at.button(key="lab.start").click().run()
    assert not at.exception and not at.error
    group = at.query_params["group"]
    assert group.startswith("lab-")
    assert any(c.value.startswith("Live: redrawn every 1 s") for c in at.caption)  # says so
    for _ in range(120):  # the workers may still be loading torch and the data
        runs = store.runs(group=group)
        if len(runs) == 3 and runs["status"].isin(["finished"]).all():
            break
        time.sleep(0.5)
        at.run()
    at.run()
    assert not at.exception
    assert sorted(store.runs(group=group)["name"]) == ["adam", "adam#sgd", "sgd"]
    assert all("finished" in bar.proto.text for bar in at.get("progress"))
    loss = chart_traces(at, 0)
    assert [trace["name"] for trace in loss] == ["adam", "sgd", "adam#sgd"]
    assert all(len(trace["x"]) == 60 for trace in loss)  # one point per step
    norms = [trace["name"] for trace in chart_traces(at, 2)]
    assert "adam#sgd ‖Δ_M‖" in norms and "adam#sgd ratio" in norms
    assert chart_traces(at, 3)[0]["type"] == "heatmap"
    assert at.button(key="lab.stop").disabled and not at.button(key="lab.start").disabled
    assert not any(c.value.startswith("Live:") for c in at.caption)  # no longer redrawing

    again = page("pages/graft_lab.py", group=group)  # a reloaded tab re-attaches
    assert not again.exception
    assert len(chart_traces(again, 0)) == 3


def test_stop_ends_every_run_of_the_group_cleanly(store):
    at = page("pages/graft_lab.py")
    at.number_input(key="lab.width.mlp").set_value(16)
    at.number_input(key="lab.steps").set_value(100_000)
    at.button(key="lab.start").click().run()
    group = at.query_params["group"]
    for _ in range(120):  # wait until one run trains, so Stop meets a running and queued ones
        if (store.runs(group=group)["last_step"].fillna(0) > 0).any():
            break
        time.sleep(0.25)
    at.button(key="lab.stop").click().run()
    for _ in range(120):
        if store.runs(group=group)["status"].eq("stopped").all():
            break
        time.sleep(0.25)
    at.run()
    runs = store.runs(group=group)
    assert len(runs) == 4 and runs["status"].eq("stopped").all()
    assert (runs["last_step"] < 100_000).all()
    assert not at.exception and at.button(key="lab.stop").disabled


def test_two_tabs_pressing_start_together_each_start_their_own_runs(store):
    tabs = [page("pages/graft_lab.py") for _ in range(2)]  # both drawn before either starts
    for at, steps in zip(tabs, (100_000, 30)):
        at.number_input(key="lab.width.mlp").set_value(16)
        at.number_input(key="lab.steps").set_value(steps)
        at.checkbox(key="lab.reverse").uncheck()
    first = tabs[0].button(key="lab.start").click().run()
    second = tabs[1].button(key="lab.start").click().run()  # finds the first's runs training
    groups = [first.query_params.get("group"), second.query_params.get("group")]
    assert not second.error and groups[1] and groups[0] != groups[1]
    runs = store.runs()
    assert sorted(runs.groupby("group").size()) == [3, 3]
    assert (store.runs(group=groups[1])["config.steps"] == 30).all()  # the second tab's inputs
    assert first.button(key="lab.start").disabled  # a tab's own runs in progress: Start waits
    first.button(key="lab.stop").click().run()
    for _ in range(240):
        if store.runs(group=groups[0])["status"].eq("stopped").all():
            break
        time.sleep(0.25)
    assert store.runs(group=groups[0])["status"].eq("stopped").all()


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("lab.magnitude.adam.lr", -1.0, "lr"),
        ("lab.direction.sgd.momentum", 1.5, "momentum"),
        ("lab.steps", 0, "Invalid steps: 0"),
        ("lab.batch_size", -64, "Invalid batch_size: -64"),
        ("lab.width.mlp", -5, "Invalid width: -5"),
        ("lab.width.mlp", 0, "Invalid width: 0"),
        ("lab.batch_size", 10**12, "Invalid batch_size: 1000000000000 is more than the"),
        ("lab.magnitude.adam.lr", 0.0, "Invalid magnitude lr: 0"),
    ],
)
def test_invalid_hyperparameters_are_refused_and_start_nothing(store, key, value, reason):
    at = page("pages/graft_lab.py")
    # a min_value would make a browser show the bad value in red but never send it, and Start
    # would train the previous value: the page must get what is shown, and refuse it
    assert at.number_input(key=key).min is None
    at.number_input(key=key).set_value(value)
    at.button(key="lab.start").click().run()
    assert not at.exception
    assert any("Not started" in e.value and reason in e.value for e in at.error)
    assert store.runs().empty


def test_graft_lab_shows_diverged_and_failed_runs(store):
    diverged = train_inline(
        store, group="lab-test", magnitude="sgd", magnitude_hparams={"lr": 1e6}, steps=40
    )
    failed = create_run(store, RunConfig(**TINY), kind="lab", group="lab-test")
    store.set_status(failed, "failed", error="RuntimeError: out of memory (test)")
    at = page("pages/graft_lab.py", group="lab-test")
    assert not at.exception
    step = store.run(diverged)["last_step"]
    assert store.run(diverged)["status"] == "diverged"
    assert any(f"diverged at step {step}" in w.value for w in at.warning)
    assert any("out of memory (test)" in e.value for e in at.error)


def test_runs_page_lists_shows_config_exports_and_deletes(store):
    first = train_inline(store, name="first-run", magnitude="adam")
    second = train_inline(store, name="second-run", magnitude="sgd", direction="adam")
    at = page("pages/runs.py")
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["run"]) == {first, second}
    assert set(table["name"]) == {"first-run", "second-run"}
    assert set(table["direction"]) == {"—", "adam"}

    at.text_input(key="runs.search").set_value("second").run()  # filter
    assert list(at.dataframe[0].value["run"]) == [second]
    at.text_input(key="runs.search").set_value("").run()

    at.selectbox(key="runs.detail").set_value(second).run()  # config
    shown = json.loads(at.json[0].value)
    assert shown["magnitude"] == "sgd" and shown["direction"] == "adam"

    at.multiselect(key="runs.compare").set_value([first, second]).run()  # overlay
    assert [t["name"] for t in chart_traces(at, 0)] == ["first-run", "second-run"]  # oldest first
    assert at.download_button(key="runs.csv").label == "Metrics (CSV)"

    at.button(key="runs.delete").click().run()  # delete asks first ...
    assert store.run(second)["status"] == "finished"
    assert any("cannot be undone" in w.value for w in at.warning)
    at.button(key="runs.cancel_delete").click().run()
    assert second in set(store.runs()["run_id"])
    at.button(key="runs.delete").click().run()
    at.button(key="runs.confirm_delete").click().run()  # ... then deletes
    assert not at.exception
    assert set(store.runs()["run_id"]) == {first}
    assert list(at.dataframe[0].value["run"]) == [first]


def test_metrics_csv_export_has_every_recorded_value(store, runs_dir):
    from ui.catalog import metrics_csv

    run_ids = [train_inline(store, name=f"r{i}", seed=i) for i in range(2)]
    csv = pd.read_csv(io.StringIO(metrics_csv(store, run_ids)))
    assert list(csv.columns) == ["run_id", "run_name", "step", "metric", "value"]
    expected = store.metrics(run_ids)
    assert len(csv) == len(expected)
    merged = csv.merge(
        expected, left_on=["run_id", "step", "metric"], right_on=["run_id", "step", "name"]
    )
    assert len(merged) == len(expected)
    assert (merged["value_x"] - merged["value_y"]).abs().max() < 1e-9
    assert set(csv["run_name"]) == {"r0", "r1"}
    assert (csv.query("metric == 'train_loss'").groupby("run_id").size() == TINY["steps"]).all()


def test_run_labels_tell_runs_of_one_name_apart_by_seed():
    from ui.catalog import legend_labels, run_labels

    runs = pd.DataFrame(
        {
            "run_id": ["20261130-1-aaaa", "20261130-1-bbbb", "20261130-1-cccc", "x-dddd"],
            "name": ["sgd#adam", "sgd#adam", "sgd#adam", "adam"],
            "status": ["finished", "finished", "diverged", "finished"],
            "config.seed": [0, 1, 1, 0],
        }
    )
    assert run_labels(runs)["20261130-1-aaaa"] == "sgd#adam · seed 0 · finished · 20261130-1-aaaa"
    assert legend_labels(runs) == {
        "20261130-1-aaaa": "sgd#adam · seed 0",
        "20261130-1-bbbb": "sgd#adam · seed 1 · bbbb",  # name and seed repeat: the id too
        "20261130-1-cccc": "sgd#adam · seed 1 · cccc",
        "x-dddd": "adam",
    }
    assert run_labels(runs.drop(columns="config.seed"))["x-dddd"] == "adam · finished · x-dddd"


def test_a_run_name_is_shown_as_typed_never_as_markdown(store):
    name = "[click](http://evil.example) **loud**"
    train_inline(store, name=name)
    at = page("pages/runs.py")
    assert not at.exception
    shown = [m.value for m in at.markdown if "click" in m.value]
    assert shown and all("[click](" not in text and "**loud**" not in text for text in shown)
    # escaped, and a word joiner (U+2060) before "http": no autolink either (ui.live.literal)
    assert any(
        "\\[click\\](\u2060http\\://evil.example) \\*\\*loud\\*\\*" in text for text in shown
    )


def test_graft_lab_reading_is_computed_from_the_runs_on_screen(store):
    ids = {
        "M": train_inline(store, group="lab-read", name="adam", magnitude="adam"),
        "D": train_inline(store, group="lab-read", name="sgd", magnitude="sgd"),
        "M#D": train_inline(
            store, group="lab-read", name="adam#sgd", magnitude="adam", direction="sgd"
        ),
    }
    at = page("pages/graft_lab.py", group="lab-read")
    assert not at.exception
    text = next(m.value for m in at.markdown if "Computed from these runs" in m.value)
    metrics = store.metrics(list(ids.values()))
    final = {
        role: float(
            metrics[(metrics["run_id"] == r) & (metrics["name"] == "val_loss")]
            .sort_values("step")["value"]
            .iloc[-1]
        )
        for role, r in ids.items()
    }
    for value in final.values():
        assert f"{value:.4g}" in text  # every number it reads is the runs' own
    m, d, g = final["M"], final["D"], final["M#D"]
    tie = 0.02 * (m + d) / 2
    if abs(d - m) <= tie:
        assert "cannot tell" in text
    else:
        pos = (g - m) / (d - m)
        expected = (
            "like adam"
            if abs(pos) < 0.25
            else "like sgd"
            if abs(pos - 1) < 0.25
            else "between"
            if 0.25 <= pos <= 0.75
            else "better than both"
            if g < min(m, d)
            else "worse than both"
        )
        assert expected in text, (final, text)
    assert "closer to M" not in text and "magnitude decided" not in text


def test_a_new_tab_offers_the_pages_recent_groups_newest_first(store):
    train_inline(store, group="lab-20260101-000000-aaaa", name="older")
    train_inline(store, group="lab-20260102-000000-bbbb", name="newer")
    train_inline(store, group="grid-20260103-000000-cccc", name="a grid run")
    at = page("pages/graft_lab.py")
    assert not at.exception
    offered = [b.key for b in at.button if b.key and b.key.startswith("lab.recent.")]
    assert offered == ["lab.recent.lab-20260102-000000-bbbb", "lab.recent.lab-20260101-000000-aaaa"]
    at.button(key="lab.recent.lab-20260101-000000-aaaa").click().run()
    assert not at.exception
    assert at.query_params["group"] == "lab-20260101-000000-aaaa"
    assert [t["name"] for t in chart_traces(at, 0)] == ["older"]


def test_runs_page_links_each_run_to_the_page_that_made_it(store):
    train_inline(store, group="lab-20260101-000000-aaaa", name="lab run")
    train_inline(store, group="transfer-20260101-000000-dddd", name="transfer run")
    table = page("pages/runs.py").dataframe[0].value.set_index("name")
    assert table.loc["lab run", "open"] == "./?group=lab-20260101-000000-aaaa"
    assert table.loc["transfer run", "open"] == "./transfer?group=transfer-20260101-000000-dddd"
    assert table.loc["transfer run", "made on"] == "Schedule transfer"
