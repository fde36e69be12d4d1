"""The fair-comparison protocol: tuned plain arms, grafts at M's tuned lr, seeds, verdicts.

A comparison of optimizers means little unless each is tuned. For every plain arm this sweeps
the learning rate on a log grid (half-decade steps by default) with every seed, takes the best
by mean validation loss, and extends the grid while the best sits at its edge (reporting when it
still does). Each graft M#D then trains with M at its tuned lr (D's lr cancels in
‖Δ_M‖/‖Δ_D‖·Δ_D; D runs at its own tuned lr so its other settings are the tuned ones) on the
same seeds, and each pair gets a verdict that takes the seed spread into account. Every run's
arm (``sweep_point``, ``tuned``, ``graft``) is stored with it, so ``read_comparison`` rebuilds
the tables from the store alone.

    comparison = compare(store, base.replace(schedule="warmup_cosine", warmup_steps=100),
                         {"sgd": LAB_OPTIMIZERS["sgd"], "adam": LAB_OPTIMIZERS["adam"]},
                         seeds=(0, 1, 2), executor=LocalExecutor(store.root))
    comparison.verdicts      # adam#sgd: closer to adam / to sgd / cannot tell, with the spread

    python -m grafting_core compare --dataset chars --optimizers sgd adam --seeds 0 1 2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .arms import Arm, PlannedRun
from .config import RunConfig
from .executor import Executor
from .experiments import OptimizerChoice, Progress, final_metrics, graft_config, new_group, run_all
from .store import RunStore
from .verdict import closer_to

LR_COLUMN = "config.magnitude_hparams.lr"


@dataclass(frozen=True)
class SweepPlan:
    """A log grid of learning rates around each arm's starting lr."""

    points: int = 5  # lrs in the first grid, centred on the arm's own lr
    factor: float = math.sqrt(10)  # ratio of neighbouring lrs: half a decade
    extensions: int = 2  # points added beyond an edge while the best sits on it

    def __post_init__(self) -> None:
        if self.points < 2:
            raise ValueError(f"Invalid points: {self.points} (a sweep needs at least 2)")
        if not (math.isfinite(self.factor) and self.factor > 1):
            raise ValueError(f"Invalid factor: {self.factor} (must be a finite number > 1)")
        if self.extensions < 0:
            raise ValueError(f"Invalid extensions: {self.extensions} (must be >= 0)")

    def grid(self, center: float) -> list[float]:
        """``points`` lrs spaced by ``factor`` around ``center`` (3 significant digits)."""
        if not (math.isfinite(center) and center > 0):
            raise ValueError(f"Invalid lr to sweep around: {center} (must be > 0)")
        first = -(self.points - 1) / 2
        return [_round(center * self.factor ** (first + i)) for i in range(self.points)]


def _round(lr: float) -> float:
    return float(f"{lr:.3g}")


@dataclass
class Comparison:
    """What ``compare`` found: the sweeps, the arms (tuned and grafted) and the verdicts."""

    group: str
    sweep: pd.DataFrame  # arm, lr, mean, std, seeds, best, at_edge
    arms: pd.DataFrame  # arm, role, magnitude, direction, lr, direction_lr, mean, std, seeds
    verdicts: pd.DataFrame  # magnitude, direction, graft/M/D mean ± std, position, verdict


def _choice(label: str, choice: OptimizerChoice, lr: float) -> tuple[str, OptimizerChoice]:
    name, hparams = choice
    return label, (name, {**hparams, "lr": lr})


def _sweep_runs(base: RunConfig, label: str, choice: OptimizerChoice, lrs: Sequence[float],
                seeds: Sequence[int]) -> list[PlannedRun]:
    return [PlannedRun(graft_config(base, _choice(label, choice, lr), None, seed=seed,
                                    name=f"{label}(lr={lr:g})"), Arm("sweep_point", label))
            for lr in lrs for seed in seeds]


def _sweep_table(store: RunStore, group: str, metric: str) -> pd.DataFrame:
    """Per plain arm and lr: mean and std of ``metric`` over seeds; unfinished runs count as
    failures (a diverged lr is never the best); ``best`` and ``at_edge`` per arm."""
    runs = store.runs(group=group)
    runs = runs[runs["role"].isin(["sweep_point", "tuned"])]
    table = final_metrics(store, runs["run_id"].tolist(), metrics=(metric,))
    table["lr"] = runs.set_index("run_id").loc[table["run_id"], LR_COLUMN].to_numpy(float)
    table["value"] = np.where(table["status"] == "finished", table[metric], np.inf)
    rows = []
    for (arm, lr), cell in table.groupby(["magnitude_arm", "lr"], sort=True):
        finite = cell["value"][np.isfinite(cell["value"])]
        failed = len(finite) < len(cell)
        rows.append({"arm": arm, "lr": lr, "seeds": len(cell), "failed": int(len(cell) -
                     len(finite)), "mean": np.inf if failed else float(finite.mean()),
                     "std": float(finite.std()) if len(finite) > 1 and not failed else np.nan})
    sweep = pd.DataFrame(rows, columns=["arm", "lr", "seeds", "failed", "mean", "std"])
    sweep["best"] = False
    sweep["at_edge"] = False
    for _, cell in sweep.groupby("arm"):
        if np.isfinite(cell["mean"]).any():
            best = cell["mean"].idxmin()
            sweep.loc[best, "best"] = True
            sweep.loc[best, "at_edge"] = cell.loc[best, "lr"] in (cell["lr"].min(),
                                                                   cell["lr"].max())
    return sweep


def _extensions(sweep: pd.DataFrame, plan: SweepPlan) -> dict[str, float]:
    """For each arm whose best lr sits at its grid's edge: the next lr beyond that edge."""
    out = {}
    for arm, cell in sweep.groupby("arm"):
        best = cell[cell["best"]]
        if best.empty or not bool(best["at_edge"].iloc[0]):
            continue
        lr = float(best["lr"].iloc[0])
        out[arm] = _round(lr / plan.factor if lr == cell["lr"].min() else lr * plan.factor)
    return out


def compare(store: RunStore, base: RunConfig, optimizers: Mapping[str, OptimizerChoice], *,
            seeds: Sequence[int] = (0, 1, 2), plan: SweepPlan = SweepPlan(),
            metric: str = "val_loss", executor: Executor | None = None,
            progress: Progress | None = None, group: str | None = None,
            stop: Callable[[], bool] | None = None) -> Comparison:
    """Tune each plain arm, graft every ordered pair at M's tuned lr, and judge each pair.

    ``optimizers``: label → (registry name, hparams); each arm's sweep is centred on its own
    ``lr``. ``base`` carries everything else (its schedule applies to every run: the CLI and
    the app default to warm-up + cosine). Runs go through ``executor`` in parallel, in the
    store group ``group`` (default: a new ``compare-...`` id; the app names it up front so a
    page can watch it while this blocks in a thread). ``stop``, asked before each phase (sweep,
    each extension, grafts): once it returns True no more runs are created, no lr is marked
    tuned if the grafts had not begun, and this returns what was trained (the app's Stop;
    stopping the runs themselves is the caller's).
    """
    if len(optimizers) < 2:
        raise ValueError(f"A comparison needs at least two optimizers (got {len(optimizers)})")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"Invalid seeds {list(seeds)}: at least one, each once")
    group = group or new_group("compare")
    total = len(optimizers) * plan.points * len(seeds)
    done = 0

    def train(planned: list[PlannedRun]) -> list[str]:
        nonlocal done
        if stop is not None and stop():
            return []
        report = (lambda n, _: progress(done + n, total)) if progress else None
        ids = run_all(store, planned, group=group, kind="compare", executor=executor,
                      progress=report)
        done += len(planned)
        return ids

    train([run for label, choice in optimizers.items()
           for run in _sweep_runs(base, label, choice, plan.grid(choice[1]["lr"]), seeds)])
    for _ in range(plan.extensions):
        beyond = _extensions(_sweep_table(store, group, metric), plan)
        if not beyond:
            break
        total += len(beyond) * len(seeds)
        train([run for label, lr in beyond.items()
               for run in _sweep_runs(base, label, optimizers[label], [lr], seeds)])
    if stop is not None and stop():  # a sweep cut short names no tuned lr
        return read_comparison(store, group, metric=metric)
    sweep = _sweep_table(store, group, metric)
    tuned = {row.arm: row.lr for row in sweep[sweep["best"]].itertuples()}
    runs = store.runs(group=group)
    lrs = runs[LR_COLUMN].to_numpy(float)
    for run_id in runs.loc[[tuned.get(a) == lr for a, lr in zip(runs["magnitude_arm"], lrs)],
                           "run_id"]:
        store.set_role(run_id, "tuned")
    pairs = [(m, d) for m in optimizers for d in optimizers if m != d and {m, d} <= set(tuned)]
    total += len(pairs) * len(seeds)
    train([PlannedRun(graft_config(base, _choice(m, optimizers[m], tuned[m]),
                                   _choice(d, optimizers[d], tuned[d]), seed=seed),
                      Arm("graft", m, d)) for m, d in pairs for seed in seeds])
    return read_comparison(store, group, metric=metric)


def read_comparison(store: RunStore, group: str, *, metric: str = "val_loss") -> Comparison:
    """The tables of a stored comparison (finished or still training), from its runs' arms."""
    runs = store.runs(group=group)
    if runs.empty:
        raise KeyError(f"No runs in group {group!r}")
    sweep = _sweep_table(store, group, metric)
    arms = runs[runs["role"].isin(["tuned", "graft"])]
    table = final_metrics(store, arms["run_id"].tolist(), metrics=(metric,))
    config = arms.set_index("run_id").loc[table["run_id"]]
    table["lr"] = config[LR_COLUMN].to_numpy(float)
    table["direction_lr"] = config.get("config.direction_hparams.lr", np.nan)
    table["arm"] = np.where(table["role"] == "graft",
                            table["magnitude_arm"] + "#" + table["direction_arm"].fillna(""),
                            table["magnitude_arm"])
    values = table[table["status"] == "finished"]
    summary = (values.groupby(["arm", "role", "magnitude_arm", "direction_arm"], dropna=False)
               .agg(lr=("lr", "first"), direction_lr=("direction_lr", "first"),
                    mean=(metric, "mean"), std=(metric, "std"), seeds=(metric, "size"))
               .reset_index().rename(columns={"magnitude_arm": "magnitude",
                                              "direction_arm": "direction"}))
    return Comparison(group, sweep, summary, _verdicts(values, metric))


def _verdicts(values: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per graft M#D: where it lands between tuned M and tuned D, with the spread."""
    per_arm = {arm: cell[metric].to_numpy(float) for arm, cell in values.groupby("arm")}
    rows = []
    grafts = values[values["role"] == "graft"][["magnitude_arm", "direction_arm"]]
    for m, d in grafts.drop_duplicates().itertuples(index=False):
        if m in per_arm and d in per_arm:
            rows.append({"magnitude": m, "direction": d,
                         **closer_to(per_arm[f"{m}#{d}"], per_arm[m], per_arm[d])})
    return pd.DataFrame(rows)
