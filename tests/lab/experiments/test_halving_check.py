"""The halving check: on a search trained without a rung, which setting halving at each
evaluated step would have chosen, against the full search's choice."""

import pytest

from grafting_core.lab.experiments.comparison_plan import SweepPlan, request_json
from grafting_core.lab.experiments.halving_check import halving_check
from grafting_core.lab.runs.config import RunConfig
from tests.helpers import PAIR
from tests.helpers import SEARCH_TINY as TINY

#: val_loss after 5, 10 and 15 steps per (lr, warm-up) and tuning seed: lr 1.0 leads early
#: and ends worst; lr 0.1 with the long warm-up ends best
CURVES = {
    (0.1, 2): {100: [2.0, 1.5, 1.20], 101: [2.1, 1.6, 1.30]},
    (0.1, 4): {100: [2.2, 1.4, 1.00], 101: [2.3, 1.5, 1.10]},
    (1.0, 2): {100: [1.0, 1.3, 1.50], 101: [1.1, 1.4, 1.60]},
    (1.0, 4): {100: [1.5, 1.6, 1.40], 101: [1.6, 1.7, 1.50]},
}


def _full_search(store, group="compare-full", curves=CURVES, back_off=False):
    plan = SweepPlan(
        points=2, factor=10, warmups=(0.1, 0.3), tune_seeds=(100, 101), rung=0, back_off=back_off
    )
    request = {
        "base": RunConfig(**TINY),
        "optimizers": {"sgd": PAIR["sgd"]},
        "seeds": (0,),
        "plan": plan,
        "partial": [],
        "metric": "val_loss",
        "tune_grafts": False,
    }
    store.set_group_request(group, "compare", request_json(request))
    for (lr, warmup), seeds in curves.items():
        for seed, values in seeds.items():
            config = {"magnitude_hparams": {"lr": lr}, "warmup_steps": warmup, "seed": seed}
            run_id = store.create_run(
                config, group=group, kind="compare", arm=("sweep_point", "sgd", "", "")
            )
            for step, value in zip((4, 9, 14), values):
                store.log_metrics(run_id, step, {"val_loss": value})
            status = "diverged" if not values else "finished"
            store.set_status(run_id, status, step=1 if not values else 15)
    return group


def test_halving_at_each_evaluated_step_against_the_full_search(store):
    table = halving_check(store, _full_search(store)).set_index("rung")
    assert list(table.index) == [5, 10]  # the evaluated steps before the end
    assert set(table["arm"]) == {"sgd"}
    best = (table["best_lr"].iloc[0], table["best_warmup"].iloc[0])
    assert best == (0.1, 4) and table["best_mean"].iloc[0] == pytest.approx(1.05)
    # at step 5, seed 100 ranks lr 1.0 first at both warm-ups: halving keeps only lr 1.0
    # and chooses its better warm-up (4: mean 1.45), 0.40 worse than the full search
    five = table.loc[5]
    assert (five["lr"], five["warmup"]) == (1.0, 4)
    assert five["mean"] == pytest.approx(1.45) and five["regret"] == pytest.approx(0.40)
    # at step 10 lr 0.1 leads at warm-up 4 (1.4 < 1.6): halving finds the best
    assert (table.loc[10, "lr"], table.loc[10, "warmup"], table.loc[10, "regret"]) == (
        0.1,
        4,
        0.0,
    )


def test_keeping_every_lr_never_regrets_and_a_halved_search_is_not_checked(store):
    group = _full_search(store)
    assert (halving_check(store, group, keep=2)["regret"] == 0).all()
    halved = "compare-halved"
    _full_search(store, halved)
    request = store.group_request(halved)
    store.set_group_request(
        halved, "compare", {**request, "plan": {**request["plan"], "rung": 0.5}}
    )
    assert halving_check(store, halved).empty
    assert halving_check(store, "no-such-group").empty


def test_the_report_shows_the_check_of_a_full_search(store):
    from grafting_core.lab.experiments.report import comparison_report

    report = comparison_report(store, _full_search(store))
    assert "### Successive halving, checked on this full search" in report
    assert "| sgd | 5 | 1 | 4 | 1.45 | 0.1 | 4 | 1.05 | 0.4 |" in report


def test_with_back_off_the_check_chooses_as_the_search_does(store):
    """lr 10 diverges at both warm-ups, so lr 1.0 (which leads early and ends best) sits at
    the edge of stability: a search that backs off chooses lr 0.1, and so does halving."""
    curves = {
        **CURVES,
        (1.0, 4): {100: [1.5, 1.6, 0.90], 101: [1.6, 1.7, 0.95]},
        (10.0, 2): {100: [], 101: []},
        (10.0, 4): {100: [], 101: []},
    }
    plain = halving_check(store, _full_search(store, "compare-plain", curves)).set_index("rung")
    assert (plain["best_lr"].iloc[0], plain["best_warmup"].iloc[0]) == (1.0, 4)
    group = _full_search(store, "compare-backed-off", curves, back_off=True)
    table = halving_check(store, group).set_index("rung")
    assert (table["best_lr"].iloc[0], table["best_warmup"].iloc[0]) == (0.1, 4)
    assert table["best_mean"].iloc[0] == pytest.approx(1.05)
    # at step 5 lr 1.0 leads at both warm-ups, but it is at the edge: halving keeps 0.1
    assert (table.loc[5, "lr"], table.loc[5, "warmup"], table.loc[5, "regret"]) == (0.1, 4, 0)
