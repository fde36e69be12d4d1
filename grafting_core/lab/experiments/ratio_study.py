"""Static ratios done right: windows, per-layer vs one scalar, next to tuned M and tuned D.

The revised grafting paper trains plain SGD with static per-layer learning rates lr·c_l read
off an Adam#SGD run, under a global warm-up + decay schedule, and finds it trains like Adam
with SGD's optimizer memory. This study takes the grafted runs of a tuned comparison
(``compare.compare``: M#D at M's tuned lr, one per seed), measures c over several windows of
each, per layer and as one global scalar, trains D with them (the comparison's schedule on
top; the source run's schedule is divided out of the ratios), and sets each next to tuned M
and tuned D with its optimizer memory. All runs join the comparison's group.

    table = static_ratio_study(store, comparison.group, magnitude="adam", direction="sgd")

One function per user action, for the page, the command line and the notebooks alike:
``plan_study`` (what Start trains, measuring nothing), ``start_study`` (measure, store the
ratios under content-addressed names, queue on the caller's executor), and the readings
``static_ratio_table`` (means and each arm's verdict), ``study_reading`` (on the means) and
``study_verdicts_text`` (the verdicts).

    python -m grafting_core ratio-study GROUP --magnitude adam --direction sgd
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grafting_core import StaticRatios
from grafting_core.lab.experiments.analysis import static_ratios_from_run
from grafting_core.lab.experiments.common import (
    Progress,
    final_by_seed,
    final_metrics,
    run_all,
)
from grafting_core.lab.experiments.static_ratios import (
    ratios_reference,
    referenced_ratios,
    source_of,
    store_ratios,
)
from grafting_core.lab.experiments.verdict import ALPHA, MARGIN, holm_judgments, judge
from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import Executor
from grafting_core.lab.runs.jobs import queue_runs
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
#: The role of a study's runs in the group.
STUDY_ROLE = "static_ratios"
#: What a study's verdicts show, per static-ratio arm (the command line, the page, a report).
STUDY_VERDICT_COLUMNS = (
    "arm",
    "position",
    "ci_low",
    "ci_high",
    "ci_level",
    "p_holm",
    "verdict",
    "alone",
)
#: The verdict columns ``static_ratio_table`` adds (``judge_study``'s, less ``variant``).
JUDGED = (
    "position",
    "ci_low",
    "ci_high",
    "ci_level",
    "p_holm",
    "label",
    "verdict",
    "alone",
    "alone_p",
    "alone_low",
    "alone_high",
    "paired",
    "margin",
    "reason",
)


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


@dataclass(frozen=True)
class StudyPlan:
    """What a study's Start trains: one run of D per source graft (one per seed), window and
    scope in ``todo`` that the group has not trained (or is not training) yet."""

    group: str
    magnitude: str
    direction: str
    windows: tuple[str, ...]
    scopes: tuple[str, ...]
    statistic: str
    sources: tuple[str, ...]  # the comparison's finished M#D grafts
    todo: tuple[tuple[str, str, str], ...]  # (source run, window, scope)

    @property
    def count(self) -> int:
        return len(self.todo)

    def describe(self) -> str:
        """What Start trains, in one line (or that there is nothing new)."""
        shape = (
            f"{len(self.windows)} window{'s' * (len(self.windows) != 1)} × "
            f"{len(self.scopes)} scope{'s' * (len(self.scopes) != 1)} × "
            f"{len(self.sources)} seed{'s' * (len(self.sources) != 1)}"
        )
        if not self.todo:
            return f"nothing new to train ({shape}, all trained or training)"
        trained = len(self.windows) * len(self.scopes) * len(self.sources) - self.count
        return (
            f"{self.count} run{'s' * (self.count != 1)} of {self.direction} with static "
            f"ratios from {self.magnitude}#{self.direction} ({shape}"
            + (f", {trained} trained already" if trained else "")
            + f") in comparison {self.group}"
        )


def plan_study(
    store: RunStore,
    group: str,
    *,
    magnitude: str = "adam",
    direction: str = "sgd",
    windows: Sequence[str] = tuple(WINDOWS),
    scopes: Sequence[str] = SCOPES,
    statistic: str = "median",
) -> StudyPlan:
    """The runs a static-ratio study of comparison ``group`` would train, without measuring
    or writing anything. Arms the group already has (same source run, window and scope;
    finished or training) are left out. Raises ValueError on no or unknown windows or scopes
    and on a group without a finished M#D graft."""
    if not windows or not scopes:
        raise ValueError("Choose at least one window and one scope")
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"Invalid scopes {bad} (valid: {', '.join(SCOPES)})")
    unknown = [w for w in windows if w not in WINDOWS]
    if unknown:
        raise ValueError(f"Invalid windows {unknown} (valid: {', '.join(WINDOWS)})")
    sources = tuple(_sources(store, group, magnitude, direction)["run_id"])
    runs = store.runs(group=group)
    kept = runs[(runs["role"] == STUDY_ROLE) & runs["status"].isin(["finished", "running"])]
    trained = set(zip(kept["config.static_ratios"].map(_source_of), kept["arm_variant"]))
    todo = tuple(
        (source, window, scope)
        for source in sources
        for window in windows
        for scope in scopes
        if (source, ratio_variant(window, scope)) not in trained
    )
    return StudyPlan(
        group, magnitude, direction, tuple(windows), tuple(scopes), statistic, sources, todo
    )


def _measured(store: RunStore, plan: StudyPlan) -> list[tuple[PlannedRun, StaticRatios]]:
    """Each planned arm's run, its ratios measured (nothing is written)."""
    planned = []
    for source, window, scope in plan.todo:
        config = RunConfig.from_dict(store.run(source)["config"])
        ratios = static_ratios_from_run(
            store,
            source,
            window=window_of(window, config),
            statistic=plan.statistic,
            per_layer=scope == "per_layer",
        )
        arm = Arm(STUDY_ROLE, plan.direction, variant=ratio_variant(window, scope))
        run = config.replace(
            magnitude=config.direction,
            magnitude_hparams={**config.direction_hparams, "lr": ratios.base_lr},
            direction="",
            direction_hparams={},
            grafted=[],
            static_ratios=ratios_reference(source, ratios),
            name=arm.label,
        )
        planned.append((PlannedRun(run, arm), ratios))
    return planned


def start_study(
    store: RunStore,
    plan: StudyPlan,
    executor: Executor | None,
    *,
    wait: bool = False,
    progress: Progress | None = None,
) -> list[str]:
    """Measure the plan's ratios, store each on its source under a content-addressed name
    (never replaced), record the runs in the comparison's group and queue them on
    ``executor`` (``wait``: train them before returning, inline without an executor). A run
    the group has with the same config is kept, or resumed if it was stopped. Returns the
    ids queued (``wait``: every planned run's)."""
    measured = _measured(store, plan)
    for (config, _), ratios in measured:
        store_ratios(store, source_of(config.static_ratios), ratios)
    planned = [run for run, _ in measured]
    if wait or executor is None:
        return run_all(
            store,
            planned,
            group=plan.group,
            kind=STUDY_KIND,
            executor=executor,
            progress=progress,
            reuse=True,
        )
    return queue_runs(store, executor, planned, group=plan.group, kind=STUDY_KIND, reuse=True)


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
    """Train the runs of ``plan_study`` in ``group`` (the comparison's) and return
    ``static_ratio_table``. Arms the group already has are not trained again; one stopped or
    interrupted resumes."""
    plan = plan_study(
        store,
        group,
        magnitude=magnitude,
        direction=direction,
        windows=windows,
        scopes=scopes,
        statistic=statistic,
    )
    start_study(store, plan, executor, wait=True, progress=progress)
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


def _current_sources(runs: pd.DataFrame, magnitude: str, direction: str) -> set[str]:
    """The group's M#D grafts at the tuned lrs: a static-ratio run measured on a graft that a
    continued comparison superseded (another tuned lr), or on another pair's graft (a 3×3's
    adagrad#sgd beside adam#sgd), belongs to no arm of this pair's table."""
    grafts = runs[
        (runs["role"] == "graft")
        & (runs["magnitude_arm"] == magnitude)
        & (runs["direction_arm"] == direction)
    ]
    return set(grafts["run_id"])


def study_finals(
    store: RunStore,
    group: str,
    *,
    magnitude: str = "adam",
    direction: str = "sgd",
    metric: str = "val_loss",
) -> pd.DataFrame:
    """One row per run the study of ``group`` reads, ended (finished, diverged or failed):
    tuned M, tuned D and each static-ratio run of D measured on the group's current M#D
    grafts; its ``role``, ``magnitude_arm``, ``variant`` ("" for a tuned arm), ``seed``,
    ``status``, final ``metric`` and ``optimizer_state_bytes``."""
    runs = store.runs(group=group)
    chosen = runs[
        ((runs["role"] == "tuned") & runs["magnitude_arm"].isin([magnitude, direction]))
        | (
            (runs["role"] == STUDY_ROLE)
            & (runs["magnitude_arm"] == direction)
            & runs["config.static_ratios"]
            .map(_source_of)
            .isin(_current_sources(runs, magnitude, direction))
        )
    ]
    table = final_metrics(
        store, chosen["run_id"].tolist(), metrics=(metric, "optimizer_state_bytes"), runs=chosen
    )
    by_id = chosen.set_index("run_id").loc[table["run_id"]]
    table["variant"] = by_id["arm_variant"].fillna("").to_numpy()
    table["seed"] = by_id["config.seed"].to_numpy(int)
    return table[table["status"].isin(("finished", *FAILED))].reset_index(drop=True)


def verdict_words(label: str, magnitude: str, direction: str) -> str:
    """A static-ratio arm's ``judge`` label in the study's words: it is judged between tuned
    D (the judge's M, position 0) and tuned M (the judge's D, position 1), so "like M" reads
    "like tuned sgd" for an Adam#SGD study."""
    if label.endswith(" M"):
        return f"{label[:-1]}tuned {direction}"
    if label.endswith(" D"):
        return f"{label[:-1]}tuned {magnitude}"
    return label


def judge_study(
    finals: pd.DataFrame,
    magnitude: str,
    direction: str,
    *,
    metric: str = "val_loss",
    margin: float = MARGIN,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Each static-ratio arm of ``study_finals`` judged like a graft between tuned D (position
    0) and tuned M (position 1) with ``verdict.judge``: paired by seed (every arm of a seed
    shares its init and batches), Holm over the study's arms. One row per arm (``variant``):
    ``position`` (on the means, the share of the gap it closed), ``ci_low``/``ci_high`` at
    ``ci_level`` (Holm's: the j-th most significant of k arms at α/(k − j + 1)), ``p_holm``,
    ``label`` (a ``verdict.LABELS`` string), ``verdict`` (in the study's words), ``reason``;
    and the arm judged alone at α: ``alone`` (its words), ``alone_p``, ``alone_low``,
    ``alone_high``."""
    tuned = finals[finals["role"] == "tuned"]
    static = finals[finals["role"] == STUDY_ROLE]
    variants = list(dict.fromkeys(static["variant"]))
    if not variants:
        return pd.DataFrame()
    d_seeds = final_by_seed(tuned[tuned["magnitude_arm"] == direction], metric)
    m_seeds = final_by_seed(tuned[tuned["magnitude_arm"] == magnitude], metric)
    alone = [
        judge(
            d_seeds,
            m_seeds,
            final_by_seed(static[static["variant"] == v], metric),
            margin=margin,
            alpha=alpha,
        )
        for v in variants
    ]
    rows = []
    for variant, held, own in zip(variants, holm_judgments(alone, alpha), alone):
        rows.append(
            {
                "variant": variant,
                "position": held.position,
                "ci_low": held.ci[0],
                "ci_high": held.ci[1],
                "ci_level": 1 - held.alpha,
                "p_holm": held.as_row()["p_holm"],
                "label": held.label,
                "verdict": verdict_words(held.label, magnitude, direction),
                "alone": verdict_words(own.label, magnitude, direction),
                "alone_p": own.p,
                "alone_low": own.ci[0],
                "alone_high": own.ci[1],
                "paired": held.paired,
                "margin": margin,
                "reason": held.reason,
            }
        )
    return pd.DataFrame(rows)


def static_ratio_table(
    store: RunStore,
    group: str,
    *,
    magnitude: str = "adam",
    direction: str = "sgd",
    metric: str = "val_loss",
    margin: float = MARGIN,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Tuned M, tuned D and every static-ratio arm of ``group``: mean, median and std of
    ``metric`` over its finished seeds (``seeds``), ``failed``: its seeds that diverged or
    failed (the mean leaves them out), optimizer state bytes, ``gap_closed`` = (D − arm) /
    (D − M) (1 = as good as M; NaN when tuned D is already as good as tuned M), and each
    static-ratio arm's verdict (``judge_study``'s columns: position with its CI, Holm over
    the arms; NaN and "" on the tuned rows).
    A static-ratio arm names its ``window`` and ``scope`` (its ratios are the source run's
    artifact ``static_ratios.{window}.{scope}``); only runs measured on the group's current
    M#D grafts count (not on grafts a continued comparison superseded, nor another pair's)."""
    finals = study_finals(store, group, magnitude=magnitude, direction=direction, metric=metric)
    rows = []
    for (role, arm, variant), cell in finals.groupby(["role", "magnitude_arm", "variant"]):
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
                "median": finished[metric].median(),
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
    judged = judge_study(finals, magnitude, direction, metric=metric, margin=margin, alpha=alpha)
    if judged.empty:
        judged = pd.DataFrame(columns=["variant", *JUDGED])
    out = out.merge(judged, on="variant", how="left")
    tuned_rows = out["role"] == "tuned"
    out.loc[tuned_rows, ["label", "verdict", "alone", "reason"]] = ""
    return out.sort_values(["role", "mean"], ascending=[False, True]).reset_index(drop=True)


def best_static_arm(table: pd.DataFrame) -> tuple[pd.Series | None, pd.DataFrame]:
    """The static-ratio arm of ``static_ratio_table`` that closed the most of the gap among
    those with no seed that diverged or failed (None if there is none), and the arms that
    closed more on their finished seeds but diverged or failed on some (best first)."""
    static = table[table["role"] == STUDY_ROLE].dropna(subset=["gap_closed"])
    steady = static[static["failed"] == 0]
    if steady.empty:
        return None, static[static["failed"] > 0].sort_values("gap_closed", ascending=False)
    best = steady.loc[steady["gap_closed"].idxmax()]
    better = static[static["gap_closed"] > best["gap_closed"]]
    return best, better.sort_values("gap_closed", ascending=False)


def study_reading(table: pd.DataFrame, magnitude: str, direction: str) -> str:
    """One plain-text line on ``static_ratio_table``: how far the best static-ratio arm (of
    those that failed on no seed) moved tuned D towards tuned M, with its share of M's
    optimizer memory; or that there is no gap, nothing to read yet, or that no arm did better
    than tuned D. Arms that closed more only on their finished seeds are named apart."""
    tuned = (
        table[table["role"] == "tuned"].set_index("arm")
        if not table.empty
        else pd.DataFrame(columns=["mean", "state_bytes"])
    )
    if {magnitude, direction} <= set(tuned.index) and (
        tuned.loc[magnitude, "mean"] >= tuned.loc[direction, "mean"]
    ):
        return (
            f"tuned {direction} ({tuned.loc[direction, 'mean']:.4g}) is already as good as "
            f"tuned {magnitude} ({tuned.loc[magnitude, 'mean']:.4g}): there is no gap for the "
            "static ratios to close."
        )
    best, unsteady = best_static_arm(table) if not table.empty else (None, table)
    caveat = "".join(
        f" {row['arm']} closed {row['gap_closed']:.0%} on its finished seeds, but diverged "
        f"or failed on {row['failed']} of {row['failed'] + row['seeds']}."
        for _, row in unsteady.iterrows()
    )
    if best is None:
        return (
            f"no gap to read yet: it needs tuned {magnitude}, tuned {direction} and a "
            f"static-ratio arm that finished on every seed.{caveat}"
        )
    d_mean, m_mean = tuned.loc[direction, "mean"], tuned.loc[magnitude, "mean"]
    where = f"window {best['window']}, {best['scope']}"
    if best["gap_closed"] <= 0:
        steady = table[(table["role"] == STUDY_ROLE) & (table["failed"] == 0)]
        every = "every" if len(steady) > 1 else "the"
        return (
            f"no static-ratio arm did better than tuned {direction}: {every} arm that finished "
            f"on every seed trained {'worse than' if best['gap_closed'] < 0 else 'as'} tuned "
            f"{direction} ({d_mean:.4g}); the least bad, {best['arm']} ({where}), reached "
            f"{best['mean']:.4g} ({best['gap_closed']:.0%} of the gap to tuned {magnitude}, "
            f"{m_mean:.4g}): here the static ratios made {direction} worse, not better."
            f"{caveat}"
        )
    m_bytes = tuned.loc[magnitude, "state_bytes"]
    memory = (
        f", with {best['state_bytes'] / m_bytes:.0%} of {magnitude}'s optimizer memory"
        if m_bytes > 0
        else ""
    )
    beyond = (
        f"; it trained better than tuned {magnitude} itself ({best['mean']:.4g} vs {m_mean:.4g})"
        if best["gap_closed"] > 1
        else ""
    )
    return (
        f"{best['arm']} ({where}) closed the most of the gap from tuned {direction} to tuned "
        f"{magnitude} of the arms that finished on every seed: {best['gap_closed']:.0%} (100% "
        f"= as good as {magnitude}, 0% = no better than {direction}){memory}{beyond}.{caveat}"
    )


def study_verdicts_text(table: pd.DataFrame, magnitude: str, direction: str) -> str:
    """One plain-text line on ``static_ratio_table``'s verdicts: how the arms were judged and
    each arm's verdict with its position and CI (those that "cannot tell" counted), or that
    there is nothing to judge yet."""
    static = table[table["role"] == STUDY_ROLE] if not table.empty else table
    if static.empty or "label" not in static:
        return "no static-ratio arm to judge yet."
    k = len(static)
    how = (
        f"each arm judged between tuned {direction} (position 0) and tuned {magnitude} (1) on "
        f"its seeds, paired by seed, margin ±{static['margin'].iloc[0]:g}"
        + (f", Holm over the {k} arms" if k > 1 else "")
    )
    told = static[static["label"] != "cannot tell"].sort_values("position")
    said = [
        f"{row['arm']} {row['verdict']} (position {row['position']:.2f}, "
        f"{100 * row['ci_level']:.3g}% CI [{row['ci_low']:.2f}, {row['ci_high']:.2f}])"
        for _, row in told.iterrows()
    ]
    untold = k - len(told)
    if untold:
        said.append(f"{untold} of {k} cannot tell" if said else f"every arm cannot tell ({k})")
    return f"{how}: " + "; ".join(said) + "."


def study_groups(store: RunStore) -> pd.DataFrame:
    """Tuned comparisons with a finished graft, newest first: one row (its newest graft's)
    per group."""
    runs = store.runs(kind=STUDY_KIND)
    grafts = runs[(runs["role"] == "graft") & (runs["status"] == "finished")]
    return grafts.drop_duplicates("group")


def study_pairs(store: RunStore, group: str) -> tuple[list[str], list[str]]:
    """The M and D labels of comparison ``group``'s finished grafts, the newest graft's
    first."""
    runs = store.runs(group=group)
    grafts = runs[(runs["role"] == "graft") & (runs["status"] == "finished")]
    return list(dict.fromkeys(grafts["magnitude_arm"])), list(
        dict.fromkeys(grafts["direction_arm"])
    )


def study_runs(runs: pd.DataFrame, direction: str) -> pd.DataFrame:
    """The static-ratio runs of D among a group's ``runs`` (those ``static_ratio_table``
    reads)."""
    if runs.empty:
        return runs
    return runs[(runs["role"] == STUDY_ROLE) & (runs["magnitude_arm"] == direction)]


def study_ratios(store: RunStore, group: str, source: str, window: str, scope: str) -> dict:
    """The ratios the study of ``group`` trained with from ``source`` over ``window`` and
    ``scope`` (as stored: ``StaticRatios.from_dict`` reads them); KeyError when none."""
    runs = store.runs(group=group)
    chosen = runs[
        (runs["role"] == STUDY_ROLE)
        & (runs["arm_variant"] == ratio_variant(window, scope))
        & (runs["config.static_ratios"].map(_source_of) == source)
    ]
    for reference in chosen["config.static_ratios"]:
        if (found := referenced_ratios(store, reference)) is not None:
            return found
    raise KeyError(f"group {group!r} has no static-ratio run from {source} over {window}, {scope}")
