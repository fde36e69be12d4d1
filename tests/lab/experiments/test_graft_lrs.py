"""A comparison's grafts at other lrs of M: the runs planned, the table against the runs'
own values, nothing trained twice, bad input refused (library and command line)."""

import re

import numpy as np
import pandas as pd
import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.experiments.common import LR_COLUMN, beyond_edge
from grafting_core.lab.experiments.compare import (
    SweepPlan,
    compare,
    comparison_request,
    read_comparison,
)
from grafting_core.lab.experiments.graft_lrs import graft_lr_sweep, graft_lr_table, plan_graft_lrs
from grafting_core.lab.runs.arms import Arm
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run, execute_run
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import COMPARISON_TINY as TINY

SGD_LR, OTHER_LR, DIVERGING_LR = 0.1, 0.03, 1e6


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tuned sgd/adam comparison (2 seeds, with a partial graft), then sgd#adam at two more
    lrs of SGD, one of which diverges."""
    store = RunStore(tmp_path_factory.mktemp("graft_lrs"))
    group = compare(
        store,
        RunConfig(**TINY),
        {"sgd": ("sgd", {"lr": SGD_LR, "momentum": 0.9}), "adam": ("adam", {"lr": 3e-3})},
        seeds=(0, 1),
        plan=SweepPlan(points=2, extensions=0),
        partial=[("hidden",)],
    ).group
    before = store.runs(group=group)
    tuned_sgd = before.loc[
        before["role"].eq("tuned") & before["magnitude_arm"].eq("sgd"),
        "config.magnitude_hparams.lr",
    ].iloc[0]
    lrs = [tuned_sgd, OTHER_LR, DIVERGING_LR]
    table = graft_lr_sweep(store, group, magnitude="sgd", direction="adam", lrs=lrs)
    yield store, group, before, table, tuned_sgd
    store.close()


def _final(store, run_id):
    metrics = store.metrics(run_id, names=["val_loss"])
    return float(metrics.sort_values("step")["value"].iloc[-1])


def test_each_graft_is_trained_again_at_each_other_lr_with_nothing_else_changed(swept):
    store, group, before, _, tuned_sgd = swept
    runs = store.runs(group=group)
    new = runs[~runs["run_id"].isin(before["run_id"])]
    assert (new["role"] == "graft_lr").all()
    sources = before[before["role"].isin(["graft", "partial_graft"])]
    sources = sources[sources["magnitude_arm"].eq("sgd")]
    assert len(sources) == 4  # full and [hidden], two seeds each
    assert len(new) == len(sources) * 2  # two lrs besides the tuned one
    for lr in (OTHER_LR, DIVERGING_LR):
        at_lr = new[new["config.magnitude_hparams.lr"] == lr]
        assert len(at_lr) == len(sources)
        for source in sources["run_id"]:
            expected = store.run(source)["config"]
            expected["magnitude_hparams"] = {**expected["magnitude_hparams"], "lr": lr}
            matches = [
                store.run(run_id)["config"]
                for run_id in at_lr["run_id"]
                if {**store.run(run_id)["config"], "name": expected["name"]} == expected
            ]
            assert len(matches) == 1, source
    assert (new["arm_variant"].fillna("").value_counts() == 4).all()
    assert tuned_sgd not in set(new["config.magnitude_hparams.lr"])


def test_table_sets_each_lr_next_to_tuned_m_and_d(swept):
    store, group, _, table, tuned_sgd = swept
    runs = store.runs(group=group)
    tuned = {
        arm: np.array(
            [
                _final(store, r)
                for r in runs.loc[
                    runs["role"].eq("tuned") & runs["magnitude_arm"].eq(arm), "run_id"
                ]
            ]
        )
        for arm in ("sgd", "adam")
    }
    grafts = runs[
        runs["role"].isin(["graft", "partial_graft", "graft_lr"]) & runs["magnitude_arm"].eq("sgd")
    ]
    assert len(table) == 6  # two variants × three lrs
    for row in table.itertuples():
        cell = grafts[
            grafts["arm_variant"].fillna("").eq(row.variant)
            & grafts["config.magnitude_hparams.lr"].eq(row.lr)
        ]
        assert row.tuned_lr == (row.lr == tuned_sgd)
        own = "partial_graft" if row.variant else "graft"  # the comparison's own graft
        assert set(cell["role"]) == {own if row.lr == tuned_sgd else "graft_lr"}
        if row.lr == DIVERGING_LR:
            assert row.failed >= 1 and row.verdict == "failed" and np.isnan(row.mean)
            assert not row.best
            continue
        values = np.array([_final(store, r) for r in cell["run_id"]])
        assert (row.seeds, row.failed) == (2, 0)
        assert row.mean == pytest.approx(values.mean())
        assert row.std == pytest.approx(values.std(ddof=1))
        m, d = tuned["sgd"].mean(), tuned["adam"].mean()
        assert row.position == pytest.approx((values.mean() - m) / (d - m))
        assert row.verdict in ("magnitude", "direction", "cannot tell")
    for _, cell in table.groupby("variant"):
        finite = cell[cell["failed"] == 0]
        best = finite.loc[finite["mean"].idxmin(), "lr"]
        assert cell.loc[cell["best"], "lr"].tolist() == [best]
        edge = best in (cell["lr"].min(), cell["lr"].max())  # of every lr tried, failed too
        assert cell["at_edge"].tolist() == [edge and lr == best for lr in cell["lr"]]


def test_a_graft_at_an_lr_tried_here_counts_each_seed_once(swept):
    """A continued comparison whose M lr moved onto one of these lrs grafts it again: the
    table counts each seed once, from the comparison's own run."""
    store, group, _, table, _ = swept
    runs = store.runs(group=group)
    tried = runs[runs["role"].eq("graft_lr") & runs["config.magnitude_hparams.lr"].eq(OTHER_LR)]
    tried = tried[tried["arm_variant"].fillna("").eq("")]
    config = RunConfig.from_dict(store.run(tried["run_id"].iloc[0])["config"])
    arm = Arm("graft", "sgd", "adam")
    again = create_run(store, config.replace(name=arm.label), kind="compare", group=group, arm=arm)
    try:
        execute_run(store, again)
        after = graft_lr_table(store, group, magnitude="sgd", direction="adam")
        row = after[(after["variant"] == "") & (after["lr"] == OTHER_LR)].iloc[0]
        before = table[(table["variant"] == "") & (table["lr"] == OTHER_LR)].iloc[0]
        assert row["seeds"] == before["seeds"] == 2 and bool(row["tuned_lr"])
        assert row["mean"] == pytest.approx(before["mean"])  # the same config: the same loss
    finally:
        store.delete_run(again)


def test_sweeping_again_trains_nothing_twice(swept):
    store, group, _, table, tuned_sgd = swept
    count = len(store.runs(group=group))
    again = graft_lr_sweep(
        store, group, magnitude="sgd", direction="adam", lrs=[OTHER_LR], variants=[""]
    )
    assert len(store.runs(group=group)) == count
    assert again.equals(table)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"magnitude": "lion"}, "No graft lion#adam"),
        ({"variants": ["hidden+norm"]}, "No variant 'hidden+norm'"),
        ({"lrs": []}, "Invalid lrs"),
        ({"lrs": [0.1, -1.0]}, "Invalid lrs"),
    ],
)
def test_bad_input_is_refused_before_any_run(swept, change, words):
    store, group, *_ = swept
    count = len(store.runs(group=group))
    options = {"magnitude": "sgd", "direction": "adam", "lrs": [0.2], **change}
    with pytest.raises(ValueError, match=re.escape(words)):
        plan_graft_lrs(store, group, **options)
    assert len(store.runs(group=group)) == count


def test_command_line_prints_the_table(swept, monkeypatch, capsys):
    store, group, _, table, _ = swept
    monkeypatch.setenv("GRAFTING_RUNS_DIR", str(store.root))
    args = ["graft-lrs", group, "--lrs", str(OTHER_LR), "--variants", "full", "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"group {group}" in out
    full = table[table["variant"] == ""]
    for row in full.itertuples():
        line = next(x for x in out.splitlines() if x.split()[:2] == ["full", f"{row.lr:g}"])
        assert row.verdict in line
    with pytest.raises(SystemExit) as exit_info:
        main(["graft-lrs", group, "--lrs", "0.1", "--magnitude", "lion"])
    assert exit_info.value.code == 2
    assert "No graft lion#adam" in capsys.readouterr().err
    assert graft_lr_table(store, group, magnitude="sgd", direction="adam").equals(table)


def test_a_comparison_tunes_each_grafts_lr_when_asked(tmp_path, capsys, monkeypatch):
    """compare(tune_grafts=True) through the command line: every graft (full and partial)
    at the plan's grid around M's tuned lr, one lr more past the edge where the grid's best
    sits on it, and the tuned grafts' table; the setting is kept with the group."""
    monkeypatch.setenv("GRAFTING_RUNS_DIR", str(tmp_path))
    settings = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    options = ["--points", "2", "--extensions", "1", "--seeds", "0", "1", "--partial", "hidden"]
    assert main(["compare", *options, "--tune-grafts", "--workers", "1", *settings]) == 0
    out = capsys.readouterr().out
    store = RunStore(tmp_path)
    (group,) = store.runs()["group"].unique()
    assert comparison_request(store, group)["tune_grafts"] is True
    runs = store.runs(group=group)
    tuned = dict(
        runs.loc[runs["role"] == "tuned", ["magnitude_arm", LR_COLUMN]].drop_duplicates().values
    )
    plan = SweepPlan(points=2, extensions=1)
    best_rows = []
    for m, d in (("sgd", "adam"), ("adam", "sgd")):
        table = graft_lr_table(store, group, magnitude=m, direction=d)
        assert set(table["variant"]) == {"", "hidden"}
        first = sorted(set(plan.grid(tuned[m])) | {tuned[m]})
        for variant, cell in table.groupby("variant"):
            assert (cell["seeds"] + cell["failed"] == 2).all()
            initial = cell[cell["lr"].isin(first) & (cell["failed"] == 0)]
            best = initial.loc[initial["mean"].idxmin(), "lr"]
            extension = (
                {beyond_edge(best, first, plan.factor)} if best in (first[0], first[-1]) else set()
            )
            assert set(cell["lr"]) == set(first) | extension, (m, variant)
        best_rows.append(table[table["best"]].assign(magnitude=m, direction=d))
    expected = pd.concat(best_rows, ignore_index=True)
    shown = read_comparison(store, group).tuned_grafts
    assert len(shown) == len(expected) == 4
    for column in ("lr", "mean", "position"):
        assert sorted(shown[column]) == pytest.approx(sorted(expected[column]))
    assert "tuned grafts: each graft at its own best lr of M" in out
