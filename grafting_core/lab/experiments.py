"""Experiments as plain functions over the run store, shared by the CLI, app and notebooks.

- ``grid``: every M#D pair over a set of optimizers (A#A is plain A), several seeds;
- ``schedule_transfer``: M alone, D alone, online M#D, and M's recorded schedule replayed on D;
- ``static_ratio_experiment``: a short M#D window → per-layer multipliers → plain SGD with
  them, next to M and the best plain SGD of a small learning-rate sweep, with memory.

Each returns the store group id and a pandas table of final metrics; runs go to an
``Executor`` (local worker processes) or run inline when none is given.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import as_completed

import pandas as pd

from .analysis import static_ratios_from_run
from .config import RunConfig
from .executor import Executor
from .runner import create_run, execute_run
from .store import RunStore

Progress = Callable[[int, int], None]  # (runs done, runs total)
OptimizerChoice = tuple[str, dict]  # (registry name, hyperparameters)

#: Starting points that train every lab task reasonably (tune per task for real studies).
LAB_OPTIMIZERS: dict[str, OptimizerChoice] = {
    "sgd": ("sgd", {"lr": 0.1, "momentum": 0.9}),
    "adam": ("adam", {"lr": 1e-3}),
    "adagrad": ("adagrad", {"lr": 0.05}),
    "rmsprop": ("rmsprop", {"lr": 1e-3}),
    "lion": ("lion", {"lr": 1e-4}),
    "lamb": ("lamb", {"lr": 1e-2}),
}


def new_group(kind: str) -> str:
    """A readable, unique group id for one experiment's runs."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def graft_config(base: RunConfig, magnitude: tuple[str, OptimizerChoice],
                 direction: tuple[str, OptimizerChoice] | None, **changes) -> RunConfig:
    """``base`` with M (and D) set; ``direction=None`` or D equal to M gives plain M."""
    (m_label, (m_name, m_hp)) = magnitude
    plain = direction is None or direction[1] == magnitude[1]
    d_label, (d_name, d_hp) = (m_label, ("", {})) if plain else (direction[0], direction[1])
    return base.replace(magnitude=m_name, magnitude_hparams=dict(m_hp), direction=d_name,
                        direction_hparams=dict(d_hp), name=f"{m_label}#{d_label}", **changes)


def run_all(store: RunStore, configs: Sequence[RunConfig], *, group: str, kind: str,
            executor: Executor | None = None, progress: Progress | None = None) -> list[str]:
    """Create one run per config in ``group`` and train them all; returns the run ids."""
    run_ids = [create_run(store, c, kind=kind, group=group) for c in configs]
    done = 0
    if progress:
        progress(0, len(run_ids))
    if executor is None:
        for run_id in run_ids:
            try:
                execute_run(store, run_id)
            except Exception:
                pass  # recorded as failed in the store; the experiment carries on
            done += 1
            if progress:
                progress(done, len(run_ids))
        return run_ids
    for _ in as_completed([executor.submit(r) for r in run_ids]):
        done += 1
        if progress:
            progress(done, len(run_ids))
    return run_ids


def final_metrics(store: RunStore, run_ids: Sequence[str],
                  metrics: Sequence[str] = ("val_loss", "val_accuracy",
                                            "optimizer_state_bytes")) -> pd.DataFrame:
    """One row per run: name, status and the last value of each metric."""
    runs = store.runs().set_index("run_id").loc[list(run_ids)]
    table = runs[["name", "status", "last_step", "error"]].copy()
    long = store.metrics(list(run_ids), names=list(metrics))
    if not long.empty:
        last = long.sort_values("step").groupby(["run_id", "name"])["value"].last().unstack()
        table = table.join(last)
    for metric in metrics:
        if metric not in table:
            table[metric] = float("nan")
    return table.reset_index()


def grid(store: RunStore, base: RunConfig, optimizers: Mapping[str, OptimizerChoice],
         seeds: Sequence[int] = (0,), *, executor: Executor | None = None,
         progress: Progress | None = None) -> tuple[str, pd.DataFrame]:
    """Every M#D pair of ``optimizers`` (label → (name, hparams)) for each seed."""
    if len(optimizers) < 2:
        raise ValueError("A grid needs at least two optimizers")
    if not seeds:
        raise ValueError("A grid needs at least one seed")
    configs = [graft_config(base, (m, optimizers[m]), (d, optimizers[d]), seed=seed)
               for m in optimizers for d in optimizers for seed in seeds]
    group = new_group("grid")
    run_all(store, configs, group=group, kind="grid", executor=executor, progress=progress)
    return group, grid_table(store, group)


def grid_table(store: RunStore, group: str) -> pd.DataFrame:
    """A grid's runs: magnitude, direction, seed, status and final metrics."""
    runs = store.runs(group=group).iloc[::-1]  # creation order: the optimizers' order
    table = final_metrics(store, runs["run_id"].tolist())
    table[["magnitude", "direction"]] = table["name"].str.split("#", n=1, expand=True)
    table["seed"] = runs.set_index("run_id").loc[table["run_id"], "config.seed"].to_numpy()
    return table


def grid_matrix(table: pd.DataFrame, metric: str = "val_loss") -> pd.DataFrame:
    """Mean of ``metric`` over seeds: magnitude rows × direction columns."""
    order = list(dict.fromkeys(table["magnitude"]))
    matrix = table.pivot_table(index="magnitude", columns="direction", values=metric,
                               aggfunc="mean")
    return matrix.reindex(index=order, columns=order)


def schedule_transfer(store: RunStore, base: RunConfig, magnitude: tuple[str, OptimizerChoice],
                      direction: tuple[str, OptimizerChoice], seeds: Sequence[int] = (0,), *,
                      executor: Executor | None = None,
                      progress: Progress | None = None) -> tuple[str, pd.DataFrame]:
    """M alone, D alone, online M#D, then M's recorded schedule replayed onto D."""
    group = new_group("transfer")
    first = [graft_config(base, magnitude, None, seed=s) for s in seeds]
    first += [graft_config(base, direction, None, seed=s) for s in seeds]
    first += [graft_config(base, magnitude, direction, seed=s) for s in seeds]
    total = len(first) + len(seeds)
    report = (lambda done, _: progress(done, total)) if progress else None
    ids = run_all(store, first, group=group, kind="transfer", executor=executor, progress=report)
    (m_name, m_hp), (d_name, d_hp) = magnitude[1], direction[1]
    replays = [base.replace(magnitude=m_name, magnitude_hparams=dict(m_hp), direction=d_name,
                            direction_hparams=dict(d_hp), seed=s, replay=f"run:{ids[i]}",
                            name=f"replay({magnitude[0]})#{direction[0]}")
               for i, s in enumerate(seeds)]
    report = (lambda done, _: progress(len(first) + done, total)) if progress else None
    ids += run_all(store, replays, group=group, kind="transfer", executor=executor,
                   progress=report)
    return group, final_metrics(store, ids)


def static_ratio_experiment(
    store: RunStore, base: RunConfig, magnitude: tuple[str, OptimizerChoice], *,
    sgd: OptimizerChoice = ("sgd", {"lr": 0.1, "momentum": 0.9}),
    window: tuple[int, int] = (50, 200), statistic: str = "median",
    sgd_lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0), executor: Executor | None = None,
    progress: Progress | None = None,
) -> tuple[str, pd.DataFrame]:
    """M#SGD for the window, per-layer multipliers, then SGD+ratios vs M vs swept plain SGD."""
    if not 0 <= window[0] < window[1] <= base.steps:
        raise ValueError(f"Invalid window {window}: need 0 <= start < stop <= steps ({base.steps})")
    group = new_group("ratios")
    total = 3 + len(sgd_lrs)
    report = (lambda done, _: progress(done, total)) if progress else None
    short = graft_config(base, magnitude, ("sgd", sgd), steps=window[1])
    (graft_id,) = run_all(store, [short], group=group, kind="ratios", progress=report)
    ratios = static_ratios_from_run(store, graft_id, window=window, statistic=statistic)
    store.put_artifact(graft_id, "static_ratios", ratios.to_dict(), kind="static_ratios")
    name, hp = sgd
    configs = [base.replace(magnitude=name, magnitude_hparams=dict(hp), direction="",
                            direction_hparams={}, static_ratios=f"run:{graft_id}",
                            name=f"sgd+ratios({magnitude[0]})"),
               graft_config(base, magnitude, None)]
    configs += [base.replace(magnitude=name, magnitude_hparams={**hp, "lr": lr}, direction="",
                             direction_hparams={}, name=f"sgd(lr={lr:g})") for lr in sgd_lrs]
    report = (lambda done, _: progress(1 + done, total)) if progress else None
    ids = run_all(store, configs, group=group, kind="ratios", executor=executor, progress=report)
    table = final_metrics(store, [graft_id, *ids])
    sweep = table[table["name"].str.startswith("sgd(lr=")]
    table["best_sgd"] = table["run_id"] == sweep.loc[sweep["val_loss"].idxmin(), "run_id"] \
        if sweep["val_loss"].notna().any() else False
    return group, table
