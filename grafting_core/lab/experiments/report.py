"""A stored comparison as a Markdown report: the protocol it ran (search space, tuning and
reporting seeds), its controls, the tuned arms and each graft's verdict with its
position and 95% CI. Every number comes from the store (``read_comparison``), so RESULTS
quotes this output rather than numbers typed by hand.

    python -m grafting_core report compare-20261207-... > report.md
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.compare import read_comparison
from grafting_core.lab.experiments.comparison_plan import (
    LONGEST_WARMUP,
    comparison_budget,
    comparison_request,
)
from grafting_core.lab.experiments.comparison_reading import (
    ci_texts,
    control_text,
    graft_name,
    positions_shown,
)
from grafting_core.lab.experiments.halving_check import halving_check
from grafting_core.lab.experiments.ratio_study import (
    STUDY_ROLE,
    static_ratio_table,
    study_reading,
    study_verdicts_text,
)
from grafting_core.lab.experiments.verdict import label_words
from grafting_core.lab.store.run_store import RunStore


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """``frame`` as a GitHub Markdown table; floats to ``digits`` significant digits."""

    def cell(value) -> str:
        if isinstance(value, float | np.floating):
            return "" if np.isnan(value) else f"{value:.{digits}g}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows])


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds))


def comparison_report(store: RunStore, group: str, *, metric: str = "val_loss") -> str:
    """The comparison ``group`` as Markdown (see the module's docstring)."""
    request = comparison_request(store, group)
    result = read_comparison(store, group, metric=metric)
    parts = [f"## Comparison `{group}`", ""]
    if request is not None:
        base, plan = request["base"], request["plan"]
        tuning = plan.tune_seeds or request["seeds"]
        ranking = plan.ranking_seeds(tuning)
        runs = store.runs(group=group)
        own = runs[runs["role"] != STUDY_ROLE]  # the comparison's runs, not a study's
        low, high = comparison_budget(request)
        parts += [
            f"- task: {base.custom or base.dataset}, model {base.model or 'default'}, "
            f"{base.steps} steps, batch {base.batch_size}, {base.schedule} schedule",
            "- optimizers (each sweep centred on its lr): "
            + "; ".join(
                f"{label} = {name} {hp}" for label, (name, hp) in request["optimizers"].items()
            ),
            f"- search: {plan.points} lrs × {plan.factor:.3g} apart (up to {plan.extensions} "
            "more past an edge)"
            + (
                f" × warm-ups {', '.join(f'{w:.0%}' for w in plan.warmups)} of the steps"
                + (
                    f" (twice the longest, up to {LONGEST_WARMUP:.0%}, where a best sat there)"
                    if plan.longer_warmups()
                    else ""
                )
                if plan.warmups
                else f", warm-up {base.warmup_steps} steps"
            )
            + (
                f", halved at {plan.rung:.0%} of the steps (each warm-up's "
                + ("best lr goes on" if plan.keep == 1 else f"best {plan.keep} lrs go on")
                + (
                    f"; every setting to the rung on tuning seed{'s' if len(ranking) > 1 else ''}"
                    f" {_seeds(ranking)}, the leaders to the end on every tuning seed)"
                    if len(ranking) < len(tuning)
                    else ")"
                )
                if plan.rung
                else ""
            ),
            "- tuning seeds: "
            + (_seeds(plan.tune_seeds) if plan.tune_seeds else "the reporting seeds")
            + " (the best mean over them is chosen"
            + (
                "; an lr whose next lr up diverged at that warm-up is backed off from"
                if plan.back_off
                else ""
            )
            + f"); reporting seeds: {_seeds(request['seeds'])}",
            f"- metric: final {metric}; verdicts paired by seed, 95% CI (Holm over the grafts "
            "judges each at a stricter level, shown with it; each control at 5% on its own), "
            "margin ±0.25",
            f"- cost: {len(own)} runs, {own['last_step'].sum() / base.steps:.1f} "
            f"run-equivalents trained (Σ last step ÷ {base.steps}; the plan said "
            f"{low:.1f}–{high:.1f})"
            + (
                f"; a static-ratio study added {len(runs) - len(own)} runs (below)"
                if len(own) < len(runs)
                else ""
            ),
            "",
        ]
    if not result.controls.empty:
        parts += [control_text(result.controls), ""]
    best = result.sweep[result.sweep["best"]].set_index("arm")
    tuned = result.arms[result.arms["role"] == "tuned"]
    if not tuned.empty:
        rows = []
        for row in tuned.itertuples():
            edge = []
            if row.arm in best.index and best.loc[row.arm, "at_edge"]:
                edge.append("lr")
            if row.arm in best.index and best.loc[row.arm, "warmup_at_edge"]:
                edge.append("warm-up")
            rows.append(
                {
                    "arm": row.arm,
                    "lr": row.lr,
                    "warm-up": int(best.loc[row.arm, "warmup"]) if row.arm in best.index else "",
                    "mean": row.mean,
                    "std": row.std,
                    "seeds": row.seeds,
                    "best at the edge of": ", ".join(edge) or "no",
                }
            )
        parts += ["### Tuned arms", "", markdown_table(pd.DataFrame(rows)), ""]
    if not result.verdicts.empty:
        v = result.verdicts
        table = pd.DataFrame(
            {
                "graft": [
                    graft_name(m, d, g)
                    for m, d, g in zip(v["magnitude"], v["direction"], v["grafted"])
                ],
                "M#D mean": v["graft_mean"],
                "M#D std": v["graft_std"],
                "M#D median": v["graft_median"],
                "diverged": v["graft_diverged"],
                "M mean": v["magnitude_mean"],
                "D mean": v["direction_mean"],
                "position": positions_shown(v),
                "CI (its level)": ci_texts(v),
                "verdict": [
                    label_words(label, m, d)
                    for label, m, d in zip(v["label"], v["magnitude"], v["direction"])
                ],
                "Holm p": v["p_holm"],
            }
        )
        parts += ["### Verdicts (position 0 = M, 1 = D)", "", markdown_table(table), ""]
    sweep = result.sweep.assign(
        mark=np.where(
            result.sweep["best"],
            "best",
            np.where(
                result.sweep["pruned"] > 0,
                "pruned at the rung",
                np.where(result.sweep["stability_edge"], "next lr up diverged", ""),
            ),
        )
    )
    columns = ["arm", "lr", "warmup", "seeds", "failed", "mean", "std", "mark"]
    parts += ["### Search (tuning seeds)", "", markdown_table(sweep[columns]), ""]
    checked = halving_check(store, group, metric=metric)
    if not checked.empty:
        parts += [
            "### Successive halving, checked on this full search",
            "",
            "What halving at each evaluated step would have chosen (each warm-up's best lr "
            "there, ranked on the first tuning seed, then the best final mean over the tuning "
            "seeds), against this search's choice; regret = the difference of final means.",
            "",
            markdown_table(checked),
            "",
        ]
    parts += study_report(store, group, metric=metric)
    if result.excluded:
        parts += [
            f"{result.excluded} runs made with other settings are left out of every table.",
            "",
        ]
    return "\n".join(parts)


def study_report(store: RunStore, group: str, *, metric: str = "val_loss") -> list[str]:
    """The static-ratio studies of comparison ``group`` as Markdown lines (none if it has
    none): per M#D pair studied, ``static_ratio_table``'s means, its reading, each arm's
    verdict between tuned D (0) and tuned M (1) with its CI, and the verdicts in a line."""
    runs = store.runs(group=group)
    if not (runs["role"] == STUDY_ROLE).any():
        return []
    grafts = runs[(runs["role"] == "graft") & (runs["status"] == "finished")]
    parts = []
    for magnitude, direction in dict.fromkeys(
        zip(grafts["magnitude_arm"], grafts["direction_arm"])
    ):
        table = static_ratio_table(
            store, group, magnitude=magnitude, direction=direction, metric=metric
        )
        static = table[table["role"] == STUDY_ROLE] if not table.empty else table
        if static.empty:
            continue
        means = ["arm", "mean", "std", "median", "seeds", "failed", "gap_closed", "state_bytes"]
        verdicts = pd.DataFrame(
            {
                "arm": static["arm"],
                "position": positions_shown(static),
                "CI (its level)": ci_texts(static),
                "verdict": static["verdict"],
                "alone (95%)": static["alone"],
                "Holm p": static["p_holm"],
            }
        )
        parts += [
            f"### Static ratios from {graft_name(magnitude, direction)}: {direction} with "
            f"per-layer lrs, between tuned {direction} (0) and tuned {magnitude} (1)",
            "",
            f"Final {metric} over the reporting seeds (failed: seeds that diverged or failed, "
            "left out of the mean; gap_closed: the share of the gap from tuned "
            f"{direction} to tuned {magnitude} closed, on the means).",
            "",
            markdown_table(table[means]),
            "",
            f"Reading (means): {study_reading(table, magnitude, direction)}",
            "",
            markdown_table(verdicts),
            "",
            f"Verdicts: {study_verdicts_text(table, magnitude, direction)}",
            "",
        ]
    return parts
