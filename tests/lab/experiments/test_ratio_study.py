"""Static ratios done right: measured per window and scope, divided by the schedule, compared."""

import math

import numpy as np
import pandas as pd
import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.experiments.compare import SweepPlan, compare
from grafting_core.lab.experiments.ratio_study import (
    best_static_arm,
    judge_study,
    static_ratio_study,
    static_ratio_table,
    study_reading,
    study_verdicts_text,
    window_of,
)
from grafting_core.lab.experiments.report import comparison_report
from grafting_core.lab.experiments.verdict import holm_judgments, judge
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store.run_store import RunStore

STEPS, WARMUP = 20, 4
TINY = dict(
    dataset="digits",
    model="mlp",
    width=8,
    steps=STEPS,
    batch_size=32,
    eval_every=STEPS,
    eval_examples=64,
    log_every=5,
    flush_seconds=0.0,
    schedule="warmup_cosine",
    warmup_steps=WARMUP,
)


def factor(step):
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("study"))
    comparison = compare(
        store,
        RunConfig(**TINY),
        {"sgd": ("sgd", {"lr": 0.1, "momentum": 0.9}), "adam": ("adam", {"lr": 3e-3})},
        seeds=(0, 1),
        plan=SweepPlan(points=2, extensions=0),
    )
    table = static_ratio_study(store, comparison.group, windows=["early", "whole"])
    yield store, comparison.group, table
    store.close()


def test_windows_are_steps_of_the_source_run():
    config = RunConfig(steps=1000, schedule="warmup_cosine", warmup_steps=100)
    assert window_of("early", config) == (0, 20)
    assert window_of("warmup_end", config) == (90, 110)
    assert window_of("whole", config) == (0, 1000)
    assert window_of("late", config) == (900, 1000)
    with pytest.raises(ValueError, match="window"):
        window_of("middle", config)


def _expected(store, source, window, per_layer):
    """c per layer from the stored norms, computed here: median_t (‖Δ_M‖/f(t)) / ‖Δ_D‖."""
    norms = store.layer_norms(source)
    wide = norms.pivot_table(index=["step", "layer"], columns="field", values="value")
    wide = wide[
        (wide.index.get_level_values("step") >= window[0])
        & (wide.index.get_level_values("step") < window[1])
    ]
    steps = wide.index.get_level_values("step").to_numpy()
    magnitude = wide["magnitude_norm"].to_numpy() / np.array([factor(s) for s in steps])
    frame = wide.assign(m=magnitude)
    if per_layer:
        return {
            layer: float(np.median(cell["m"] / cell["direction_norm"]))
            for layer, cell in frame.groupby(level="layer")
        }
    by_step = frame.groupby(level="step")
    return float(
        np.median(
            np.sqrt(by_step["m"].apply(lambda v: (v**2).sum()))
            / np.sqrt(by_step["direction_norm"].apply(lambda v: (v**2).sum()))
        )
    )


def test_each_static_run_uses_ratios_measured_on_its_window_without_the_schedule(study):
    store, group, _ = study
    runs = store.runs(group=group)
    static = runs[runs["role"] == "static_ratios"]
    assert len(static) == 2 * 2 * 2  # seeds × windows × scopes
    for _, run in static.iterrows():
        source, artifact = run["config.static_ratios"][4:].split(":", 1)
        assert artifact.startswith("static_ratios:")  # content-addressed, never replaced
        ratios = store.get_artifact(source, artifact)["parameters"]
        window_name, scope = run["arm_variant"].split(",")
        window = window_of(window_name, RunConfig.from_dict(store.run(source)["config"]))
        expected = _expected(store, source, window, scope == "per_layer")
        for name, entry in ratios.items():
            want = expected[name] if scope == "per_layer" else expected
            assert entry["ratio"] == pytest.approx(want, rel=1e-5), (run["arm_variant"], name)
        assert run["config.magnitude"] == "sgd" and run["config.schedule"] == "warmup_cosine"
        graft_lr = store.run(source)["config"]["direction_hparams"]["lr"]
        assert run["config.magnitude_hparams.lr"] == pytest.approx(graft_lr)


def test_study_table_sets_each_arm_next_to_tuned_m_and_d_with_memory(study):
    store, group, table = study
    rows = table.set_index("arm")
    assert {"adam", "sgd", "sgd+ratios[early,per_layer]", "sgd+ratios[whole,global]"} <= set(
        rows.index
    )
    adam, sgd = rows.loc["adam", "mean"], rows.loc["sgd", "mean"]
    assert sgd < adam  # this tiny fixture tunes SGD better: no gap from SGD to Adam to close
    for arm, row in rows.iterrows():
        assert np.isnan(row["gap_closed"])
        if arm.startswith("sgd"):  # one momentum buffer, half of Adam's two moments
            assert row["state_bytes"] == pytest.approx(rows.loc["adam", "state_bytes"] / 2)


def test_running_the_study_again_trains_nothing_twice(study):
    store, group, table = study
    before = len(store.runs(group=group))
    again = static_ratio_study(store, group, windows=["early", "late"], scopes=["global"])
    assert len(store.runs(group=group)) == before + 2  # only "late" is new, once per seed
    assert (
        again.set_index("arm").loc["sgd+ratios[early,global]", "seeds"]
        == table.set_index("arm").loc["sgd+ratios[early,global]", "seeds"]
        == 2
    )


def test_a_stopped_study_run_resumes_instead_of_training_twice(study):
    store, group, table = study
    runs = store.runs(group=group)
    (run_id, *_) = runs.loc[runs["name"] == "sgd+ratios[whole,per_layer]", "run_id"]
    final = store.metrics(run_id, names=["val_loss"])["value"].iloc[-1]
    store.set_status(run_id, "stopped", step=7)  # as Stop leaves it (no checkpoint: step 0)
    again = static_ratio_study(store, group, windows=["whole"], scopes=["per_layer"])
    after = store.runs(group=group)
    assert len(after) == len(runs)
    assert after.set_index("run_id").loc[run_id, "status"] == "finished"
    assert store.metrics(run_id, names=["val_loss"])["value"].iloc[-1] == final
    assert again.set_index("arm").loc["sgd+ratios[whole,per_layer]", "seeds"] == 2


def test_gap_closed_is_the_share_of_the_gap_from_tuned_d_to_tuned_m(study):
    """Read with M = SGD and D = Adam (the fixture tunes SGD better, so there is a gap):
    gap_closed = (D − arm) / (D − M), 0 on tuned D and 1 on tuned M."""
    store, group, _ = study
    swapped = static_ratio_table(store, group, magnitude="sgd", direction="adam").set_index("arm")
    adam, sgd = swapped.loc["adam", "mean"], swapped.loc["sgd", "mean"]
    assert adam > sgd
    for _, row in swapped.iterrows():
        assert row["gap_closed"] == pytest.approx((adam - row["mean"]) / (adam - sgd))
    assert swapped["gap_closed"].to_dict() == pytest.approx({"adam": 0.0, "sgd": 1.0})


def test_ratios_measured_on_a_superseded_graft_leave_the_table(study):
    """A continued comparison that tunes another lr supersedes its grafts: the static-ratio
    runs measured on one of them no longer count in any arm."""
    store, group, _ = study
    table = static_ratio_table(store, group)
    runs = store.runs(group=group)
    grafts = runs[(runs["role"] == "graft") & (runs["magnitude_arm"] == "adam")]
    source = grafts["run_id"].iloc[0]  # an adam#sgd graft: the study's source
    store.set_role(source, "superseded")
    try:
        after = static_ratio_table(store, group).set_index("arm")
    finally:
        store.set_role(source, "graft")
    before = table.set_index("arm")
    static = before.index[before["role"] == "static_ratios"]
    assert (after.loc[static, "seeds"] == before.loc[static, "seeds"] - 1).all()
    assert static_ratio_table(store, group).equals(table)


def test_a_seed_that_diverged_counts_as_failed_and_leaves_the_mean(study):
    store, group, table = study
    runs = store.runs(group=group)
    arm = runs[runs["name"] == "sgd+ratios[whole,per_layer]"]
    victim, kept = arm["run_id"].iloc[0], arm["run_id"].iloc[1:]
    store.set_status(victim, "diverged")
    try:
        after = static_ratio_table(store, group).set_index("arm")
    finally:
        store.set_status(victim, "finished")
    row = after.loc["sgd+ratios[whole,per_layer]"]
    finals = [store.metrics(r, names=["val_loss"])["value"].iloc[-1] for r in kept]
    assert (row["seeds"], row["failed"]) == (len(finals), 1)
    assert row["mean"] == pytest.approx(np.mean(finals))
    assert (after.drop("sgd+ratios[whole,per_layer]")["failed"] == 0).all()
    assert (table["failed"] == 0).all()


def test_the_best_static_arm_is_one_that_failed_on_no_seed():
    table = pd.DataFrame(
        {
            "arm": ["adam", "sgd", "a", "b", "c"],
            "role": ["tuned", "tuned", "static_ratios", "static_ratios", "static_ratios"],
            "gap_closed": [1.0, 0.0, 0.4, 0.3, 0.1],
            "failed": [0, 0, 1, 0, 0],
        }
    )
    best, unsteady = best_static_arm(table)
    assert best["arm"] == "b" and list(unsteady["arm"]) == ["a"]
    best, unsteady = best_static_arm(table.assign(failed=[0, 0, 1, 2, 1]))
    assert best is None and list(unsteady["arm"]) == ["a", "b", "c"]


def test_command_line_prints_the_study_table(study, monkeypatch, capsys):
    """ratio-study through the command line: the runs exist already (nothing trains), the
    printed rows are static_ratio_table's, and the best arm is named."""
    store, group, _ = study
    table = static_ratio_table(store, group)  # as the tests above left the group
    count = len(store.runs(group=group))
    monkeypatch.setenv("GRAFTING_RUNS_DIR", str(store.root))
    args = ["ratio-study", group, "--windows", "early", "whole", "--workers", "1"]
    assert main(args) == 0
    assert len(store.runs(group=group)) == count
    out = capsys.readouterr().out
    assert f"group {group}" in out
    rows = out.split("state_bytes", 1)[1].splitlines()  # below the table's header
    for row in table.itertuples():
        line = next(x for x in rows if x.split()[:1] == [row.arm])
        assert line.split()[1:6] == [
            f"{row.mean:.6f}",
            f"{row.std:.6f}",
            f"{row.median:.6f}",
            str(row.seeds),
            "0",
        ]
    best, _ = best_static_arm(table)
    if best is None:  # this fixture tunes SGD better: no gap, no best arm
        assert "closed the most" not in out
    else:
        assert f"{best['arm']} (window {best['window']}, {best['scope']}) closed the most" in out
    assert f"reading: {study_reading(table, 'adam', 'sgd')}\n" in out  # the page's reading
    assert f"verdicts: {study_verdicts_text(table, 'adam', 'sgd')}\n" in out
    verdicts = out.split("alone\n", 1)[1].splitlines()  # the verdict table's rows
    for row in table[table["role"] == "static_ratios"].itertuples():
        line = next(x for x in verdicts if x.split()[:1] == [row.arm])
        assert line.split()[1] == f"{row.position:.6f}"
        assert line.endswith(row.alone)


def _finals(values: dict[tuple[str, str, str], list[float]]) -> pd.DataFrame:
    """``study_finals`` rows by hand: (role, optimizer, variant) → a final loss per seed,
    NaN for a seed that diverged."""
    rows = [
        {
            "role": role,
            "magnitude_arm": arm,
            "variant": variant,
            "seed": seed,
            "status": "finished" if np.isfinite(v) else "diverged",
            "val_loss": v,
        }
        for (role, arm, variant), seeds in values.items()
        for seed, v in enumerate(seeds)
    ]
    return pd.DataFrame(rows)


def test_static_ratio_arms_are_judged_between_tuned_d_and_tuned_m_paired_by_seed():
    """Seed effects shared by every arm (as init and batches are): paired, an arm halfway is
    "between", one on tuned Adam "like tuned adam", one on tuned SGD "like tuned sgd", one
    past SGD "worse than both"; a diverged seed is left out of its arm only."""
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.3, 8)  # large: unpaired, nothing could be told

    def arm(offset, noise=0.005):
        return list(1.5 + seed_effect + offset + rng.normal(0, noise, 8))

    values = {
        ("tuned", "sgd", ""): arm(0.0),
        ("tuned", "adam", ""): arm(-0.4),
        ("static_ratios", "sgd", "early,per_layer"): arm(-0.2),
        ("static_ratios", "sgd", "late,global"): arm(-0.4),
        ("static_ratios", "sgd", "whole,global"): arm(0.0),
        ("static_ratios", "sgd", "early,global"): [np.nan] + arm(0.3)[1:],
    }
    judged = judge_study(_finals(values), "adam", "sgd").set_index("variant")
    assert judged["verdict"].to_dict() == {
        "early,per_layer": "between",
        "late,global": "like tuned adam",
        "whole,global": "like tuned sgd",
        "early,global": "worse than both",
    }
    assert judged.loc["early,per_layer", "position"] == pytest.approx(0.5, abs=0.03)
    # the same numbers through verdict.judge by hand: sgd is the judge's M, adam its D
    sgd, adam = values[("tuned", "sgd", "")], values[("tuned", "adam", "")]
    alone = [judge(sgd, adam, values[("static_ratios", "sgd", v)]) for v in judged.index]
    held = holm_judgments(alone)
    assert list(judged["position"]) == pytest.approx([j.position for j in alone])
    assert list(judged["ci_low"]) == pytest.approx([j.ci[0] for j in held])
    assert list(judged["ci_level"]) == pytest.approx([1 - j.alpha for j in held])
    assert sorted(judged["ci_level"]) == pytest.approx([1 - 0.05 / k for k in (1, 2, 3, 4)])
    assert "Holm over 4 verdicts" in judged.loc["early,global", "reason"]
    assert "diverged seeds left out: graft 1" in judged.loc["early,global", "reason"]
    unpaired = judge_study(
        _finals(values).assign(seed=lambda f: f["seed"] + 100 * (f["role"] == "tuned")),
        "adam",
        "sgd",
    )
    told = unpaired.set_index("variant").loc[["early,per_layer", "late,global", "whole,global"]]
    assert (told["label"] == "cannot tell").all() and not unpaired["paired"].any()


def test_the_study_table_carries_each_arms_verdict_and_the_report_prints_it(study):
    """Read from the store: a static-ratio arm's position is (arm − sgd)/(adam − sgd) on the
    means (every seed finished: the mean of paired differences is the difference of means;
    where adam is the better arm, gap_closed), its CI holds it;
    the tuned arms carry no verdict; ``report`` prints the study below the comparison and
    leaves its runs out of the comparison's cost and tables."""
    store, group, _ = study
    table = static_ratio_table(store, group)
    static = table[table["role"] == "static_ratios"]
    tuned = table[table["role"] == "tuned"].set_index("arm")["mean"]
    by_means = (static["mean"] - tuned["sgd"]) / (tuned["adam"] - tuned["sgd"])
    assert list(static["position"]) == pytest.approx(list(by_means))
    assert (static["ci_low"] <= static["position"]).all()
    assert (static["position"] <= static["ci_high"]).all()
    assert (table.loc[table["role"] == "tuned", "verdict"] == "").all()
    report = comparison_report(store, group)
    own = store.runs(group=group)
    own = own[own["role"] != "static_ratios"]
    assert f"- cost: {len(own)} runs" in report
    assert f"a static-ratio study added {static['seeds'].sum()} runs (below)" in report
    assert "### Static ratios from adam#sgd" in report
    assert f"Verdicts: {study_verdicts_text(table, 'adam', 'sgd')}" in report
    assert "made with other settings" not in report
    for row in static.itertuples():
        shown = f"{row.position:.4g}" if np.isfinite(row.ci_low) else ""  # unbounded: blank
        assert f"| {row.arm} | {shown} |" in report
