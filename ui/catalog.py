"""The Runs page's data helpers: filtering the store's run list, labels and CSV export.

Plain functions of the store's DataFrames (no widgets), so they are easy to test.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from grafting_core.lab.store.run_store import RunStore

TABLE_COLUMNS = {  # column shown -> source column of store.runs()
    "run": "run_id", "name": "name", "status": "status", "step": "last_step",
    "steps": "config.steps", "magnitude": "config.magnitude", "direction": "config.direction",
    "val_accuracy": "", "val_loss": "",  # final values, from final_metrics
    "dataset": "config.dataset", "model": "config.model", "seed": "config.seed",
    "kind": "kind", "group": "group", "created": "created",
}  # fmt: skip


def filter_runs(
    runs: pd.DataFrame, *, search: str = "", statuses: Sequence[str] = (), kinds: Sequence[str] = ()
) -> pd.DataFrame:
    """Runs whose name, id, group or optimizers contain ``search`` (any case), by status/kind."""
    keep = pd.Series(True, index=runs.index)
    if search.strip():
        columns = ("run_id", "name", "group", "config.magnitude", "config.direction")
        haystack = pd.Series("", index=runs.index)
        for column in columns:
            haystack = haystack + " " + runs[column].fillna("").astype(str).str.lower()
        keep &= haystack.str.contains(search.strip().lower(), regex=False)
    if statuses:
        keep &= runs["status"].isin(list(statuses))
    if kinds:
        keep &= runs["kind"].isin(list(kinds))
    return runs[keep]


def run_table(runs: pd.DataFrame, finals: pd.DataFrame | None = None) -> pd.DataFrame:
    """The columns a person scans, newest first, with final validation metrics when given."""
    finals = finals.set_index("run_id") if finals is not None else pd.DataFrame()
    table = pd.DataFrame(index=runs.index)
    for shown, source in TABLE_COLUMNS.items():
        if source in runs:
            table[shown] = runs[source]
        elif shown in finals:
            table[shown] = runs["run_id"].map(finals[shown])
    table["direction"] = table["direction"].replace("", "—")
    table["created"] = table["created"].dt.tz_convert(None).dt.strftime("%Y-%m-%d %H:%M:%S")
    return table.reset_index(drop=True)


def _seeds(runs: pd.DataFrame) -> list[str]:
    """`` · seed 3`` per run (empty where a run's config has no seed)."""
    seeds = runs["config.seed"] if "config.seed" in runs else pd.Series(None, index=runs.index)
    return [f" · seed {int(s)}" if pd.notna(s) else "" for s in seeds]


def run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """``run_id`` → ``name · seed 3 · status · run_id`` for pickers."""
    return {
        r: f"{n}{seed} · {s} · {r}"
        for r, n, seed, s in zip(
            runs["run_id"], runs["name"].fillna(""), _seeds(runs), runs["status"]
        )
    }


def legend_labels(runs: pd.DataFrame) -> dict[str, str]:
    """``run_id`` → its name; where names repeat, with its seed, and the id's last 4
    characters where name and seed repeat too."""
    names = runs["name"].fillna(runs["run_id"]).astype(str)
    named = names.where(~names.duplicated(keep=False), names + _seeds(runs))
    repeated = named.duplicated(keep=False)
    return {
        r: f"{n} · {r[-4:]}" if rep else n for r, n, rep in zip(runs["run_id"], named, repeated)
    }


def metrics_csv(store: RunStore, run_ids: Sequence[str]) -> str:
    """Every recorded metric of ``run_ids`` as long CSV: run_id, run_name, step, metric, value."""
    metrics = store.metrics(list(run_ids))
    names = {r: store.run(r)["name"] for r in run_ids}
    out = pd.DataFrame(
        {
            "run_id": metrics["run_id"],
            "run_name": metrics["run_id"].map(names),
            "step": metrics["step"],
            "metric": metrics["name"],
            "value": metrics["value"],
        }
    )
    return out.to_csv(index=False)
