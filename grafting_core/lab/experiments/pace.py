"""How far a tuned comparison has trained and about how long it has left.

The plan (``comparison_plan.run_equivalents``) bounds the steps a comparison trains, in full
runs: the fewest (no lr extension) and the most (every extension). The store knows each
run's ``last_step`` and when the group was alive (each run from its ``created`` time to its
``ended`` time, or its last heartbeat while it trains): the steps trained per second of that
time is the comparison's pace, workers in parallel included. What is left of the plan at
that pace is the time left, a range as the plan is.

    pace = comparison_pace(store, group, active=orchestrating(group))
    pace.text   # "About 6–9 min left (12.3 of 29.3–33.3 run-equivalents trained)."
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.comparison_plan import comparison_budget, comparison_request
from grafting_core.lab.experiments.comparison_reading import cut_short
from grafting_core.lab.experiments.graft_lrs import ROLE as GRAFT_LR_ROLE
from grafting_core.lab.runs.groups import TERMINAL
from grafting_core.lab.store.run_store import RunStore

MIN_SECONDS = 2.0  # less time alive than this measures no pace (start-up alone)
PLAN_SLACK = 0.02  # the plan's count rounds the rung's step: a finished comparison may fall short
GIVEN_UP = ("diverged", "failed")  # runs that train no more: their planned steps are done


@dataclass(frozen=True)
class Pace:
    """Where a comparison stands against its plan, in run-equivalents (steps / steps per run)."""

    done: float  # run-equivalents settled: steps trained, a diverged run's planned steps
    planned: tuple[float, float] | None  # the plan's fewest and most (None: no plan stored)
    fraction: float  # done / the most planned (1 once finished; 0 without a plan)
    seconds_left: tuple[float, float] | None  # low, high at the pace so far; None: unmeasured
    steps_per_second: float | None  # the group's pace, every worker together
    state: str  # "training", "no pace yet", "finished" or "stopped"
    text: str  # the line the page shows


def comparison_pace(
    store: RunStore,
    group: str,
    *,
    active: bool = False,
    budget: tuple[float, float] | None = None,
    runs: pd.DataFrame | None = None,
    now: Callable[[], float] = time.time,
) -> Pace:
    """The comparison ``group``'s progress and time left. ``active``: whether it may still
    train though no run is training now (the app's ``orchestrating``: the store alone cannot
    tell a pause between phases from an end). ``budget``: (fewest, most) run-equivalents
    (default: its stored plan's, ``comparison_budget``). ``runs``: the group's
    ``store.runs`` rows, when already read. ``now``: the clock (tests give a fake one)."""
    request = comparison_request(store, group)
    if budget is None and request is not None:
        budget = comparison_budget(request)
    runs = store.runs(group=group) if runs is None else runs
    if request is not None and not request["tune_grafts"]:  # the form's extra grafts:
        runs = runs[runs["role"] != GRAFT_LR_ROLE]  # not in the plan
    rung = request["plan"].rung_step(request["base"]) if request is not None else 0
    return measure_pace(runs, budget=budget, rung_step=rung, active=active, now=now())


def measure_pace(
    runs: pd.DataFrame,
    *,
    budget: tuple[float, float] | None,
    rung_step: int = 0,
    active: bool,
    now: float,
) -> Pace:
    """``comparison_pace`` on a group's ``store.runs`` rows, at the time ``now`` (seconds)."""
    trained = runs["last_step"].fillna(0).to_numpy(float)
    steps = runs["config.steps"].to_numpy(float) if len(runs) else np.zeros(0)
    planned_steps = steps.copy()
    if rung_step:  # a search's setting stopped by the rung was planned to the rung
        at_rung = runs["role"].eq("sweep_point").to_numpy() & (trained <= rung_step)
        planned_steps[at_rung] = rung_step
    given_up = runs["status"].isin(GIVEN_UP).to_numpy()
    settled = np.where(given_up, np.maximum(trained, planned_steps), trained)
    per_run = float(np.median(steps)) if steps.size else 0.0
    done = float(settled.sum() / per_run) if per_run else 0.0
    alive, last_seen = _alive_seconds(runs)
    rate = trained.sum() / alive if alive >= MIN_SECONDS and trained.sum() > 0 else None
    training = active or not runs["status"].isin(TERMINAL).all()  # e.g. by the CLI
    if training:
        state = "training" if rate is not None else "no pace yet"
    else:
        short = budget is not None and done < (1 - PLAN_SLACK) * budget[0]  # a Stop between
        stopped = runs.empty or short or bool(cut_short(runs, rung_step).any())  # phases
        state = "stopped" if stopped else "finished"
    left = None
    if state == "training" and budget is not None:
        # at least what the runs in flight have left (the plan's count is approximate: at
        # the end its remainder can be less)
        running = ~runs["status"].isin(TERMINAL).to_numpy()
        in_flight = np.maximum(planned_steps - trained, 0)[running].sum() / per_run
        since = max(0.0, now - last_seen)  # trained since the last record, at the same pace
        left = tuple(max(0.0, max(b - done, in_flight) * per_run / rate - since) for b in budget)
    fraction = (
        1.0 if state == "finished" else min(1.0, done / budget[1]) if budget and budget[1] else 0.0
    )
    return Pace(
        done=done,
        planned=None if budget is None else (float(budget[0]), float(budget[1])),
        fraction=fraction,
        seconds_left=left,
        steps_per_second=rate,
        state=state,
        text=_text(state, done, budget, left, alive),
    )


def _alive_seconds(runs: pd.DataFrame) -> tuple[float, float]:
    """How long some run of the group was alive (the union of each run's created → ended,
    or → last heartbeat while it trains), and the last time any run recorded (s since the
    epoch; 0 without runs)."""
    if runs.empty:
        return 0.0, 0.0
    start = _seconds(runs["created"])
    end = np.where(runs["ended"].notna(), _seconds(runs["ended"]), _seconds(runs["heartbeat"]))
    end = np.where(np.isnan(end), start, np.maximum(end, start))
    order = np.argsort(start)
    total, reach = 0.0, -math.inf
    for s, e in zip(start[order], end[order]):
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return float(total), float(np.nanmax(end))


def _seconds(times: pd.Series) -> np.ndarray:
    """UTC timestamps (``store.runs``' time columns) as seconds since the epoch (NaN: none)."""
    return (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(float)


def _text(
    state: str,
    done: float,
    budget: tuple[float, float] | None,
    left: tuple[float, float] | None,
    alive: float,
) -> str:
    """The page's line: ``About 6–9 min left (12.3 of 29.3–33.3 run-equivalents trained).``"""
    if budget is None:
        of = f"{done:.1f} run-equivalents trained; no plan stored"
    else:
        low, high = budget
        plan = f"{low:.1f}" if math.isclose(low, high) else f"{low:.1f}–{high:.1f}"
        of = f"{done:.1f} of {plan} run-equivalents trained"
    if state == "finished":
        return f"Finished: {done:.1f} run-equivalents trained in {_duration(alive)}."
    if state == "stopped":
        return f"Not training: {of}."
    if state == "no pace yet":
        return f"No pace yet: the first steps are still to be recorded ({of})."
    if left is None:
        return f"Training ({of}); no plan to measure the time left against."
    said = _left(*left)
    return f"{said[0].upper()}{said[1:]} ({of})."


def _left(low: float, high: float) -> str:
    """``about 6–9 min left``, ``under a minute left``, ``about 1.5–2 h left``."""
    if high < 60:
        return "under a minute left"
    if high < 90 * 60:
        lo, hi = max(1, round(low / 60)), max(1, round(high / 60))
        return f"about {lo} min left" if lo == hi else f"about {lo}–{hi} min left"
    lo, hi = f"{low / 3600:.1f}".removesuffix(".0"), f"{high / 3600:.1f}".removesuffix(".0")
    return f"about {lo} h left" if lo == hi else f"about {lo}–{hi} h left"


def _duration(seconds: float) -> str:
    """``40 s``, ``12 min``, ``1.5 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
