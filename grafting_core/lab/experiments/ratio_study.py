"""Static ratios done right: windows, per-layer vs one scalar, next to tuned M and tuned D.

The revised grafting paper trains plain SGD with static per-layer learning rates lr·c_l read
off an Adam#SGD run, under a global warm-up + decay schedule, and finds it trains like Adam
with SGD's optimizer memory. This study takes the grafted runs of a tuned comparison
(``protocol.compare``: M#D at M's tuned lr, one per seed), measures c over several windows of
each, per layer and as one global scalar, trains D with them (the comparison's schedule on
top; the source run's schedule is divided out of the ratios), and sets each next to tuned M
and tuned D with its optimizer memory. All runs join the comparison's group.

    table = static_ratio_study(store, comparison.group, magnitude="adam", direction="sgd")

``plan_static_ratio_study`` measures and plans the runs without training them (the app
queues them in its worker processes).

    python -m grafting_core ratio-study GROUP --magnitude adam --direction sgd
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.analysis import static_ratios_from_run
from grafting_core.lab.experiments.common import Progress, final_metrics, run_all
from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import Executor
from grafting_core.lab.runs.trainer import run_reference
from grafting_core.lab.store.run_store import RunStore

#: Windows of the source run, as [start, stop) steps of its config.
WINDOWS: dict[str, Callable[[RunConfig], tuple[int, int]]] = {
    "early": lambda c: (0, max(1, round(0.02 * c.steps))),  # the first 2% of the steps
    "warmup_end": lambda c: (
        max(0, c.warmup_steps - max(1, round(0.01 * c.steps))),
        min(c.steps, c.warmup_steps + max(1, round(0.01 * c.steps))),
    ),
    "whole": lambda c: (0, c.steps),
    "late": lambda c: (c.steps - max(1, round(0.1 * c.steps)), c.steps),  # the last 10%
}
SCOPES = ("per_layer", "global")
FAILED = ("diverged", "failed")  # how a seed of an arm ends without a result
#: The kind of a study's runs: those of the comparison whose group they join.
STUDY_KIND = "compare"


def window_of(name: str, config: RunConfig) -> tuple[int, int]:
    """The steps ``[start, stop)`` of window ``name`` on a run of ``config``."""
    if name not in WINDOWS:
        raise ValueError(f"Invalid window: {name!r} (valid: {', '.join(WINDOWS)})")
    return WINDOWS[name](config)


def _sources(store: RunStore, group: str, magnitude: str, direction: str) -> pd.DataFrame:
    runs = store.runs(group=group)
    sources = runs[
        (runs["role"] == "graft")
        & (runs["magnitude_arm"] == magnitude)
        & (runs["direction_arm"] == direction)
        & (runs["status"] == "finished")
    ]
    if sources.empty:
        raise ValueError(
            f"Group {group!r} has no finished {magnitude}#{direction} graft "
            "(run a tuned comparison of both first: protocol.compare)"
        )
    return sources


def plan_static_ratio_study(
    store: RunStore,
    group: str,
    *,
    magnitude: str = "adam",
    direction: str = "sgd",
    windows: Sequence[str] = tuple(WINDOWS),
    scopes: Sequence[str] = SCOPES,
    statistic: str = "median",
) -> list[PlannedRun]:
    """The runs of a static-ratio study of comparison ``group`` not trained yet: D with static
    ratios from each finished M#D graft, per window and scope. Measures each one's ratios and
    stores them as the source run's artifact ``static_ratios.{window}.{scope}``; creates no
    run. Arms the group already has (same source run, window and scope; finished or training)
    are left out. Raises ValueError, before measuring anything, on no or unknown windows or
    scopes and on a group without a finished M#D graft."""
    if not windows or not scopes:
        raise ValueError("Choose at least one window and one scope")
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"Invalid scopes {bad} (valid: {', '.join(SCOPES)})")
    unknown = [w for w in windows if w not in WINDOWS]
    if unknown:
        raise ValueError(f"Invalid windows {unknown} (valid: {', '.join(WINDOWS)})")
    sources = _sources(store, group, magnitude, direction)["run_id"]
    runs = store.runs(group=group)
    kept = (runs["role"] == "static_ratios") & runs["status"].isin(["finished", "running"])
    trained = set(runs.loc[kept, "config.static_ratios"])
    planned = []
    for source in sources:
        config = RunConfig.from_dict(store.run(source)["config"])
        for window in windows:
            span = window_of(window, config)
            for scope in scopes:
                artifact = f"static_ratios.{window}.{scope}"
                if f"run:{source}:{artifact}" in trained:
                    continue
                ratios = static_ratios_from_run(
                    store, source, window=span, statistic=statistic, per_layer=scope == "per_layer"
                )
                store.put_artifact(source, artifact, ratios.to_dict(), kind="static_ratios")
                arm = Arm("static_ratios", direction, variant=ratio_variant(window, scope))
                planned.append(
                    PlannedRun(
                        config.replace(
                            magnitude=config.direction,
                            magnitude_hparams={**config.direction_hparams, "lr": ratios.base_lr},
                            direction="",
                            direction_hparams={},
                            grafted=[],
                            static_ratios=f"run:{source}:{artifact}",
                            name=arm.label,
                        ),
                        arm,
                    )
                )
    return planned


def static_ratio_study(
    store: RunStore,
    group: str,
    *,
    magnitude: str = "adam",
    direction: str = "sgd",
    windows: Sequence[str] = tuple(WINDOWS),
    scopes: Sequence[str] = SCOPES,
    statistic: str = "median",
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Train the runs of ``plan_static_ratio_study`` in ``group`` (the comparison's) and
    return ``static_ratio_table``. Arms the group already has are not trained again; one
    stopped or interrupted resumes."""
    planned = plan_static_ratio_study(
        store,
        group,
        magnitude=magnitude,
        direction=direction,
        windows=windows,
        scopes=scopes,
        statistic=statistic,
    )
    run_all(
        store,
        planned,
        group=group,
        kind=STUDY_KIND,
        executor=executor,
        progress=progress,
        reuse=True,
    )
    return static_ratio_table(store, group, magnitude=magnitude, direction=direction)


def ratio_variant(window: str, scope: str) -> str:
    """The arm variant of static ratios from ``window`` and ``scope``: ``"early,per_layer"``."""
    return f"{window},{scope}"


def _window_and_scope(variant: str) -> tuple[str, str]:
    """The inverse of ``ratio_variant`` ("" and "" for a tuned arm)."""
    window, _, scope = variant.partition(",")
    return window, scope


def _source_of(reference: str) -> str | None:
    """The source run of a static-ratio run's ``config.static_ratios`` reference."""
    found = run_reference(reference or "", "static_ratios")
    return found[0] if found else None


def _current_sources(runs: pd.DataFrame) -> set[str]:
    """The group's grafts at the tuned lrs: a static-ratio run measured on a graft that a
    continued comparison superseded (another tuned lr) belongs to no arm of the table."""
    return set(runs.loc[runs["role"] == "graft", "run_id"])


def static_ratio_table(
    store: RunStore,
    group: str,
    *,
    magnitude: str = "adam",
    direction: str = "sgd",
    metric: str = "val_loss",
) -> pd.DataFrame:
    """Tuned M, tuned D and every static-ratio arm of ``group``: mean ± std of ``metric`` over
    its finished seeds (``seeds``), ``failed``: its seeds that diverged or failed (the mean
    leaves them out), optimizer state bytes, and ``gap_closed`` = (D − arm) / (D − M) (1 = as
    good as M; NaN when tuned D is already as good as tuned M).
    A static-ratio arm names its ``window`` and ``scope`` (its ratios are the source run's
    artifact ``static_ratios.{window}.{scope}``); only runs measured on the group's current
    grafts count (not on grafts a continued comparison superseded)."""
    runs = store.runs(group=group)
    chosen = runs[
        ((runs["role"] == "tuned") & runs["magnitude_arm"].isin([magnitude, direction]))
        | (
            (runs["role"] == "static_ratios")
            & (runs["magnitude_arm"] == direction)
            & runs["config.static_ratios"].map(_source_of).isin(_current_sources(runs))
        )
    ]
    table = final_metrics(
        store, chosen["run_id"].tolist(), metrics=(metric, "optimizer_state_bytes"), runs=chosen
    )
    table["variant"] = (
        chosen.set_index("run_id").loc[table["run_id"], "arm_variant"].fillna("").to_numpy()
    )
    table = table[table["status"].isin(("finished", *FAILED))]  # not those yet to end
    rows = []
    for (role, arm, variant), cell in table.groupby(["role", "magnitude_arm", "variant"]):
        window, scope = _window_and_scope(variant)
        finished = cell[cell["status"] == "finished"]
        rows.append(
            {
                "arm": Arm("plain" if role == "tuned" else role, arm, variant=variant).label,
                "role": role,
                "variant": variant,
                "window": window,
                "scope": scope,
                "mean": finished[metric].mean(),
                "std": finished[metric].std(),
                "seeds": len(finished),
                "failed": int(cell["status"].isin(FAILED).sum()),
                "state_bytes": finished["optimizer_state_bytes"].mean(),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    tuned = out[out["role"] == "tuned"].set_index("arm")["mean"]
    gap = tuned.get(direction, np.nan) - tuned.get(magnitude, np.nan)
    # No gap when tuned D is already as good as tuned M: nothing to close, no ratio to read
    out["gap_closed"] = (tuned.get(direction, np.nan) - out["mean"]) / gap if gap > 0 else np.nan
    return out.sort_values(["role", "mean"], ascending=[False, True]).reset_index(drop=True)


def best_static_arm(table: pd.DataFrame) -> tuple[pd.Series | None, pd.DataFrame]:
    """The static-ratio arm of ``static_ratio_table`` that closed the most of the gap among
    those with no seed that diverged or failed (None if there is none), and the arms that
    closed more on their finished seeds but diverged or failed on some (best first)."""
    static = table[table["role"] == "static_ratios"].dropna(subset=["gap_closed"])
    steady = static[static["failed"] == 0]
    if steady.empty:
        return None, static[static["failed"] > 0].sort_values("gap_closed", ascending=False)
    best = steady.loc[steady["gap_closed"].idxmax()]
    better = static[static["gap_closed"] > best["gap_closed"]]
    return best, better.sort_values("gap_closed", ascending=False)
