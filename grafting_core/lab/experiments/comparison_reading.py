"""Readings of a comparison's runs as the Grid page and the CLI show them: where it stands,
what became of each sweep's lrs, the tuned lrs, the verdict table, the pairs it grafted."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.common import LR_COLUMN
from grafting_core.lab.experiments.graft_lrs import GRAFT_ROLES
from grafting_core.lab.experiments.graft_lrs import ROLE as GRAFT_LR_ROLE
from grafting_core.lab.experiments.verdict import label_words
from grafting_core.lab.runs.groups import RESUMED, TERMINAL

SWEEP_ROLES = ("sweep_point", "tuned")


def cut_short(runs: pd.DataFrame, rung_step: int = 0) -> pd.Series:
    """Which runs were stopped or interrupted before their end (a server killed, a Stop),
    and would resume: not the search's settings paused at the rung on purpose."""
    pruned = (
        runs["role"].eq("sweep_point") & runs["last_step"].eq(rung_step) if rung_step else False
    )
    return runs["status"].isin(RESUMED) & ~pruned


def phase_text(runs: pd.DataFrame, *, orchestrating: bool, rung_step: int = 0) -> str:
    """Where a comparison stands: its sweeps' runs done, then its grafts', then the
    controls', the grafts at other lrs of M (``--tune-grafts``, or the form below), then any
    other runs added since (static ratios). A run stopped or interrupted before its end is
    not done: it is counted apart (a resume trains it on); a search's setting paused at the
    rung (``rung_step``) is."""
    cut = cut_short(runs, rung_step)
    done = runs["status"].isin(TERMINAL) & ~cut
    sweeps, grafts = runs["role"].isin(SWEEP_ROLES), runs["role"].isin(GRAFT_ROLES)
    graft_lrs = runs["role"].eq(GRAFT_LR_ROLE)
    controls = runs["role"].isin(("control", "control_graft", "negative_control"))
    superseded = runs["role"].isin(("superseded", "control_superseded"))
    added = ~(sweeps | grafts | graft_lrs | controls | superseded)

    def count(part: pd.Series) -> str:
        text = f"{int((done & part).sum())} of {int(part.sum())}"
        stopped = int((cut & part).sum())
        return text + (f" ({stopped} stopped or interrupted)" if stopped else "")

    text = f"Sweeps: {count(sweeps)} runs done"
    if not grafts.any():
        return text + (
            "; the grafts start when every sweep has settled"
            if orchestrating
            else "; no grafts were started"
        )
    text += f"; grafts at M's tuned lr: {count(grafts)} done"
    if controls.any():
        text += f"; controls: {count(controls)} done"
    if graft_lrs.any():
        text += f"; grafts at other lrs of M: {count(graft_lrs)} done"
    if added.any():
        text += f"; other runs added since: {count(added)} done"
    return text


def lr_notes(runs: pd.DataFrame, arm: str) -> dict[float, str]:
    """What became of each lr of ``arm``'s sweep that has an unfinished run: "training…"
    while one is queued or training, else its runs' ends ("stopped", "diverged" ...)."""
    sweep = runs[
        runs["magnitude_arm"].eq(arm)
        & runs["role"].isin(SWEEP_ROLES)
        & runs["status"].ne("finished")
    ]
    notes = {}
    for lr, cell in sweep.groupby(LR_COLUMN):
        ends = set(cell["status"])
        notes[float(lr)] = "training…" if ends - set(TERMINAL) else " / ".join(sorted(ends))
    return notes


def graft_name(magnitude: str, direction: str, layers: str = "") -> str:
    """``sgd#adam``, or ``sgd#adam [hidden only]`` for a partial graft of those layer kinds
    (``""`` or ``"all"``: the whole graft)."""
    return f"{magnitude}#{direction}" + ("" if layers in ("", "all") else f" [{layers} only]")


def variant_name(layers: str) -> str:
    """A graft variant as the page names it: ``whole graft`` or ``[hidden only]``."""
    return f"[{layers} only]" if layers else "whole graft"


def verdict_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per graft (a pair, or a partial graft of it): the three arms' means, medians
    and stds, the position (none where M and D cannot be told apart) with its CI, the verdict
    (paired by seed, equivalence margin, Holm over the table: ``verdict.judge``) and why."""
    grafted = verdicts["grafted"] if "grafted" in verdicts else ["all"] * len(verdicts)
    return pd.DataFrame(
        {
            "pair": [
                graft_name(m, d, g)
                for m, d, g in zip(verdicts["magnitude"], verdicts["direction"], grafted)
            ],
            "M#D mean": verdicts["graft_mean"],
            "M#D median": verdicts["graft_median"],
            "M#D std": verdicts["graft_std"],
            "M mean": verdicts["magnitude_mean"],
            "M std": verdicts["magnitude_std"],
            "D mean": verdicts["direction_mean"],
            "D std": verdicts["direction_std"],
            "seeds": verdicts["graft_seeds"],
            "diverged": verdicts["graft_diverged"],
            "position": positions_shown(verdicts),
            "CI": ci_texts(verdicts),
            "verdict": [
                label_words(label, m, d)
                for label, m, d in zip(
                    verdicts["label"], verdicts["magnitude"], verdicts["direction"]
                )
            ],
            "reason": verdicts["judgment"],
        }
    )


def tuned_text(runs: pd.DataFrame, sweep: pd.DataFrame, running: bool) -> str:
    """``Tuned lrs: sgd 0.316 (best at the grid's edge ...), adam 0.00316.``: the lrs the
    comparison marked tuned (none while the sweeps train, nor when they were stopped)."""
    tuned = runs[runs["role"] == "tuned"].drop_duplicates("magnitude_arm")
    edge = sweep[sweep["best"] & sweep["at_edge"]]
    parts = [
        f"**{arm}** {lr:.3g}"
        + (
            " (best at the grid's edge: the true best may lie beyond it)"
            if arm in set(edge["arm"])
            else ""
        )
        for arm, lr in zip(tuned["magnitude_arm"], tuned[LR_COLUMN].astype(float))
    ]
    if parts:
        return "Tuned lrs: " + ", ".join(parts) + "."
    return (
        "No tuned lr yet: each is chosen when its sweep has settled."
        if running
        else "No tuned lr: the comparison ended before its sweeps did."
    )


def graft_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The comparison's M#D pairs, as (M label, D label), in the order they were made."""
    grafts = runs[runs["role"].isin(GRAFT_ROLES)]
    return list(dict.fromkeys(zip(grafts["magnitude_arm"], grafts["direction_arm"])))


def positions_shown(verdicts: pd.DataFrame) -> pd.Series:
    """Each verdict's position, or NaN where its CI is unbounded: M and D cannot be told
    apart there, so (M#D − M) / (D − M) divides by noise and its estimate means nothing."""
    return verdicts["position"].where(np.isfinite(verdicts["ci_low"].astype(float)))


def ci_texts(verdicts: pd.DataFrame) -> list[str]:
    """Each verdict's CI with its level: ``[0.33, 1.06] at 97.5%`` (95%, or the stricter level
    Holm judged it at)."""
    return [
        f"[{lo:.2f}, {hi:.2f}] at {level:.3g}%"
        for lo, hi, level in zip(
            verdicts["ci_low"], verdicts["ci_high"], 100 * verdicts["ci_level"]
        )
    ]


def control_text(controls: pd.DataFrame) -> str:
    """The controls' readings, said first in every report: ``""`` when there are none, else
    whether the positive one came out "like M" and the negative one "like D" (the lab can
    see magnitude, and direction, decide where each must) and, when not, what that means
    for the verdicts below."""
    lines = []
    for row in controls.itertuples():
        m, d = row.magnitude, row.direction
        reading = (
            f"{label_words(row.label, m, d)}, position {row.position:.2f}, 95% CI "
            f"[{row.ci_low:.2f}, {row.ci_high:.2f}]."
        )
        if row.control == "positive":
            said = (
                f"Positive control {m}#{d} (M = {d} at a tenth of its tuned lr, D = tuned {d}: "
                f"they differ only in step size, so M#D is M step for step): {reading}"
            )
            # a tenth of the lr trained better, and the gap is significant (the CI bounded)
            if math.isfinite(row.ci_low) and row.magnitude_mean < row.direction_mean:
                said += (
                    f" Note: {d} at a tenth of its tuned lr beat tuned {d} on these seeds "
                    f"({row.magnitude_mean:.4g} against {row.direction_mean:.4g}): the search "
                    f"did not find {d}'s best lr here."
                )
            failed = (
                " It did NOT come out like M: at these seeds and steps the lab cannot show "
                "magnitude deciding even where it must, so no verdict below can either."
            )
        else:
            said = (
                f"Negative control ({m})#{d} (M = the graft {m}, D = tuned {d}: they take the "
                f"same step sizes and differ only in direction, so M#D is D step for step): "
                f"{reading}"
            )
            failed = " It did NOT come out like D: " + (
                f"{m} and {d} train too much alike here to tell them apart (their gap is "
                "not significant, the CI unbounded), so this control shows nothing."
                if not math.isfinite(row.ci_low)
                else "the lab cannot show direction deciding even where it must, so no "
                "verdict below can either."
            )
        lines.append(said if row.passed else said + failed)
    return " ".join(lines)
