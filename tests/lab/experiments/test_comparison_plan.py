"""A comparison's plan (what it will train, counted before any write) and its continuations
(the same experiment or an error), through the engine and the CLI users take."""

import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from grafting_core.lab.experiments.compare import compare, read_comparison
from grafting_core.lab.experiments.comparison_plan import (
    SweepPlan,
    plan_comparison,
    plan_continuation,
)
from grafting_core.lab.experiments.grid import grid
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import COMPARISON_TINY as TINY
from tests.helpers import PAIR

CLI_TINY = ["--dataset", "digits", "--model", "mlp", "--width", "8", "--steps", "15"]
CLI_TINY += ["--batch-size", "32", "--eval-every", "15", "--eval-examples", "64"]


def test_the_plan_counts_what_compare_trains(store):
    """fewest = arms × points × seeds + arms(arms−1) × seeds with no extension: counted by
    hand, and equal to the runs compare then makes."""
    plan = SweepPlan(points=2, factor=10, extensions=0)
    planned = plan_comparison(RunConfig(**TINY), PAIR, seeds=(0, 1), plan=plan)
    assert (planned.fewest, planned.most) == (2 * 2 * 2 + 2 * 1 * 2,) * 2
    assert "2 optimizers × 2 lrs × 2 seeds = 8 sweep runs" in planned.text(2)
    result = compare(store, RunConfig(**TINY), PAIR, seeds=(0, 1), plan=plan)
    assert len(store.runs(group=result.group)) == planned.fewest
    with_partial = plan_comparison(
        RunConfig(**TINY), PAIR, seeds=(0,), plan=SweepPlan(points=3, extensions=2),
        partial=[["hidden"]], tune_grafts=True,
    )  # fmt: skip
    # sweeps 2·3, grafts 2·2 variants, their lrs 4·2 (an odd grid less its centre), +2·2 ext.
    assert (with_partial.fewest, with_partial.most) == (6 + 4 + 8, 6 + 4 + 8 + 2 * 2 + 4 * 2)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(seeds=(0, 0)), "Invalid seeds"),
        (dict(optimizers={"sgd": PAIR["sgd"]}), "at least two optimizers"),
        (dict(optimizers={**PAIR, "adam": ("adam", {"lr": 0.0})}), "Invalid direction lr: 0"),
        (dict(partial=[["hidden"], ["hidden"]]), "asked for twice"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_is_written(store, change, words):
    settings = {"seeds": (0,), "plan": SweepPlan(points=2), **change}
    with pytest.raises(ValueError, match=words):
        compare(store, RunConfig(**TINY), settings.pop("optimizers", PAIR), **settings)
    assert store.runs().empty and store.group_request("anything") is None


def test_a_continuation_is_bounded_by_its_new_runs(store):
    plan = SweepPlan(points=2, factor=10, extensions=1)
    first = compare(store, RunConfig(**TINY), PAIR, seeds=(0,), plan=plan)
    more = plan_continuation(store, first.group, [0, 1, 2])
    assert more.new_seeds == [1, 2] and more.trained_seeds == (0,)
    # new: 2 arms × 2 lrs × 2 seeds + 2 grafts × 2 seeds; at most + extensions, and the
    # grafts of the trained seed again (a tuned lr may move), never its sweeps
    assert more.fewest == 8 + 4
    assert more.most == (2 * 2 * 3 + 2 * 3 + 2 * 1 * 3) - 2 * 2 * 1


def test_cli_compare_prints_its_plan_before_training(tmp_path, capsys):
    args = ["--runs-dir", str(tmp_path), "compare", "--optimizers", "sgd", "adam"]
    args += ["--seeds", "0", "--points", "2", "--extensions", "0", "--workers", "1", *CLI_TINY]
    args += ["--warmups", "--tune-seeds", "--rung", "0", "--no-control"]  # the lr alone
    assert main(args) == 0
    err = capsys.readouterr().err
    expected = plan_comparison(
        RunConfig(**{**TINY, "log_every": RunConfig().log_every}),
        {label: LAB_OPTIMIZERS[label] for label in ("sgd", "adam")},
        seeds=(0,),
        plan=SweepPlan(points=2, extensions=0),
    ).text(1)
    protocol = plan_comparison(
        RunConfig(**TINY, schedule="warmup_cosine", warmup_steps=1),
        {label: LAB_OPTIMIZERS[label] for label in ("sgd", "adam")},
        seeds=range(5),
    )
    # the 2×2: 36 (its second tuning seed: 4 of them; the rung at half the steps); controls 9
    assert "run-equivalents" in protocol.text() and protocol.budget[0] == 45
    assert f"plan: {expected}" in err
    assert "6 runs, 1 at a time" in err


def test_cli_continuation_with_a_changed_setting_is_refused_naming_it(tmp_path, capsys):
    """Issue 28: --group G --steps 50 trained a second experiment into G and pooled it."""
    store = RunStore(tmp_path)
    plan = SweepPlan(points=2, factor=10, extensions=0)
    group = compare(store, RunConfig(**TINY), PAIR, seeds=(0,), plan=plan).group
    before = set(store.runs(group=group)["run_id"])
    request = store.group_request(group)
    store.close()
    args = ["--runs-dir", str(tmp_path), "compare", "--group", group, "--steps", "50"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "steps 50 (it was made with 15)" in err and "start a new comparison" in err
    store = RunStore(tmp_path)
    assert set(store.runs(group=group)["run_id"]) == before
    assert store.group_request(group) == request  # its settings are not replaced
    store.close()


def test_a_grid_is_never_continued_as_a_comparison(store):
    group, _ = grid(store, RunConfig(**TINY), PAIR, seeds=(0,))
    before = len(store.runs(group=group))
    with pytest.raises(ValueError, match="grid runs, not a comparison"):
        compare(store, RunConfig(**TINY), PAIR, seeds=(0,), group=group)
    assert len(store.runs(group=group)) == before


def test_runs_of_other_settings_in_a_group_never_pool_into_its_tables(store):
    """A group mixed before continuations were checked (a run made with other steps) keeps
    its tables to the runs made as the comparison says, and counts the others."""
    plan = SweepPlan(points=2, factor=10, extensions=0)
    result = compare(store, RunConfig(**TINY), PAIR, seeds=(0,), plan=plan)
    from grafting_core.lab.runs.arms import Arm
    from grafting_core.lab.runs.runner import create_run, execute_run

    odd = RunConfig(**{**TINY, "steps": 5}).replace(
        magnitude="adam", magnitude_hparams={"lr": 3e-3}, name="adam#sgd"
    )
    run_id = create_run(store, odd, kind="compare", group=result.group, arm=Arm("tuned", "adam"))
    execute_run(store, run_id)
    again = read_comparison(store, result.group)
    assert again.excluded == 1
    assert again.arms.equals(result.arms)
    assert again.verdicts.equals(result.verdicts)
