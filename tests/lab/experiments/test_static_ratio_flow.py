"""The static-ratio flow through its entry points: the engine's plan/start/read functions,
the command line and the Static ratios page (AppTest) give the same counts and readings, and a
run's multipliers never change under it (content-addressed artifacts; old references work)."""

from __future__ import annotations

import ast
import hashlib
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.experiments import ratio_study, static_ratios
from grafting_core.lab.experiments.analysis import static_ratios_from_run
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.groups import record_runs
from grafting_core.lab.runs.runner import execute_run
from tests.helpers import ROOT, page, tiny_comparison, train_inline

pytestmark = pytest.mark.app_store  # the Static ratios page reads the store the tests write

SOURCE = dict(
    name="adam#sgd",
    magnitude="adam",
    direction="sgd",
    direction_hparams={"lr": 0.1, "momentum": 0.9},
    width=8,
    steps=30,
    log_every=5,
    eval_every=30,
)


def raw_artifact(store, run_id: str, name: str) -> bytes:
    """An artifact's stored bytes, read from the SQLite file without the store's code."""
    with sqlite3.connect(store.root / "runs.sqlite") as conn:
        (payload,) = conn.execute(
            "SELECT data FROM artifacts WHERE run_id = ? AND name = ?", (run_id, name)
        ).fetchone()
    return bytes(payload)


def content_name(data: dict) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return f"static_ratios:{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def median_ratios(store, source: str, window: tuple[int, int]) -> dict[str, float]:
    """Each layer's median ‖Δ_M‖/‖Δ_D‖ over ``window``, from the stored norms (constant lr)."""
    norms = store.layer_norms(source, fields=["magnitude_norm", "direction_norm"])
    wide = norms.pivot_table(index=["step", "layer"], columns="field", values="value")
    wide = wide.reset_index()
    wide = wide[(wide["step"] >= window[0]) & (wide["step"] < window[1])]
    return {
        layer: float(np.median(cell["magnitude_norm"] / cell["direction_norm"]))
        for layer, cell in wide.groupby("layer")
    }


# ------------------------------------------------------------------ immutable artifacts
def test_a_second_measurement_leaves_the_first_runs_inputs_byte_identical(store):
    source = train_inline(store, **SOURCE)
    first = static_ratios.plan_static_ratios(store, source, window=(5, 15), sgd_lrs=[0.1])
    assert first.count == 3 and first.describe().startswith("3 runs: sgd+ratios(adam)")
    group, ids = static_ratios.start_static_ratios(store, first, None)  # inline
    run = store.run(ids[0])
    name = content_name(static_ratios_from_run(store, source, window=(5, 15)).to_dict())
    assert run["config"]["static_ratios"] == f"run:{source}:{name}"
    before = raw_artifact(store, source, name)
    assert json.loads(before)["info"]["window"] == [5, 15]
    by_layer = median_ratios(store, source, (5, 15))
    layout = store.get_artifact(source, "layers")
    stored = json.loads(before)["parameters"]
    for param, layer in zip(layout["param_names"], layout["param_layer"]):
        want = by_layer[layout["layer_names"][layer]]
        assert stored[param]["ratio"] == pytest.approx(want, rel=1e-5)

    second = static_ratios.plan_static_ratios(store, source, window=(10, 30), sgd_lrs=[0.1])
    assert second.artifact != first.artifact
    static_ratios.start_static_ratios(store, second, None)
    assert raw_artifact(store, source, name) == before  # the first run's input, unchanged
    assert store.run(ids[0])["config"] == run["config"]
    assert raw_artifact(store, source, second.artifact) != before
    assert static_ratios.read_static_ratio_group(store, group).ratios == json.loads(before)
    again = static_ratios.plan_static_ratios(store, source, window=(5, 15), sgd_lrs=[0.1])
    assert again.artifact == name  # the same measurement has the same name


def test_a_run_of_an_old_store_that_refers_to_run_source_still_trains(store):
    """Stores written before content addressing: the ratio run's config says ``run:<source>``
    and the multipliers are the source's artifact named ``static_ratios``."""
    source = train_inline(store, **SOURCE)
    ratios = static_ratios_from_run(store, source, window=(5, 15))
    store.put_artifact(source, "static_ratios", ratios.to_dict(), kind="static_ratios")
    planned = static_ratios.static_ratio_configs_from(store, source, steps=10)
    assert planned[0].config.static_ratios == f"run:{source}"
    ids, _ = record_runs(store, planned[:1], group="ratios-old", kind="ratios")
    execute_run(store, ids[0])
    assert store.run(ids[0])["status"] == "finished"
    reading = static_ratios.read_static_ratio_group(store, "ratios-old")
    assert reading.source == source and reading.ratios == ratios.to_dict()
    assert ratio_study._source_of(f"run:{source}") == source


def test_the_command_line_experiment_refers_to_a_content_addressed_measurement(store):
    base = RunConfig(width=8, steps=20, log_every=5, eval_every=20)
    group, table = static_ratios.static_ratio_experiment(
        store, base, ("adam", ("adam", {"lr": 1e-3})), window=(5, 15), sgd_lrs=[0.1]
    )
    runs = store.runs(group=group).set_index("name")
    graft = runs.loc["adam#sgd", "run_id"]
    reference = runs.loc["sgd+ratios(adam)", "config.static_ratios"]
    measured = static_ratios_from_run(store, graft, window=(5, 15)).to_dict()
    assert reference == f"run:{graft}:{content_name(measured)}"
    assert "static_ratios" not in store.artifact_names(graft)  # nothing under the old name
    assert sorted(table["name"]) == ["adam#adam", "adam#sgd", "sgd(lr=0.1)", "sgd+ratios(adam)"]


# ------------------------------------------------------------------------- the reading
def study_table(means: dict[str, float], failed: dict[str, int] | None = None) -> pd.DataFrame:
    """A ``static_ratio_table`` by hand: tuned adam and sgd, static arms named by window."""
    failed = failed or {}
    d, m = means["sgd"], means["adam"]
    rows = []
    for arm, mean in means.items():
        static = arm not in ("adam", "sgd")
        rows.append(
            {
                "arm": f"sgd+ratios[{arm},per_layer]" if static else arm,
                "role": "static_ratios" if static else "tuned",
                "window": arm if static else "",
                "scope": "per_layer" if static else "",
                "mean": mean,
                "seeds": 3,
                "failed": failed.get(arm, 0),
                "state_bytes": 100.0 if arm == "adam" else 50.0,
                "gap_closed": (d - mean) / (d - m),
            }
        )
    return pd.DataFrame(rows)


def test_the_reading_says_plainly_when_every_arm_made_d_worse():
    table = study_table({"adam": 2.0, "sgd": 2.5, "early": 2.635, "late": 2.9})
    reading = ratio_study.study_reading(table, "adam", "sgd")
    assert "closed the most" not in reading
    assert "no static-ratio arm did better than tuned sgd" in reading
    assert "every arm" in reading and "worse" in reading
    assert "sgd+ratios[early,per_layer]" in reading and "2.635" in reading  # the least bad
    assert f"{(2.5 - 2.635) / 0.5:.0%}" in reading  # -27%, said as what it is


def test_the_reading_names_the_best_arm_its_share_of_the_gap_and_memory():
    table = study_table({"adam": 2.0, "sgd": 2.5, "early": 2.2, "late": 2.1}, {"late": 1})
    reading = ratio_study.study_reading(table, "adam", "sgd")
    assert reading.startswith("sgd+ratios[early,per_layer] (window early, per_layer) closed")
    assert f"{(2.5 - 2.2) / 0.5:.0%}" in reading and "50% of adam's optimizer memory" in reading
    assert "sgd+ratios[late,per_layer] closed 80% on its finished seeds" in reading
    beyond = ratio_study.study_reading(
        study_table({"adam": 2.0, "sgd": 2.5, "w": 1.9}), "adam", "sgd"
    )
    assert "120%" in beyond and "better than tuned adam itself" in beyond
    none = ratio_study.study_reading(
        study_table({"adam": 2.6, "sgd": 2.5, "w": 2.0}), "adam", "sgd"
    )
    assert "no gap" in none and "2.5" in none


def test_the_command_line_prints_the_engines_plan_and_reading(store, capsys, monkeypatch):
    group = tiny_comparison(store)
    grafts = store.runs(group=group)
    grafts = grafts[(grafts["role"] == "graft") & (grafts["magnitude_arm"] == "adam")]
    monkeypatch.setenv("GRAFTING_RUNS_DIR", str(store.root))
    args = ["ratio-study", group, "--windows", "whole", "--scopes", "global", "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    count = len(grafts)  # one run per graft (seed) × 1 window × 1 scope
    assert f"plan: {count} run{'s' * (count != 1)} of sgd with static ratios" in out
    table = ratio_study.static_ratio_table(store, group)
    assert f"reading: {ratio_study.study_reading(table, 'adam', 'sgd')}\n" in out
    assert main(args) == 0  # again: nothing new
    assert "plan: nothing new to train" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the page
def test_before_any_md_run_the_study_start_names_what_it_will_run(store):
    """A comparison is saved but no M#D run of steps 1-3: the study's Start says how many runs
    of what it trains (grafts × windows × scopes), and the page says what the study needs."""
    group = tiny_comparison(store)
    runs = store.runs(group=group)
    grafts = runs[(runs["role"] == "graft") & runs["magnitude_arm"].eq("adam")]
    at = page("pages/static_ratios.py")
    assert not at.exception and not at.error
    at.selectbox(key="ratios.study.magnitude").set_value("adam")
    at.selectbox(key="ratios.study.direction").set_value("sgd").run()
    expected = len(grafts) * len(ratio_study.WINDOWS) * len(ratio_study.SCOPES)
    button = at.button(key="ratios.study.start")
    assert button.label == f"Start the study ({expected} runs)"
    plan = ratio_study.plan_study(store, group, magnitude="adam", direction="sgd")
    assert any(plan.describe() in c.value.replace("\\", "") for c in at.caption)
    assert any("Needs a tuned comparison" in c.value for c in at.caption)
    assert len(store.runs()) == len(runs)  # nothing started by rendering


def test_the_page_and_the_engine_show_the_same_multipliers(store):
    source = train_inline(store, **SOURCE)
    at = page("pages/static_ratios.py", source=source)
    at.radio(key="ratios.source_mode").set_value("Use a saved M#D run").run()
    at.slider(key="ratios.window").set_value((5, 15)).run()
    assert not at.exception and not at.error
    shown = at.dataframe[0].value.set_index("layer")["multiplier c"]
    assert shown.to_dict() == pytest.approx(median_ratios(store, source, (5, 15)), rel=1e-5)
    caption = next(c.value for c in at.caption if c.value.startswith("Start trains"))
    lrs = [0.03, 0.1, 0.3]  # the page's default plain-SGD lrs: D with ratios, M alone, D per lr
    names = ["sgd+ratios(adam)", "adam#adam", *(f"sgd(lr={lr:g})" for lr in lrs)]
    assert f"{2 + len(lrs)} runs: {', '.join(names)}" in caption.replace("\\", "")


def test_the_page_writes_the_store_only_through_the_engines_start_functions():
    """The page and its widgets import no store-writing function but the engine's actions,
    call no store method that writes, and the page stays under 300 lines."""
    writers = {  # functions of the lab that write the run store
        "put_artifact", "create_run", "record_runs", "queue_runs", "run_all", "execute_run",
        "store_ratios", "start_group", "request_stop", "static_ratio_study",
        "static_ratio_experiment", "start_source_run", "start_static_ratios", "start_study",
    }  # fmt: skip
    store_writes = {"put_artifact", "create_run", "set_status", "set_role", "delete_run"}
    actions = {"start_source_run", "start_static_ratios", "start_study"}
    for path in ("pages/static_ratios.py", "ui/static_ratio_widgets.py"):
        tree = ast.parse((ROOT / path).read_text())
        imported = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)  # from the engine, or ui.resources
            for alias in node.names
        }
        from_store = {  # what comes from the store's and the runs' modules: a type only
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and any(part in (node.module or "") for part in (".lab.store", ".lab.runs"))
            for alias in node.names
        }
        assert imported & writers <= actions, path
        assert from_store <= {"RunStore"}, path
        called = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert not called & store_writes, path
    assert len((ROOT / "pages/static_ratios.py").read_text().splitlines()) < 300
