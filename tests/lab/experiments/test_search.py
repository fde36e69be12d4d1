"""The comparison's search: warm-up searched with the lr, tuning seeds apart from reporting
seeds, successive halving whose paused runs are exact prefixes, and its budget counted from
the store."""

import pytest
import torch

from grafting_core.lab.experiments.compare import compare
from grafting_core.lab.experiments.comparison_plan import SweepPlan, plan_comparison
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run, execute_run, pause_run
from grafting_core.lab.runs.trainer import read_checkpoint
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import PAIR
from tests.helpers import SEARCH_TINY as TINY


def test_a_run_paused_at_a_rung_and_resumed_is_the_run_trained_straight(store):
    config = RunConfig(**TINY, magnitude="adam", magnitude_hparams={"lr": 3e-3})
    straight = create_run(store, config)
    execute_run(store, straight)
    paused = create_run(store, config)
    pause_run(store, paused, 5)
    assert execute_run(store, paused) == "stopped"
    record = store.run(paused)
    assert record["status"] == "stopped" and record["last_step"] == 5
    at_rung = store.metrics([paused], names=["val_loss"])
    assert at_rung["step"].tolist() == [4]  # evaluated where it paused, for the ranking
    pause_run(store, paused, 0)
    assert execute_run(store, paused, resume=True) == "finished"
    ends = {
        run: read_checkpoint(store.get_artifact(run, "checkpoint"))["model"]
        for run in (straight, paused)
    }
    for name, tensor in ends[straight].items():
        assert torch.equal(tensor, ends[paused][name]), name
    last = store.metrics([straight, paused], names=["val_loss"])
    last = last[last["step"] == 14].set_index("run_id")["value"]
    assert last[straight] == last[paused]


def test_a_searched_comparison_costs_what_its_plan_says(store):
    """lr × warm-up on a tuning seed, halved at a third of the steps, the best rerun on five
    reporting seeds: the steps trained, counted from the store, equal the plan's budget."""
    plan = SweepPlan(
        points=3, factor=10, extensions=0, warmups=(0.1, 0.3), tune_seeds=(100,), rung=1 / 3,
        keep=2,
    )  # fmt: skip
    seeds = (0, 1, 2, 3, 4)
    planned = plan_comparison(RunConfig(**TINY), PAIR, seeds=seeds, plan=plan)
    result = compare(store, RunConfig(**TINY), PAIR, seeds=seeds, plan=plan)
    runs = store.runs(group=result.group)
    trained = runs["last_step"].sum() / TINY["steps"]
    # 2 arms × (6 settings × 1/3 + 2 lrs × 2 warm-ups × 2/3) + 2 × 5 reruns + 2 × 5 grafts
    assert trained == pytest.approx(2 * (6 / 3 + 4 * 2 / 3) + 10 + 10)
    assert planned.budget == (pytest.approx(trained),) * 2
    assert len(runs) == planned.fewest
    search = runs[runs["role"] == "sweep_point"]
    assert set(search["config.seed"]) == {100}
    assert set(search["config.warmup_steps"]) == {2, 4}  # 10% and 30% of 15 steps, rounded
    assert (search["status"] == "finished").sum() == 2 * 2 * 2  # each warm-up's 2 best
    leaders = search[search["status"] == "finished"]
    assert leaders.groupby(["magnitude_arm", "config.warmup_steps"]).size().eq(2).all()
    tuned = runs[runs["role"] == "tuned"]
    assert sorted(tuned["config.seed"]) == sorted(seeds * 2)
    for arm, row in result.sweep[result.sweep["best"]].set_index("arm").iterrows():
        mine = tuned[tuned["magnitude_arm"] == arm]
        assert set(mine["config.warmup_steps"]) == {row["warmup"]}
        assert set(mine["config.magnitude_hparams.lr"]) == {row["lr"]}
        grafts = runs[(runs["role"] == "graft") & (runs["magnitude_arm"] == arm)]
        assert set(grafts["config.warmup_steps"]) == {row["warmup"]}  # M's schedule
    # the best of each arm is chosen among the settings trained to the end
    best = result.sweep[result.sweep["best"]]
    assert (best["pruned"] == 0).all() and (best["seeds"] == 1).all()
    assert len(result.verdicts) == 2 and set(result.verdicts["graft_seeds"]) == {5}


def test_a_searched_comparison_continued_trains_nothing_again(store):
    plan = SweepPlan(points=2, factor=10, extensions=0, warmups=(0.1, 0.3), rung=0.4, keep=1)
    first = compare(store, RunConfig(**TINY), PAIR, seeds=(0,), plan=plan)
    steps = store.runs(group=first.group).set_index("run_id")["last_step"].to_dict()
    again = compare(store, RunConfig(**TINY), PAIR, seeds=(0,), plan=plan, group=first.group)
    assert store.runs(group=first.group).set_index("run_id")["last_step"].to_dict() == steps
    assert again.verdicts.drop(columns="judgment").equals(first.verdicts.drop(columns="judgment"))


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(warmups=(0.1, 0.1)), "Invalid warmups"),
        (dict(warmups=(1.5,)), "Invalid warmups"),
        (dict(tune_seeds=(-1,)), "Invalid tune_seeds"),
        (dict(rung=1.0), "Invalid rung"),
        (dict(keep=0), "Invalid keep"),
    ],
)
def test_bad_search_settings_are_named(bad, words):
    with pytest.raises(ValueError, match=words):
        SweepPlan(**bad)


def test_tuning_and_reporting_seeds_must_differ():
    with pytest.raises(ValueError, match="overlap"):
        plan_comparison(RunConfig(**TINY), PAIR, seeds=(0, 1), plan=SweepPlan(tune_seeds=(1,)))


def test_the_positive_control_judges_like_m(store):
    """The first optimizer at a tenth of its tuned lr as M, tuned as D: they differ only in
    step size, so M#D is M step for step (checked on the losses), and the verdict is "like
    M"; its runs are counted in the plan."""
    plan = SweepPlan(points=2, factor=10, extensions=0, control=True)
    # long enough, on enough seeds, that sgd at a tenth of its lr is told apart from sgd (a
    # control whose M and D cannot be told apart says "cannot tell": it shows nothing)
    base = RunConfig(**{**TINY, "steps": 60, "eval_every": 60})
    pair = {**PAIR, "sgd": ("sgd", {"lr": 0.3, "momentum": 0.9})}
    planned = plan_comparison(base, pair, seeds=range(5), plan=plan)
    result = compare(store, base, pair, seeds=range(5), plan=plan)
    runs = store.runs(group=result.group)
    assert len(runs) == planned.fewest
    control = next(result.controls[result.controls["control"] == "positive"].itertuples())
    assert (control.magnitude, control.direction) == ("sgd@lr/10", "sgd")
    tuned_lr = result.sweep.loc[result.sweep["best"] & (result.sweep["arm"] == "sgd"), "lr"]
    slow = runs[runs["role"] == "control"]
    assert set(slow["config.magnitude_hparams.lr"]) == {round(float(tuned_lr.iloc[0]) / 10, 6)}
    finals = store.runs(group=result.group).set_index("run_id")
    losses = {}
    for role in ("control", "control_graft"):
        ids = finals.index[finals["role"] == role]
        values = store.metrics(list(ids), names=["val_loss"])
        last = values.sort_values("step").groupby("run_id")["value"].last()
        losses[role] = last.groupby(finals.loc[last.index, "config.seed"].to_numpy()).first()
    assert losses["control_graft"].to_numpy() == pytest.approx(
        losses["control"].to_numpy(), rel=1e-4
    )
    assert control.label == "like M" and control.passed
    assert result.verdicts["label"].notna().all()  # the grafts' verdicts stay beside it


def test_the_control_is_said_first_in_the_cli_report(tmp_path, capsys):
    from grafting_core.lab.cli import print_comparison
    from grafting_core.lab.experiments.comparison_reading import control_text

    store = RunStore(tmp_path)
    plan = SweepPlan(points=2, factor=10, extensions=0, control=True)
    result = compare(store, RunConfig(**TINY), PAIR, seeds=(0, 1), plan=plan)
    capsys.readouterr()
    print_comparison(result)
    out = capsys.readouterr().out
    text = control_text(result.controls)
    assert text.startswith("Positive control sgd@lr/10#sgd") and out.lstrip().startswith(text)
    for row in result.controls.itertuples():  # 15 steps, 2 seeds: arms may be too close
        must = "M" if row.control == "positive" else "D"
        assert (f"did NOT come out like {must}" in text) != row.passed
    store.close()
