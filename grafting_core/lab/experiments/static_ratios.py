"""The static-ratio experiment: a short M#D window gives per-layer multipliers; plain D with
them trains next to M and the best plain D of a small lr sweep.

One function per user action, called alike by the Static ratios page, the command line
(``static-ratios``) and the notebooks:

- ``plan_source_run`` / ``start_source_run``: the short M#D run the ratios are measured on;
- ``read_ratios``: its ratio trajectories, a window's multipliers and their table;
- ``plan_static_ratios`` / ``start_static_ratios``: D with the multipliers, M alone, plain D
  per lr (what will run, how many), then recorded and queued on the caller's executor;
- ``read_static_ratio_group``: a started group's source, multipliers, final table and memory.

A measurement is stored on its source run under a content-addressed name
(``static_ratios:<sha256[:12]>`` of its JSON) that the runs' configs refer to, so a later
measurement (another window) never changes what an earlier run trained with. Stores written
before keep their runs' ``run:<source>`` references to the artifact named ``static_ratios``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from grafting_core import StaticRatios
from grafting_core.lab.experiments.analysis import static_ratios_from_run
from grafting_core.lab.experiments.common import (
    OptimizerChoice,
    Progress,
    final_metrics,
    graft_run,
    new_group,
    run_all,
)
from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.capacity import check_fits
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import Executor
from grafting_core.lab.runs.jobs import queue_runs
from grafting_core.lab.runs.trainer import run_reference
from grafting_core.lab.store.norms import ratio_trajectories
from grafting_core.lab.store.run_store import RunStore
from grafting_core.registry import OptimizerSpec

#: The artifact name of a source run's ratios in stores written before content addressing.
LEGACY_ARTIFACT = "static_ratios"
KIND = "ratios"  # the kind of this experiment's groups


# ------------------------------------------------------------------- immutable artifacts
def _canonical(data: dict) -> str:
    """The JSON text that names ``data``: sorted keys, numpy scalars as numbers."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), default=lambda x: x.item(), allow_nan=True
    )


def ratios_artifact(ratios: StaticRatios | dict) -> str:
    """The content-addressed artifact name of a measurement: ``static_ratios:<sha256[:12]>``
    of its JSON (the same multipliers, window and statistic always get the same name)."""
    data = ratios.to_dict() if isinstance(ratios, StaticRatios) else ratios
    digest = hashlib.sha256(_canonical(data).encode()).hexdigest()[:12]
    return f"{LEGACY_ARTIFACT}:{digest}"


def ratios_reference(source: str, ratios: StaticRatios | dict) -> str:
    """The config reference ``run:<source>:static_ratios:<sha>`` of a measurement."""
    return f"run:{source}:{ratios_artifact(ratios)}"


def store_ratios(store: RunStore, source: str, ratios: StaticRatios) -> str:
    """Store a measurement on ``source`` under its content-addressed name, once (an artifact
    of that name holds these very bytes already); returns the config reference."""
    name = ratios_artifact(ratios)
    if name not in store.artifact_names(source):
        store.put_artifact(source, name, ratios.to_dict(), kind="static_ratios")
    return f"run:{source}:{name}"


def referenced_ratios(store: RunStore, reference: str) -> dict | None:
    """The ratios a ``config.static_ratios`` reference names (``run:<id>`` reads the legacy
    ``static_ratios`` artifact); None for a file path, an empty reference or a missing one."""
    found = run_reference(reference or "", LEGACY_ARTIFACT)
    if found is None or found[1] not in store.artifact_names(found[0]):
        return None
    return store.get_artifact(*found)


def source_of(reference: str) -> str:
    """The run a ``config.static_ratios`` reference measures ("" for a file path or none)."""
    found = run_reference(reference or "", LEGACY_ARTIFACT)
    return found[0] if found else ""


# --------------------------------------------------------------------- 1. the source run
def graftable_runs(store: RunStore) -> pd.DataFrame:
    """Finished (or stopped) grafted runs whose ratios can be measured, newest first."""
    runs = store.runs()
    if runs.empty:
        return runs
    ok = (
        runs["status"].isin(["finished", "stopped"])
        & runs["config.direction"].ne("")
        & runs["config.replay"].eq("")
        & runs["config.static_ratios"].eq("")
    )
    return runs[ok]


def plan_source_run(
    data: dict,
    *,
    magnitude: OptimizerChoice,
    direction: OptimizerChoice,
    steps: int,
    batch_size: int,
    seed: int,
    device: str = "auto",
) -> PlannedRun:
    """The short M#D run to measure; ValueError (naming the field) when it is invalid or too
    big for the device."""
    (m_name, m_hp), (d_name, d_hp) = magnitude, direction
    if not d_name:
        raise ValueError("a direction optimizer D is needed")
    config = RunConfig(
        **data,
        steps=int(steps),
        batch_size=int(batch_size),
        seed=int(seed),
        magnitude=m_name,
        magnitude_hparams=dict(m_hp),
        direction=d_name,
        direction_hparams=dict(d_hp),
        name=f"{m_name}#{d_name}",
        device=device,
    )
    check_fits(config)
    return PlannedRun(config, Arm("graft", m_name, d_name))


def start_source_run(store: RunStore, planned: PlannedRun, executor: Executor) -> str:
    """Record the source run in a group of its own and queue it; returns its run id."""
    (run_id,) = queue_runs(store, executor, [planned], group=new_group(KIND), kind=KIND)
    return run_id


# ------------------------------------------------------------ 2. window and multipliers
def default_window(steps: int) -> tuple[int, int]:
    """An early window, 10% to 50% of the recorded steps (the paper measures early)."""
    start = steps // 10
    return start, max(start + 1, steps // 2)


@dataclass
class RatioReading:
    """What the page shows of a source run: its ratios per step and layer, the recorded
    steps, and (when the window gives them) the multipliers, per layer and as a table."""

    trajectories: pd.DataFrame  # step, layer, ratio = ‖Δ_M‖/‖Δ_D‖
    steps: int  # recorded steps (0: none yet)
    window: tuple[int, int]
    ratios: StaticRatios | None = None
    problem: str = ""  # why there are no multipliers for this window
    values: dict[str, float] = field(default_factory=dict)  # layer -> its multiplier c
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # layer, c, D's lr for it


def read_ratios(
    store: RunStore,
    source: str,
    *,
    window: tuple[int, int] | None = None,
    statistic: str = "median",
) -> RatioReading:
    """The ratio trajectories of ``source`` and its multipliers over ``window`` (the default
    window when None or outside the recorded steps)."""
    trajectories = ratio_trajectories(store, source)
    if trajectories.empty:
        return RatioReading(trajectories, 0, (0, 0), problem="no ratio recorded yet")
    steps = int(trajectories["step"].max()) + 1
    if window is None or not 0 <= window[0] <= window[1] <= steps:
        window = default_window(steps)
    window = (int(window[0]), int(window[1]))
    try:
        ratios = static_ratios_from_run(store, source, window=window, statistic=statistic)
    except (ValueError, KeyError) as error:
        return RatioReading(trajectories, steps, window, problem=str(error).strip("'\""))
    layout = store.get_artifact(source, "layers")
    names = layout["layer_names"]
    values = {
        names[i]: ratios.ratios[p] for p, i in zip(layout["param_names"], layout["param_layer"])
    }
    table = pd.DataFrame({"layer": list(values), "multiplier c": list(values.values())})
    table["D's lr for the layer (base lr × c)"] = table["multiplier c"] * ratios.base_lr
    return RatioReading(trajectories, steps, window, ratios, "", values, table)


def direction_momentum(store: RunStore, source: str) -> tuple[str, float]:
    """The source run's D and its momentum (0.9 when it has none): the export's snippet."""
    config = store.run(source)["config"]
    resolved = OptimizerSpec(config["direction"], config["direction_hparams"]).resolved
    return config["direction"], resolved.get("momentum", 0.9)


# ------------------------------------------------------------------------ 3. comparison
def static_ratio_configs(
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    sgd: OptimizerChoice,
    *,
    source_run: str,
    sgd_lrs: Sequence[float] = (),
    artifact: str = LEGACY_ARTIFACT,
) -> list[PlannedRun]:
    """SGD with the static ratios stored on ``source_run`` (its artifact ``artifact``), M
    alone, and plain SGD per lr.

    ``sgd`` is the plain optimizer (the grafted run's D, usually SGD) with the lr the ratios
    multiply.
    """
    name, hp = sgd
    bad = [lr for lr in sgd_lrs if not (np.isfinite(lr) and lr > 0)]
    if bad:
        raise ValueError(f"Invalid sgd_lrs {bad}: each must be a finite number > 0")
    reference = (
        f"run:{source_run}" if artifact == LEGACY_ARTIFACT else f"run:{source_run}:{artifact}"
    )
    plain = {"direction": "", "direction_hparams": {}, "replay": "", "static_ratios": ""}
    ratios = base.replace(
        **{**plain, "static_ratios": reference},
        magnitude=name,
        magnitude_hparams=dict(hp),
        name=f"{name}+ratios({magnitude[0]})",
    )
    planned = [
        PlannedRun(ratios, Arm("static_ratios", name)),
        graft_run(base.replace(**plain), magnitude, None),
    ]
    return planned + [
        PlannedRun(
            base.replace(
                **plain,
                magnitude=name,
                magnitude_hparams={**hp, "lr": lr},
                name=f"{name}(lr={lr:g})",
            ),
            Arm("sweep_point", name),
        )
        for lr in sgd_lrs
    ]


def static_ratio_configs_from(
    store: RunStore,
    source_run: str,
    *,
    sgd_lrs: Sequence[float] = (),
    artifact: str = LEGACY_ARTIFACT,
    **changes,
) -> list[PlannedRun]:
    """``static_ratio_configs`` for a stored M#D run: D (with the lr the multipliers were
    measured against, D's lr × Graft's lr) with its ratios, M alone, D per lr in ``sgd_lrs``;
    ``changes`` (steps, device, ...) apply to all of them."""
    config = RunConfig.from_dict(store.run(source_run)["config"])
    if not config.direction:
        raise ValueError(f"Run {source_run!r} is a plain run: static ratios need an M#D run")
    base = config.replace(name="", **changes)
    d_lr = OptimizerSpec(config.direction, config.direction_hparams).resolved["lr"]
    magnitude = (config.magnitude, (config.magnitude, config.magnitude_hparams))
    direction = (config.direction, {**config.direction_hparams, "lr": d_lr * config.graft_lr})
    return static_ratio_configs(
        base, magnitude, direction, source_run=source_run, sgd_lrs=sgd_lrs, artifact=artifact
    )


@dataclass(frozen=True)
class StaticRatioPlan:
    """What Start trains: ``runs`` (D with the multipliers first, M alone, plain D per lr),
    the multipliers measured on ``source`` and the artifact name the first run refers to."""

    source: str
    ratios: StaticRatios
    runs: list[PlannedRun]

    @property
    def count(self) -> int:
        return len(self.runs)

    @property
    def artifact(self) -> str:
        return ratios_artifact(self.ratios)

    def describe(self) -> str:
        """One line: how many runs, and which."""
        names = ", ".join(config.name for config, _ in self.runs)
        return f"{self.count} runs: {names}"


def plan_static_ratios(
    store: RunStore,
    source: str,
    *,
    window: tuple[int, int],
    statistic: str = "median",
    sgd_lrs: Sequence[float] = (),
    **changes,
) -> StaticRatioPlan:
    """Measure ``source``'s multipliers over ``window`` and plan the comparison (writes
    nothing). ValueError names the bad field: the lrs, a config field, or the window."""
    static_ratio_configs_from(store, source, sgd_lrs=sgd_lrs, **changes)  # named first
    try:
        ratios = static_ratios_from_run(store, source, window=tuple(window), statistic=statistic)
    except (ValueError, KeyError) as error:
        raise ValueError(f"no multipliers for this window: {str(error).strip(chr(39))}") from None
    runs = static_ratio_configs_from(
        store, source, sgd_lrs=sgd_lrs, artifact=ratios_artifact(ratios), **changes
    )
    return StaticRatioPlan(source, ratios, runs)


def start_static_ratios(
    store: RunStore,
    plan: StaticRatioPlan,
    executor: Executor | None,
    *,
    group: str | None = None,
    wait: bool = False,
    progress: Progress | None = None,
) -> tuple[str, list[str]]:
    """Store the plan's multipliers (content-addressed, never replaced), record its runs in
    ``group`` (a new one by default) and queue them on ``executor``; ``wait``: train them
    before returning (inline when ``executor`` is None). Returns (group, run ids)."""
    store_ratios(store, plan.source, plan.ratios)
    group = group or new_group(KIND)
    if wait or executor is None:
        ids = run_all(
            store, plan.runs, group=group, kind=KIND, executor=executor, progress=progress
        )
    else:
        ids = queue_runs(store, executor, plan.runs, group=group, kind=KIND)
    return group, ids


def static_ratio_experiment(
    store: RunStore,
    base: RunConfig,
    magnitude: tuple[str, OptimizerChoice],
    *,
    sgd: OptimizerChoice = ("sgd", {"lr": 0.1, "momentum": 0.9}),
    window: tuple[int, int] = (50, 200),
    statistic: str = "median",
    sgd_lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> tuple[str, pd.DataFrame]:
    """M#SGD for the window, per-layer multipliers, then SGD+ratios vs M vs swept plain SGD
    (the command line's ``static-ratios``: the page's steps 1 to 3 in one call)."""
    if not 0 <= window[0] < window[1] <= base.steps:
        raise ValueError(f"Invalid window {window}: need 0 <= start < stop <= steps ({base.steps})")
    bad = [lr for lr in sgd_lrs if not (np.isfinite(lr) and lr > 0)]
    if bad:
        raise ValueError(f"Invalid sgd_lrs {bad}: each must be a finite number > 0")
    group = new_group(KIND)
    total = 3 + len(sgd_lrs)
    report = (lambda done, _: progress(done, total)) if progress else None
    short = graft_run(base, magnitude, ("sgd", sgd), steps=window[1])
    (graft_id,) = run_all(store, [short], group=group, kind=KIND, progress=report)
    plan = plan_static_ratios(
        store, graft_id, window=window, statistic=statistic, sgd_lrs=sgd_lrs, steps=base.steps
    )
    report = (lambda done, _: progress(1 + done, total)) if progress else None
    _, ids = start_static_ratios(store, plan, executor, group=group, wait=True, progress=report)
    table = final_metrics(store, [graft_id, *ids])
    sweep = table[table["role"] == "sweep_point"]
    table["best_sgd"] = (
        table["run_id"] == sweep.loc[sweep["val_loss"].idxmin(), "run_id"]
        if sweep["val_loss"].notna().any()
        else False
    )
    return group, table


# ---------------------------------------------------------------- reading a started group
@dataclass
class StaticRatioGroup:
    """A started comparison: the run its multipliers come from, those multipliers (as
    trained), one row per run (final metrics and optimizer memory) and the weights' bytes."""

    source: str
    ratios: dict | None
    finals: pd.DataFrame
    weight_bytes: float | None


def group_source(runs: pd.DataFrame) -> str:
    """The run whose multipliers a group's ratio run trains with ("" for a group without
    one, such as a source run's own)."""
    if runs.empty:
        return ""
    refs = runs.loc[runs["role"] == "static_ratios", "config.static_ratios"].map(source_of)
    refs = refs[refs != ""]
    return refs.iloc[0] if not refs.empty else ""


def read_static_ratio_group(store: RunStore, group: str) -> StaticRatioGroup:
    """``group``'s source, multipliers, final metrics (one row per run, in the group's order;
    optimizer state in bytes and KiB) and the float32 bytes of the model's weights (None
    before a run recorded its layout)."""
    runs = store.runs(group=group)
    ratio_runs = runs[runs["role"] == "static_ratios"]
    reference = ratio_runs["config.static_ratios"].iloc[0] if not ratio_runs.empty else ""
    finals = final_metrics(store, runs["run_id"].tolist(), runs=runs)
    finals["state (KiB)"] = finals["optimizer_state_bytes"] / 1024
    weights = None
    for run_id in runs["run_id"]:
        if "layers" in store.artifact_names(run_id):
            weights = 4.0 * store.get_artifact(run_id, "layers")["parameters"]  # float32
            break
    return StaticRatioGroup(
        group_source(runs), referenced_ratios(store, reference), finals, weights
    )
