"""A comparison's time left (``experiments.pace``): from a real store whose runs are recorded
under a fake clock, so every time and step is known."""

import time
import types

import pytest

from grafting_core.lab.experiments import pace as pace_module
from grafting_core.lab.experiments.comparison_plan import (
    SweepPlan,
    comparison_budget,
    plan_comparison,
    request_json,
)
from grafting_core.lab.experiments.pace import comparison_pace
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store import run_store
from tests.helpers import PAIR, SEARCH_TINY

STEPS = 100  # every run's length here


class Clock:
    """The store's clock in these tests: seconds that move only when told."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """The store records its times (created, heartbeat, ended) by this clock."""
    fake = Clock()
    monkeypatch.setattr(run_store, "time", types.SimpleNamespace(time=fake, strftime=time.strftime))
    return fake


def new_run(store, group, role="sweep_point", steps=STEPS):
    return store.create_run(
        {"steps": steps}, group=group, kind="compare", arm=(role, "sgd", "", "")
    )


def test_nothing_trained_yet_has_no_pace_and_no_time_left(store, clock):
    for _ in range(3):
        new_run(store, "g")
    clock.now += 30  # started, no step recorded
    pace = comparison_pace(store, "g", active=True, budget=(10.0, 12.0), now=clock)
    assert pace.state == "no pace yet"
    assert pace.done == 0 and pace.fraction == 0
    assert pace.seconds_left is None and pace.steps_per_second is None
    assert pace.text == (
        "No pace yet: the first steps are still to be recorded "
        "(0.0 of 10.0–12.0 run-equivalents trained)."
    )


def test_the_time_left_is_what_remains_of_the_plan_at_the_groups_own_pace(store, clock):
    a, b = new_run(store, "g"), new_run(store, "g")
    clock.now += 10  # two workers, 10 s: 50 + 30 steps
    store.heartbeat(a, step=50)
    store.heartbeat(b, step=30)
    pace = comparison_pace(store, "g", active=True, budget=(40.0, 60.0), now=clock)
    assert pace.state == "training"
    assert pace.steps_per_second == pytest.approx(8.0)  # 80 steps in 10 s alive
    assert pace.done == pytest.approx(0.8)
    assert pace.fraction == pytest.approx(0.8 / 60)
    # (40 - 0.8) run-equivalents × 100 steps / 8 steps per second, and (60 - 0.8) ...
    assert pace.seconds_left == pytest.approx((490.0, 740.0))
    assert pace.text == "About 8–12 min left (0.8 of 40.0–60.0 run-equivalents trained)."
    clock.now += 100  # nothing recorded since: those 100 s trained at the same pace
    later = comparison_pace(store, "g", active=True, budget=(40.0, 60.0), now=clock)
    assert later.seconds_left == pytest.approx((390.0, 640.0))


def test_time_no_run_was_alive_is_not_counted_in_the_pace(store, clock):
    first = new_run(store, "g")
    clock.now += 10
    store.set_status(first, "finished", step=STEPS)
    clock.now += 50  # the group idle (between phases, a server down)
    second = new_run(store, "g")
    clock.now += 10
    store.heartbeat(second, step=60)
    pace = comparison_pace(store, "g", active=True, budget=(4.0, 4.0), now=clock)
    assert pace.steps_per_second == pytest.approx(160 / 20)  # 20 s alive, not 70
    assert pace.seconds_left == pytest.approx(((4 - 1.6) * STEPS / 8,) * 2)
    assert pace.text == "Under a minute left (1.6 of 4.0 run-equivalents trained)."


def test_a_diverged_run_counts_its_planned_steps_as_done_but_only_its_own_in_the_pace(store, clock):
    a, b = new_run(store, "g"), new_run(store, "g")
    clock.now += 10
    store.set_status(a, "diverged", step=20)  # will train no more
    store.heartbeat(b, step=60)
    pace = comparison_pace(store, "g", active=True, budget=(3.0, 3.0), now=clock)
    assert pace.done == pytest.approx(1.6)  # a: 100 (its plan), b: 60
    assert pace.steps_per_second == pytest.approx(8.0)  # 20 + 60 trained in 10 s
    assert pace.seconds_left == pytest.approx(((3 - 1.6) * STEPS / 8,) * 2)


def test_the_runs_in_flight_have_at_least_their_own_steps_left(store, clock):
    a, b = new_run(store, "g"), new_run(store, "g")
    clock.now += 10
    store.set_status(a, "finished", step=STEPS)
    store.heartbeat(b, step=60)
    # the plan's count is about spent (1.6 of 1.7), but b has 40 steps to go at 16 per s
    pace = comparison_pace(store, "g", active=True, budget=(1.7, 1.7), now=clock)
    assert pace.seconds_left == pytest.approx((40 / 16, 40 / 16))


def test_a_finished_comparison_says_so_with_its_time(store, clock):
    a, b = new_run(store, "g"), new_run(store, "g")
    clock.now += 25
    store.set_status(a, "finished", step=STEPS)
    store.set_status(b, "failed", step=5)  # an outcome too: nothing is left to train
    pace = comparison_pace(store, "g", active=False, budget=(2.0, 3.0), now=clock)
    assert pace.state == "finished"
    assert pace.fraction == 1.0 and pace.seconds_left is None
    assert pace.done == pytest.approx(2.0)
    assert pace.text == "Finished: 2.0 run-equivalents trained in 25 s."


def test_a_comparison_stopped_short_of_its_plan_is_not_called_finished(store, clock):
    a, b = new_run(store, "g"), new_run(store, "g")
    clock.now += 10
    store.set_status(a, "finished", step=STEPS)
    store.set_status(b, "stopped", step=40)  # a Stop: it would resume
    pace = comparison_pace(store, "g", active=False, budget=(2.0, 2.0), now=clock)
    assert pace.state == "stopped" and pace.seconds_left is None
    assert pace.text == "Not training: 1.4 of 2.0 run-equivalents trained."
    store.set_status(b, "finished", step=STEPS)  # every run ended, but the plan has more
    short = comparison_pace(store, "g", active=False, budget=(5.0, 5.0), now=clock)
    assert short.state == "stopped"


def test_runs_training_in_another_process_count_as_training_without_the_apps_flag(store, clock):
    run = new_run(store, "g")
    clock.now += 10
    store.heartbeat(run, step=40)  # the CLI's comparison: this app does not orchestrate it
    pace = comparison_pace(store, "g", active=False, budget=(1.0, 1.0), now=clock)
    assert pace.state == "training" and pace.seconds_left == pytest.approx((15.0, 15.0))


def test_the_budget_is_the_stored_plans_and_a_setting_paused_at_the_rung_is_done(store, clock):
    base = RunConfig(**{**SEARCH_TINY, "steps": STEPS})
    search = SweepPlan(points=2, factor=10, extensions=1, warmups=(0.1, 0.4), rung=0.5)
    planned = plan_comparison(base, PAIR, seeds=(0, 1), plan=search)
    store.set_group_request("g", "compare", request_json(planned.request))
    assert comparison_budget(planned.request) == planned.budget
    paused, diverged, leader = (new_run(store, "g") for _ in range(3))
    clock.now += 10
    store.set_status(paused, "stopped", step=50)  # the rung: pruned, not cut short
    store.set_status(diverged, "diverged", step=10)  # before the rung: planned to it
    store.heartbeat(leader, step=50)
    pace = comparison_pace(store, "g", budget=None, now=clock)
    assert pace.planned == planned.budget
    assert pace.done == pytest.approx(1.5)  # 50 + 50 + 50 steps
    assert pace.steps_per_second == pytest.approx(11.0)  # 110 steps trained in 10 s
    store.set_status(leader, "finished", step=STEPS)
    ended = comparison_pace(store, "g", now=clock)
    assert ended.state == "stopped"  # no run cut short, but far from the plan's fewest
    assert pace_module.cut_short(store.runs(group="g"), 50).sum() == 0


@pytest.mark.parametrize(
    ("low", "high", "said"),
    [
        (10, 50, "under a minute left"),
        (100, 110, "about 2 min left"),
        (360, 540, "about 6–9 min left"),
        (2 * 3600, 3 * 3600, "about 2–3 h left"),
        (5400, 7200, "about 1.5–2 h left"),
    ],
)
def test_time_left_in_words(low, high, said):
    assert pace_module._left(low, high) == said
