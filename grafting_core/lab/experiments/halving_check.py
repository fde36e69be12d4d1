"""Would successive halving have chosen what the full search chose? A check run on the store.

A comparison searched without a rung (``--rung 0``) trains every setting to the end on
every tuning seed and records its validation curve. Halving at a rung r keeps, per arm and
warm-up, the lrs that lead at step r on the ranking seeds, and then chooses among those by
the final mean over the tuning seeds. Both choices come from the same stored runs, so the
check costs nothing more: for each arm and each step where the runs were evaluated, the
setting halving would have chosen there, its final mean, and its regret against the full
search's best (0 when the two agree).

    python -m grafting_core report GROUP     # a section "Successive halving, checked"
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.common import LR_COLUMN
from grafting_core.lab.experiments.compare import at_stability_edge
from grafting_core.lab.experiments.comparison_plan import comparison_request
from grafting_core.lab.store.run_store import RunStore

COLUMNS = ["arm", "rung", "lr", "warmup", "mean", "best_lr", "best_warmup", "best_mean", "regret"]


def halving_check(
    store: RunStore, group: str, *, metric: str = "val_loss", keep: int = 1, ranking: int = 1
) -> pd.DataFrame:
    """For a comparison searched without a rung: per arm and evaluated step (a rung halving
    could have used), the setting (lr, warm-up) halving would have chosen, keeping ``keep``
    lrs per warm-up ranked on the first ``ranking`` tuning seeds, with its final mean over
    the tuning seeds; ``best_*``: the full search's choice; ``regret``: mean − best_mean.
    Empty for a group searched with a rung (its pruned settings have no end) or without
    stored settings. A run that did not finish ranks last at every step."""
    request = comparison_request(store, group)
    if request is None or request["plan"].rung:
        return pd.DataFrame(columns=COLUMNS)
    plan, steps = request["plan"], request["base"].steps
    tuning = list(plan.tune_seeds or request["seeds"])
    runs = store.runs(group=group)
    runs = runs[runs["role"].isin(["sweep_point", "tuned"]) & runs["config.seed"].isin(tuning)]
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    curves = store.metrics(runs["run_id"].tolist(), names=[metric])
    curve = curves.pivot_table(index="run_id", columns="step", values="value")
    finished = runs.set_index("run_id")["status"] == "finished"
    curve = curve.where(finished.reindex(curve.index, fill_value=False), np.inf)
    setting = pd.DataFrame(
        {
            "arm": runs["magnitude_arm"].to_numpy(),
            "lr": runs[LR_COLUMN].to_numpy(float),
            "warmup": runs["config.warmup_steps"].fillna(0).to_numpy(int)
            if "config.warmup_steps" in runs
            else 0,
            "seed": runs["config.seed"].to_numpy(int),
        },
        index=runs["run_id"].to_numpy(),
    )
    last = steps - 1
    final = curve[last] if last in curve else pd.Series(np.inf, index=curve.index)
    setting["final"] = final.reindex(setting.index).fillna(np.inf).where(finished, np.inf)
    means = setting.groupby(["arm", "lr", "warmup"])["final"].mean()
    rows = []
    for arm, arm_means in means.groupby(level="arm"):
        choosable = _backed_off(arm_means, plan.back_off)
        best = choosable.idxmin()
        ranked_on = setting[(setting["arm"] == arm) & setting["seed"].isin(tuning[:ranking])]
        for rung in [s for s in curve.columns if s < last]:
            at = curve[rung].reindex(ranked_on.index).fillna(np.inf)
            at_rung = ranked_on.assign(value=at).groupby(["lr", "warmup"])["value"].mean()
            at_rung = at_rung.set_axis(
                pd.MultiIndex.from_tuples([(arm, *key) for key in at_rung.index])
            )
            leaders = [
                key
                for _, cell in at_rung.groupby(level=2)  # per warm-up
                for key in _backed_off(cell, plan.back_off).nsmallest(keep).index
            ]
            choices = choosable[choosable.index.isin(leaders)]
            chosen = (choices if np.isfinite(choices).any() else arm_means.loc[leaders]).idxmin()
            rows.append(
                {
                    "arm": arm,
                    "rung": int(rung) + 1,
                    "lr": chosen[1],
                    "warmup": chosen[2],
                    "mean": arm_means[chosen],
                    "best_lr": best[1],
                    "best_warmup": best[2],
                    "best_mean": arm_means[best],
                    "regret": arm_means[chosen] - arm_means[best],
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _backed_off(values: pd.Series, back_off: bool) -> pd.Series:
    """``values`` by (arm, lr, warm-up), less the settings whose next lr up at that warm-up
    diverged (an infinite value) when ``back_off``, as the search leaves them
    (``compare.at_stability_edge``); all of them where that leaves none finite."""
    if not back_off:
        return values
    cells = values.rename("value").reset_index()
    cells.columns = ["arm", "lr", "warmup", "value"]
    cells["diverged"] = ~np.isfinite(cells["value"])
    safe = values[~at_stability_edge(cells).to_numpy()]
    return safe if np.isfinite(safe).any() else values
