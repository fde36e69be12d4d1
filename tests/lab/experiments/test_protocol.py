"""The fair-comparison protocol: sweeps, tuned arms, grafts at M's tuned lr, verdicts."""

import functools
import math
import re

import numpy as np
import pandas as pd
import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.experiments.common import final_metrics
from grafting_core.lab.experiments.compare import (
    SweepPlan,
    _mark_tuned,
    compare,
    comparison_request,
    read_comparison,
)
from grafting_core.lab.experiments.verdict import closer_to
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import COMPARISON_TINY as TINY
from tests.helpers import sweep_run


def test_sweep_plan_is_a_log_grid_around_the_lr():
    assert SweepPlan().grid(0.1) == [0.01, 0.0316, 0.1, 0.316, 1.0]
    assert SweepPlan(points=2, factor=10).grid(1e-3) == pytest.approx([3.16e-4, 3.16e-3])
    for bad in (dict(points=1), dict(factor=1.0), dict(extensions=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SweepPlan(**bad)


def test_closer_to_weighs_the_gap_against_the_seed_spread():
    m, d = [1.00, 1.02, 0.98], [2.00, 2.02, 1.98]
    assert closer_to([1.1, 1.12, 1.08], m, d)["verdict"] == "magnitude"
    assert closer_to([1.9, 1.92, 1.88], m, d)["verdict"] == "direction"
    halfway = closer_to([1.5, 1.52, 1.48], m, d)
    assert halfway["verdict"] == "cannot tell" and "midpoint" in halfway["reason"]
    assert halfway["position"] == pytest.approx(0.5)
    noisy = closer_to([1.0, 1.0, 1.0], [1.0, 1.5, 0.5], [1.2, 0.7, 1.7])
    assert noisy["verdict"] == "cannot tell" and "M and D differ" in noisy["reason"]
    assert closer_to([1.0], [1.0], [2.0])["verdict"] == "cannot tell"  # one seed: no spread
    assert closer_to([1.1, 1.12], [1.0, 1.02], [2.0, 2.02])["graft_std"] == pytest.approx(
        np.std([1.1, 1.12], ddof=1)
    )


def _per_lr(store, group, arm):
    """Mean final val_loss per lr of ``arm``'s sweep, computed here from the raw metrics."""
    runs = store.runs(group=group)
    runs = runs[(runs["magnitude_arm"] == arm) & runs["role"].isin(["sweep_point", "tuned"])]
    out = {}
    for lr, cell in runs.groupby("config.magnitude_hparams.lr"):
        values = [store.metrics(r, names=["val_loss"])["value"].iloc[-1] for r in cell["run_id"]]
        out[lr] = float(np.mean(values))
    return out


@pytest.mark.parametrize(
    "partial, words",
    [
        ([["embedding"]], "Partial graft [embedding]: the model has no such layers"),
        ([["hidden", "head", "bias"]], "takes every layer of the model"),
        ([["hidden", "bias"], ["bias", "hidden"]], "[bias+hidden] is asked for twice"),
    ],
)
def test_a_partial_graft_of_no_layer_of_every_layer_or_twice_is_refused(store, partial, words):
    optimizers = {"sgd": ("sgd", {"lr": 0.1}), "adam": ("adam", {"lr": 3e-3})}
    with pytest.raises(ValueError, match=re.escape(words)):
        compare(store, RunConfig(**TINY), optimizers, seeds=(0,), partial=partial)
    assert store.runs().empty


def test_compare_tunes_each_arm_grafts_at_ms_tuned_lr_and_judges_each_pair(store):
    sgd = ("sgd", {"lr": 1e-3, "momentum": 0.9})  # far too small: the best sits at the edge
    adam = ("adam", {"lr": 3e-3})
    plan = SweepPlan(points=3, factor=10, extensions=1)
    result = compare(
        store,
        RunConfig(**TINY),
        {"sgd": sgd, "adam": adam},
        seeds=(0, 1),
        plan=plan,
        partial=[["hidden"]],
    )
    sweep = result.sweep.set_index(["arm", "lr"])
    for arm in ("sgd", "adam"):
        means = _per_lr(store, result.group, arm)
        assert sweep.loc[arm]["mean"].to_dict() == pytest.approx(means)
        best = min(means, key=means.get)
        assert sweep.loc[(arm, best), "best"]
    assert sorted(_per_lr(store, result.group, "sgd")) == pytest.approx([1e-4, 1e-3, 1e-2, 0.1])
    tuned = {row.arm: row.lr for row in result.sweep[result.sweep["best"]].itertuples()}
    runs = store.runs(group=result.group)
    chosen = runs[runs["role"] == "tuned"]
    assert sorted(zip(chosen["magnitude_arm"], chosen["config.magnitude_hparams.lr"])) == sorted(
        [(arm, lr) for arm, lr in tuned.items() for _ in (0, 1)]
    )
    grafts = runs[runs["role"] == "graft"]
    partial = runs[runs["role"] == "partial_graft"]
    assert len(grafts) == len(partial) == 4
    assert (partial["config.grafted"] == '["hidden"]').all()
    assert (partial["arm_variant"] == "hidden").all() and (grafts["config.grafted"] == "[]").all()
    for _, run in pd.concat([grafts, partial]).iterrows():
        assert run["config.magnitude_hparams.lr"] == tuned[run["magnitude_arm"]]
        assert run["config.direction_hparams.lr"] == tuned[run["direction_arm"]]
    verdicts = result.verdicts.set_index(["magnitude", "direction", "grafted"])
    assert set(verdicts.index) == {
        ("sgd", "adam", "all"),
        ("adam", "sgd", "all"),
        ("sgd", "adam", "hidden"),
        ("adam", "sgd", "hidden"),
    }
    graft = grafts[(grafts["magnitude_arm"] == "adam")]["run_id"]
    values = [store.metrics(r, names=["val_loss"])["value"].iloc[-1] for r in graft]
    assert verdicts.loc[("adam", "sgd", "all"), "graft_mean"] == pytest.approx(np.mean(values))
    assert verdicts.loc[("adam", "sgd", "hidden"), "magnitude_mean"] == pytest.approx(
        _per_lr(store, result.group, "adam")[tuned["adam"]]
    )
    assert verdicts["verdict"].isin(["magnitude", "direction", "cannot tell"]).all()
    again = read_comparison(store, result.group)  # the tables come back from the store alone
    assert again.verdicts.equals(result.verdicts) and again.arms.equals(result.arms)


def test_compare_creates_no_runs_and_tunes_nothing_once_stop_says_so(store):
    asked = []

    def stop() -> bool:  # lets the sweep start, then stops before the next phase
        asked.append(1)
        return len(asked) > 1

    plan = SweepPlan(points=2, factor=10, extensions=1)
    result = compare(
        store,
        RunConfig(**TINY),
        {"sgd": ("sgd", {"lr": 1e-3}), "adam": ("adam", {"lr": 3e-3})},
        seeds=(0,),
        plan=plan,
        stop=stop,
    )
    runs = store.runs(group=result.group)
    assert len(runs) == 4 and set(runs["role"]) == {"sweep_point"}  # no grafts, none tuned
    assert len(asked) >= 2 and result.verdicts.empty


def _finals(store: RunStore, group: str) -> dict[tuple, float]:
    """(role, M, D, M's lr, seed) -> final val_loss of every run of ``group``."""
    runs = store.runs(group=group)
    return {
        (role, m, d, lr, seed): store.metrics(run_id, names=["val_loss"])["value"].iloc[-1]
        for run_id, role, m, d, lr, seed in zip(
            runs["run_id"],
            runs["role"],
            runs["magnitude_arm"],
            runs["direction_arm"],
            runs["config.magnitude_hparams.lr"],
            runs["config.seed"],
        )
    }


def test_a_continued_comparison_keeps_its_runs_resumes_stopped_ones_and_adds_seeds(store):
    optimizers = {"sgd": ("sgd", {"lr": 1e-2, "momentum": 0.9}), "adam": ("adam", {"lr": 3e-3})}
    plan = SweepPlan(points=2, factor=10, extensions=0)
    first = compare(store, RunConfig(**TINY), optimizers, seeds=(0,), plan=plan)
    runs = store.runs(group=first.group)
    kept = runs[runs["role"] == "sweep_point"]["run_id"].iloc[0]
    rows_before = store.metrics(kept)
    stopped = runs[runs["role"] == "graft"]["run_id"].iloc[0]
    store.set_status(stopped, "interrupted", error="killed (simulated)")

    request = comparison_request(store, first.group)  # what the app's Continue runs again
    assert request["seeds"] == (0,) and request["plan"] == plan
    assert request["base"] == RunConfig(**TINY) and request["optimizers"] == optimizers
    again = compare(store, **{**request, "seeds": (0, 1)}, group=first.group)
    assert comparison_request(store, first.group)["seeds"] == (0, 1)
    runs = store.runs(group=first.group)
    assert kept in set(runs["run_id"])
    assert store.metrics(kept).equals(rows_before)  # kept as it was, not trained again
    assert store.run(stopped)["status"] == "finished"  # resumed under its own id
    assert runs["status"].eq("finished").all()
    assert len(runs[runs["role"].isin(["sweep_point", "tuned"])]) == 2 * 2 * 2  # arms×lrs×seeds
    assert len(runs[runs["role"] == "graft"]) == 2 * 2  # pairs × seeds, at the tuned lrs
    # The same numbers as a comparison of seeds 0 and 1 made in one go.
    fresh = compare(store, RunConfig(**TINY), optimizers, seeds=(0, 1), plan=plan)
    current = {k: v for k, v in _finals(store, first.group).items() if k[0] != "superseded"}
    assert current == pytest.approx(_finals(store, fresh.group))
    assert again.verdicts.drop(columns="reason").equals(
        read_comparison(store, fresh.group).verdicts.drop(columns="reason")
    )


def test_a_comparison_continued_under_other_housekeeping_settings_keeps_its_runs(store):
    """A group made before checkpoint_every's default changed (or with other flush settings)
    is continued, not trained again: those settings change nothing a run computes."""
    optimizers = {"sgd": ("sgd", {"lr": 1e-2, "momentum": 0.9}), "adam": ("adam", {"lr": 3e-3})}
    plan = SweepPlan(points=2, factor=10, extensions=0)
    first = compare(store, RunConfig(**TINY, checkpoint_every=0), optimizers, seeds=(0,), plan=plan)
    before = set(store.runs(group=first.group)["run_id"])
    later = RunConfig(**{**TINY, "checkpoint_every": 5, "flush_seconds": 1.0})
    compare(store, later, optimizers, seeds=(0,), plan=plan, group=first.group)
    assert set(store.runs(group=first.group)["run_id"]) == before
    changed = RunConfig(**{**TINY, "eval_every": TINY["eval_every"] + 1})  # what it records
    with pytest.raises(ValueError, match="eval_every 16 \\(it was made with 15\\)"):
        compare(store, changed, optimizers, seeds=(0,), plan=plan, group=first.group)
    assert set(store.runs(group=first.group)["run_id"]) == before  # nothing was written


def test_grafts_at_an_lr_no_longer_tuned_are_superseded_and_never_judged(store):
    optimizers = {"sgd": ("sgd", {"lr": 1e-2, "momentum": 0.9}), "adam": ("adam", {"lr": 3e-3})}
    result = compare(
        store,
        RunConfig(**TINY),
        optimizers,
        seeds=(0,),
        plan=SweepPlan(points=2, factor=10, extensions=0),
    )
    best = result.sweep[result.sweep["best"]]
    tuned = {row.arm: (row.lr, row.warmup) for row in best.itertuples()}  # (lr, warm-up)
    other = result.sweep[(result.sweep["arm"] == "sgd") & ~result.sweep["best"]]["lr"].iloc[0]
    moved = {**tuned, "sgd": (other, tuned["sgd"][1])}
    _mark_tuned(store, result.group, moved)  # as if more seeds chose it
    runs = store.runs(group=result.group).set_index("name")
    assert (runs.loc[["adam#sgd", "sgd#adam"], "role"] == "superseded").all()  # sgd in each
    chosen = runs[runs["role"] == "tuned"]
    assert dict(zip(chosen["magnitude_arm"], chosen["config.magnitude_hparams.lr"])) == {
        arm: lr for arm, (lr, _) in moved.items()
    }
    assert read_comparison(store, result.group).verdicts.empty
    _mark_tuned(store, result.group, tuned)  # the first choice again: the grafts count again
    assert read_comparison(store, result.group).verdicts.equals(result.verdicts)


#: compare's search as it was before the protocol searched warm-ups on tuning seeds: the lr
#: alone, on the reporting seeds, every setting to the end
LR_ONLY = ("--warmups", "--tune-seeds", "--rung", "0", "--no-control", "--no-back-off")


def _compare_command(tmp_path, *options: str) -> list[str]:
    """``compare`` over the store at ``tmp_path``: TINY's run settings, 2 lrs a sweep, no
    extension, inline, and ``options``."""
    return [
        "--runs-dir",
        str(tmp_path),
        "compare",
        *options,
        "--points",
        "2",
        "--extensions",
        "0",
        "--workers",
        "1",
        *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()],
    ]


def test_compare_command_prints_the_sweep_arms_and_verdicts(tmp_path, capsys):
    """The default protocol: warm-up + cosine, lr × warm-up (5%, 30%) searched on the tuning
    seed 10000 (the leaders on 10001 too), each arm's best trained again on the reporting
    seeds, then the grafts and the controls."""
    assert main(_compare_command(tmp_path, "--optimizers", "sgd", "adam", "--seeds", "0", "1")) == 0
    out = capsys.readouterr().out
    assert "learning-rate sweeps" in out and "verdicts" in out and "adam#sgd" in out
    with RunStore(tmp_path) as store:
        runs = store.runs()
    assert (runs["config.schedule"] == "warmup_cosine").all()
    search = runs[runs["role"] == "sweep_point"]
    assert set(search["config.warmup_steps"]) == {round(0.05 * 15), round(0.3 * 15)}
    assert set(search["config.seed"]) == {10_000, 10_001}
    assert set(runs.loc[runs["role"] != "sweep_point", "config.seed"]) == {0, 1}
    assert sorted(runs["role"].unique()) == [
        "control",  # the positive control: sgd at a tenth of its tuned lr, and grafted
        "control_graft",
        "graft",
        "negative_control",  # (X#Y)#X, X the worse tuned arm
        "sweep_point",
        "tuned",
    ]
    assert "Positive control sgd@lr/10#sgd" in out and "Negative control (" in out
    assert main(_compare_command(tmp_path / "lr", *LR_ONLY, "--seeds", "0")) == 0
    with RunStore(tmp_path / "lr") as store:
        runs = store.runs()
    assert (runs["config.warmup_steps"] == math.floor(TINY["steps"] / 10)).all()


def test_compare_command_continues_a_group_with_its_stored_settings(tmp_path, capsys):
    """``compare --group G --seeds 0 1`` alone keeps every setting G was made with (run flags
    and sweep plan); it trains only seed 1's runs, the same ones a fresh 2-seed run has."""
    assert main(_compare_command(tmp_path, *LR_ONLY, "--seeds", "0")) == 0
    with RunStore(tmp_path) as store:
        (group,) = store.runs()["group"].unique()
        first = store.runs(group=group)
    capsys.readouterr()
    assert (
        main(
            [
                "--runs-dir",
                str(tmp_path),
                "compare",
                "--group",
                group,
                "--seeds",
                "0",
                "1",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert f"continuing {group} with the settings it was made with" in capsys.readouterr().err
    with RunStore(tmp_path) as store:
        runs = store.runs(group=group)
        request = comparison_request(store, group)
    assert set(first["run_id"]) < set(runs["run_id"]) and len(runs) == 2 * len(first)
    assert request["seeds"] == (0, 1) and request["plan"] == SweepPlan(points=2, extensions=0)
    settings = [c for c in runs if c.startswith("config.") and c != "config.seed"]
    for column in ("config.steps", "config.width", "config.schedule", "config.warmup_steps"):
        assert column in settings and runs[column].nunique() == 1  # TINY's, not the defaults
    assert runs["config.steps"].iloc[0] == TINY["steps"]


def test_sweep_table_never_picks_a_diverged_lr_and_waits_for_pending_seeds(store):
    from grafting_core.lab.experiments.compare import _sweep_table

    run = functools.partial(sweep_run, store)

    run(0.1, "finished", 1.0)
    run(0.1, "finished", 1.2)
    run(1.0, "finished", 0.5)
    run(1.0, "diverged", float("nan"))  # one diverged seed: the lr fails
    run(0.01, "finished", 0.8)
    run(0.01, "running")  # still training: not chosen yet
    sweep = _sweep_table(store, "g", "val_loss").set_index("lr")
    assert sweep.loc[1.0, "failed"] == 1 and sweep.loc[1.0, "mean"] == float("inf")
    assert sweep.loc[0.01, "pending"] == 1 and sweep.loc[0.01, "mean"] == 0.8
    assert sweep["best"].tolist() == [False, True, False]  # 0.1: the only complete, finite lr
    assert sweep.loc[0.1, "mean"] == pytest.approx(1.1) and not sweep.loc[0.1, "at_edge"]


def test_each_graft_is_judged_paired_by_seed_and_holm_corrected(store):
    """read_comparison's verdict columns are verdict.judge on each arm's per-seed losses
    (paired by seed), corrected together by holm_judgments: recomputed here from the runs."""
    from grafting_core.lab.experiments.verdict import holm_judgments, judge

    optimizers = {"sgd": ("sgd", {"lr": 1e-2, "momentum": 0.9}), "adam": ("adam", {"lr": 3e-3})}
    plan = SweepPlan(points=2, factor=10, extensions=0)
    result = compare(store, RunConfig(**TINY), optimizers, seeds=(0, 1, 2), plan=plan)
    runs = store.runs(group=result.group)
    final = final_metrics(store, runs["run_id"].tolist(), metrics=("val_loss",), runs=runs)
    final["seed"] = runs.set_index("run_id").loc[final["run_id"], "config.seed"].to_numpy(int)

    def by_seed(role, m, d=None):
        rows = final[(final["role"] == role) & (final["magnitude_arm"] == m)]
        if d is not None:
            rows = rows[rows["direction_arm"] == d]
        return pd.Series(rows["val_loss"].to_numpy(float), index=rows["seed"].to_numpy(int))

    pairs = list(zip(result.verdicts["magnitude"], result.verdicts["direction"]))
    expected = holm_judgments(
        [judge(by_seed("tuned", m), by_seed("tuned", d), by_seed("graft", m, d)) for m, d in pairs]
    )
    for (_, row), judgment in zip(result.verdicts.iterrows(), expected):
        assert row["label"] == judgment.label
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(judgment.ci)
        assert row["p_holm"] == pytest.approx(judgment.as_row()["p_holm"])
        assert row["graft_diverged"] == 0
