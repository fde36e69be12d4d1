"""M#D of a tuned comparison at other learning rates of M: how much a verdict owes to the lr.

A comparison grafts at M's tuned lr, as the paper does (M#D takes M's hyperparameters). That
lr is M's best *alone*; with D's direction the graft may train best at another, and where it
lands between tuned M and tuned D may move with it. :func:`graft_lr_sweep` trains M#D (and
its partial variants) at other M lrs, in the comparison's group (role ``graft_lr``, on the
seeds and settings of the comparison's own grafts), and :func:`graft_lr_table` sets each lr
next to tuned M and tuned D with :func:`~grafting_core.lab.experiments.verdict.closer_to`'s verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.common import (
    LR_COLUMN,
    Progress,
    beyond_edge,
    final_metrics,
    run_all,
)
from grafting_core.lab.experiments.verdict import closer_to
from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import Executor
from grafting_core.lab.runs.groups import record_runs
from grafting_core.lab.store.run_store import RunStore

ROLE = "graft_lr"
GRAFT_ROLES = ("graft", "partial_graft")  # the comparison's own grafts, at M's tuned lr
COLUMNS = ["variant", "lr", "tuned_lr", "seeds", "failed", "pending", "mean", "std"]
COLUMNS += ["position", "verdict", "reason", "magnitude_mean", "direction_mean", "best", "at_edge"]


def _grafts(runs: pd.DataFrame, magnitude: str, direction: str, roles) -> pd.DataFrame:
    pair = runs["magnitude_arm"].eq(magnitude) & runs["direction_arm"].eq(direction)
    return runs[pair & runs["role"].isin(roles)]


def _shown(variant: str) -> str:
    return repr(variant) if variant else "'' (the full graft)"


#: An lr more than this many times M's tuned lr away (either side) is most likely a typo.
FAR_FROM_TUNED = 1000.0


def far_from_tuned(
    store: RunStore, group: str, *, magnitude: str, direction: str, lrs: Sequence[float]
) -> list[str]:
    """One warning line for each lr of ``lrs`` more than :data:`FAR_FROM_TUNED` × above or
    below M's tuned lr in comparison ``group`` (the lr its grafts M#D were made at): such a
    graft most likely diverges or learns nothing. None when the group has no such graft
    (:func:`plan_graft_lrs` refuses it)."""
    grafts = _grafts(store.runs(group=group), magnitude, direction, GRAFT_ROLES)
    if grafts.empty:
        return []
    tuned = float(grafts[LR_COLUMN].iloc[0])
    return [
        f"warning: lr {lr:g} is {lr / tuned:.3g}× {magnitude}'s tuned lr {tuned:g} in "
        f"comparison {group} (more than {FAR_FROM_TUNED:g}× away): {magnitude}#{direction} "
        "will most likely diverge or learn nothing there"
        for lr in lrs
        if np.isfinite(lr)
        and lr > 0
        and not (tuned / FAR_FROM_TUNED <= lr <= tuned * FAR_FROM_TUNED)
    ]


def plan_graft_lrs(
    store: RunStore,
    group: str,
    *,
    magnitude: str,
    direction: str,
    lrs: Sequence[float],
    variants: Sequence[str] | None = None,
) -> list[PlannedRun]:
    """Every graft M#D of comparison ``group`` (each variant and seed) again at each lr of M
    in ``lrs`` other than its own; ``variants``: only these ("" the full graft, else the
    partial graft's layer kinds joined by "+"; None: every one the comparison has)."""
    if not lrs or any(not np.isfinite(lr) or lr <= 0 for lr in lrs):
        raise ValueError(f"Invalid lrs {list(lrs)}: at least one, each a finite number > 0")
    runs = store.runs(group=group)
    grafts = _grafts(runs, magnitude, direction, GRAFT_ROLES)
    if grafts.empty:
        made = runs[runs["role"].isin(GRAFT_ROLES)]
        pairs = sorted({f"{m}#{d}" for m, d in zip(made["magnitude_arm"], made["direction_arm"])})
        raise ValueError(
            f"No graft {magnitude}#{direction} in comparison {group!r} "
            f"(its grafts: {', '.join(pairs) or 'none'})"
        )
    known = set(grafts["arm_variant"].fillna(""))
    chosen = known if variants is None else set(variants)
    if unknown := chosen - known:
        raise ValueError(
            f"No variant {', '.join(map(repr, sorted(unknown)))} of {magnitude}#{direction} in "
            f"comparison {group!r} (its variants: {', '.join(map(_shown, sorted(known)))})"
        )
    planned = []
    for run_id, variant in zip(grafts["run_id"], grafts["arm_variant"].fillna("")):
        if variant not in chosen:
            continue
        config = RunConfig.from_dict(store.run(run_id)["config"])
        arm = Arm(ROLE, magnitude, direction, variant)
        for lr in lrs:
            if lr != config.magnitude_hparams["lr"]:
                hparams = {**config.magnitude_hparams, "lr": float(lr)}
                name = f"{arm.label} at M lr {lr:g}"
                planned.append(
                    PlannedRun(config.replace(magnitude_hparams=hparams, name=name), arm)
                )
    return planned


def queue_graft_lrs(
    store: RunStore,
    executor: Executor,
    group: str,
    *,
    magnitude: str,
    direction: str,
    lrs: Sequence[float],
    variants: Sequence[str] | None = None,
) -> list[str]:
    """:func:`plan_graft_lrs`'s runs recorded in ``group`` and handed to ``executor`` without
    waiting (the app's action); returns the ids queued: none when every one is trained
    already (those the group has are kept, a stopped one resumes)."""
    planned = plan_graft_lrs(
        store, group, magnitude=magnitude, direction=direction, lrs=lrs, variants=variants
    )
    _, todo = record_runs(store, planned, group=group, kind="compare", reuse=True)
    for run_id, resume in todo:
        executor.submit(run_id, resume=resume)
    return [run_id for run_id, _ in todo]


def graft_lr_sweep(
    store: RunStore,
    group: str,
    *,
    magnitude: str,
    direction: str,
    lrs: Sequence[float],
    variants: Sequence[str] | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Train :func:`plan_graft_lrs`'s runs in ``group`` (those it has are kept, a stopped one
    resumes) and return :func:`graft_lr_table`."""
    planned = plan_graft_lrs(
        store, group, magnitude=magnitude, direction=direction, lrs=lrs, variants=variants
    )
    run_all(
        store,
        planned,
        group=group,
        kind="compare",
        executor=executor,
        progress=progress,
        reuse=True,
    )
    return graft_lr_table(store, group, magnitude=magnitude, direction=direction)


def graft_lr_table(
    store: RunStore, group: str, *, magnitude: str, direction: str, metric: str = "val_loss"
) -> pd.DataFrame:
    """Per variant of M#D and lr of M: ``metric``'s mean and std over finished seeds, with
    ``closer_to``'s position and verdict against tuned M and tuned D. An lr where a seed
    diverged, failed or stopped has no mean (``failed`` counts them; ``verdict`` "failed");
    ``tuned_lr``: the comparison's own graft, at M's tuned lr; ``magnitude_mean``,
    ``direction_mean``: tuned M's and tuned D's; ``best``: per variant, the lowest mean
    among the lrs with no failed or pending seed; ``at_edge``: that best is the variant's
    lowest or highest lr tried (a better one may lie beyond)."""
    runs = store.runs(group=group)
    tuned = {}
    for label in (magnitude, direction):
        cell = runs[runs["role"].eq("tuned") & runs["magnitude_arm"].eq(label)]
        values = final_metrics(store, cell["run_id"].tolist(), metrics=(metric,), runs=cell)
        tuned[label] = values.loc[values["status"] == "finished", metric].to_numpy(float)
    grafts = _grafts(runs, magnitude, direction, (*GRAFT_ROLES, ROLE))
    table = final_metrics(store, grafts["run_id"].tolist(), metrics=(metric,), runs=grafts)
    config = grafts.set_index("run_id").loc[table["run_id"]]
    table["lr"] = config[LR_COLUMN].to_numpy(float)
    table["variant"] = config["arm_variant"].fillna("").to_numpy()
    table["tuned_lr"] = config["role"].isin(GRAFT_ROLES).to_numpy()
    # A continued comparison whose M lr moved onto an lr tried here grafts it again: each
    # seed counts once, the comparison's own run first.
    table["seed"] = config["config.seed"].to_numpy()
    table = table.sort_values("tuned_lr", ascending=False, kind="stable")
    table = table.drop_duplicates(["variant", "lr", "seed"])
    rows = []
    for (variant, lr), cell in table.groupby(["variant", "lr"], sort=True):
        done = cell.loc[cell["status"] == "finished", metric].to_numpy(float)
        pending = int((cell["status"] == "running").sum())
        failed = len(cell) - len(done) - pending
        judged = closer_to(done, tuned[magnitude], tuned[direction])
        if failed:
            judged |= {"verdict": "failed", "reason": f"{failed} seed(s) did not finish"}
        elif pending:
            judged |= {"verdict": "pending", "reason": f"{pending} seed(s) still training"}
        rows.append(
            {
                "variant": variant,
                "lr": lr,
                "tuned_lr": bool(cell["tuned_lr"].any()),
                "seeds": len(done),
                "failed": failed,
                "pending": pending,
                "mean": np.nan if failed else judged["graft_mean"],
                "std": np.nan if failed else judged["graft_std"],
                "position": np.nan if failed else judged["position"],
                "verdict": judged["verdict"],
                "reason": judged["reason"],
                "magnitude_mean": judged["magnitude_mean"],
                "direction_mean": judged["direction_mean"],
            }
        )
    out = pd.DataFrame(rows, columns=COLUMNS[:-2])
    out["best"] = out["at_edge"] = False
    complete = out[(out["failed"] == 0) & (out["pending"] == 0) & out["mean"].notna()]
    for variant, cell in complete.groupby("variant"):
        best = cell["mean"].idxmin()
        tried = out.loc[out["variant"] == variant, "lr"]
        out.loc[best, "best"] = True
        out.loc[best, "at_edge"] = out.loc[best, "lr"] in (tried.min(), tried.max())
    return out


def graft_extensions(
    store: RunStore, group: str, *, magnitude: str, direction: str, factor: float
) -> list[PlannedRun]:
    """For each variant of M#D whose best lr sits at the edge of the lrs tried: its grafts at
    the next lr beyond that edge, ``factor`` away (as a sweep extends)."""
    table = graft_lr_table(store, group, magnitude=magnitude, direction=direction)
    planned = []
    for row in table[table["at_edge"]].itertuples():
        tried = table.loc[table["variant"] == row.variant, "lr"].tolist()
        lr = beyond_edge(row.lr, tried, factor)
        planned += plan_graft_lrs(
            store, group, magnitude=magnitude, direction=direction, lrs=[lr], variants=[row.variant]
        )
    return planned


def tuned_grafts(store: RunStore, group: str, *, metric: str = "val_loss") -> pd.DataFrame:
    """Per graft of comparison ``group`` trained at other lrs of M (full or partial): the row of
    :func:`graft_lr_table` at its best lr, with ``magnitude`` and ``direction``."""
    runs = store.runs(group=group)
    extra = runs[runs["role"] == ROLE]
    pairs = dict.fromkeys(zip(extra["magnitude_arm"], extra["direction_arm"]))
    tables = [
        table[table["best"]].assign(magnitude=m, direction=d)
        for m, d in pairs
        for table in [graft_lr_table(store, group, magnitude=m, direction=d, metric=metric)]
    ]
    columns = ["magnitude", "direction", *COLUMNS]
    return (
        pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)
    )
