"""The grid experiment: every M#D pair of a set of optimizers, several seeds, and its reading."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.common import (
    OptimizerChoice,
    Progress,
    final_metrics,
    graft_run,
    new_group,
    run_all,
)
from grafting_core.lab.runs.arms import PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import Executor
from grafting_core.lab.store.run_store import RunStore


def grid_configs(
    base: RunConfig, optimizers: Mapping[str, OptimizerChoice], seeds: Sequence[int] = (0,)
) -> list[PlannedRun]:
    """Every M#D pair of ``optimizers`` (label → (name, hparams)) for each seed, M-major."""
    if len(optimizers) < 2:
        raise ValueError(f"A grid needs at least two optimizers (got {len(optimizers)})")
    if not seeds:
        raise ValueError("A grid needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Invalid seeds {list(seeds)}: each seed may appear once")
    return [
        graft_run(base, (m, optimizers[m]), (d, optimizers[d]), seed=seed)
        for m in optimizers
        for d in optimizers
        for seed in seeds
    ]


def grid(
    store: RunStore,
    base: RunConfig,
    optimizers: Mapping[str, OptimizerChoice],
    seeds: Sequence[int] = (0,),
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> tuple[str, pd.DataFrame]:
    """Every M#D pair of ``optimizers`` (label → (name, hparams)) for each seed."""
    configs = grid_configs(base, optimizers, seeds)
    group = new_group("grid")
    run_all(store, configs, group=group, kind="grid", executor=executor, progress=progress)
    return group, grid_table(store, group)


def grid_table(store: RunStore, group: str) -> pd.DataFrame:
    """A grid's runs: magnitude, direction, seed, status and final metrics."""
    runs = store.runs(group=group).iloc[::-1]  # creation order: the optimizers' order
    table = final_metrics(store, runs["run_id"].tolist())
    arms = runs.set_index("run_id").loc[table["run_id"]]
    table["magnitude"] = arms["magnitude_arm"].to_numpy()
    plain = (arms["direction_arm"].fillna("") == "").to_numpy()  # A alone is the cell A#A
    table["direction"] = np.where(plain, table["magnitude"], arms["direction_arm"].to_numpy())
    table["seed"] = arms["config.seed"].to_numpy()
    return table


def grid_matrix(table: pd.DataFrame, metric: str = "val_loss") -> pd.DataFrame:
    """Mean of ``metric`` over seeds: magnitude rows × direction columns."""
    order = list(dict.fromkeys(table["magnitude"]))
    matrix = table.pivot_table(
        index="magnitude", columns="direction", values=metric, aggfunc="mean"
    )
    return matrix.reindex(index=order, columns=order)


def _mean_range(frame: pd.DataFrame) -> float:
    """Mean over rows of (max − min) among each row's finite values (rows with ≥ 2 of them)."""
    values = frame.to_numpy(dtype=float)
    spans = [np.ptp(row[np.isfinite(row)]) for row in values if np.isfinite(row).sum() >= 2]
    return float(np.mean(spans)) if spans else float("nan")


def grid_spreads(table: pd.DataFrame, metric: str = "val_loss") -> dict[str, float]:
    """How much ``metric`` varies within rows (same M), within columns (same D), across seeds.

    Each is the mean range (max − min) of the finished runs' values: ``rows`` over each M's
    row of the seed-averaged grid, ``columns`` over each D's column, ``seeds`` over each
    cell's seeds (NaN with one seed). Small ``rows`` next to large ``columns`` is the paper's
    reading: the magnitude optimizer decides the result, the direction hardly matters.
    """
    finished = table[table["status"] == "finished"]
    if finished.empty:
        nan = float("nan")
        return {"rows": nan, "columns": nan, "seeds": nan}
    matrix = grid_matrix(finished, metric)
    cells = finished.pivot_table(
        index=["magnitude", "direction"], columns="seed", values=metric, aggfunc="mean"
    )
    return {
        "rows": _mean_range(matrix),
        "columns": _mean_range(matrix.T),
        "seeds": _mean_range(cells),
    }


def grid_reading(table: pd.DataFrame, metric: str = "val_loss", *, what: str = "") -> str:
    """One sentence: do rows (same M) or columns (same D) look more alike on this grid?"""
    spread = grid_spreads(table, metric)
    what = what or metric
    rows, columns, seeds = spread["rows"], spread["columns"], spread["seeds"]
    if not (np.isfinite(rows) and np.isfinite(columns)):
        return (
            "Not enough finished runs yet to compare rows with columns (a row and a "
            "column each need two finished cells)."
        )
    numbers = (
        f"Within a row (same M, different D) {what} varies by {rows:.3g} on "
        f"average, within a column (same D, different M) by {columns:.3g}"
    )
    if rows * 1.5 <= columns:
        verdict = "Rows look alike: the magnitude optimizer decides, as the paper found"
    elif columns * 1.5 <= rows:
        verdict = (
            "Columns look alike: on this grid the direction optimizer decides, "
            "unlike the paper's finding"
        )
    else:
        verdict = "Neither rows nor columns look clearly more alike on this grid"
    if not np.isfinite(seeds):
        noise = "One seed: add seeds to see how much of this is noise."
    elif seeds >= 0.5 * max(rows, columns):
        noise = (
            f"But seeds alone move a cell by {seeds:.3g} on average, about as much: "
            "this reading is not reliable yet (add seeds or steps)."
        )
    else:
        noise = (
            f"Seeds alone move a cell by {seeds:.3g} on average, small next to "
            f"{max(rows, columns):.3g}."
        )
    return f"{verdict}. {numbers}. {noise}"


def cell_notes(table: pd.DataFrame, runs: pd.DataFrame, matrix: pd.DataFrame) -> pd.DataFrame:
    """Text for each cell without a finished value: queued, running 40%, diverged, ..."""
    progress = runs.set_index("run_id")["progress"]
    notes = pd.DataFrame("", index=matrix.index, columns=matrix.columns)
    for (m, d), cell in table.groupby(["magnitude", "direction"]):
        if m not in notes.index or d not in notes.columns:
            continue
        statuses = set(cell["status"])
        if "running" in statuses:
            done = progress.reindex(cell["run_id"]).fillna(0).mean()
            notes.loc[m, d] = f"running {done:.0%}" if done > 0 else "queued"
        elif statuses - {"finished"}:
            notes.loc[m, d] = " / ".join(sorted(statuses - {"finished"}))
    return notes
