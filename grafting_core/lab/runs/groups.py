"""A group's runs recorded once: a planned run whose config the group already has is kept as it
ended or resumed, never trained twice (how an experiment continues where it stopped)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run
from grafting_core.lab.store.run_store import RunStore

#: What a run of a continued experiment is worth: an outcome is kept, a stop is resumed.
KEPT, RESUMED = ("finished", "diverged", "failed"), ("stopped", "interrupted")
TERMINAL = KEPT + RESUMED  # a run with one of these statuses trains no more


def record_runs(
    store: RunStore,
    planned: Sequence[PlannedRun],
    *,
    group: str,
    kind: str,
    reuse: bool = False,
) -> tuple[list[str], list[tuple[str, bool]]]:
    """Record the planned runs in ``group``: every run id, and the runs to train as
    ``(run id, resume)``.

    ``reuse``: a planned run whose config a run of ``group`` already has is not created
    again; that run is kept as it ended (finished, diverged, failed) or resumed (stopped,
    interrupted).
    """
    existing = _runs_by_config(store, group) if reuse else {}
    run_ids, todo = [], []
    for config, arm in planned:
        run_id, status = existing.get(_config_key(config), (None, None))
        if run_id is None:
            run_id = create_run(store, config, kind=kind, group=group, arm=arm)
        if status not in KEPT:
            todo.append((run_id, status in RESUMED))
        run_ids.append(run_id)
    return run_ids, todo


#: Settings that change how a run is kept (how often it checkpoints, flushes its rows), not
#: what it computes: a group continued under other values (a newer version's defaults, say)
#: keeps its runs instead of training them again.
HOUSEKEEPING = ("checkpoint_every", "flush_seconds")


def _config_key(config: RunConfig) -> str:
    kept = {k: v for k, v in config.to_dict().items() if k not in HOUSEKEEPING}
    return json.dumps(kept, sort_keys=True)


def _runs_by_config(store: RunStore, group: str) -> dict[str, tuple[str, str]]:
    """The runs of ``group`` by config: (run id, status); a run whose writer died counts as
    interrupted, one live in another process is refused (it would be trained twice)."""
    store.mark_interrupted()
    runs = store.runs(group=group, flatten_config=False)
    live = runs[runs["status"] == "running"]
    if not live.empty:
        raise ValueError(
            f"Group {group!r} has {len(live)} runs training in another process "
            f"(e.g. {live['run_id'].iloc[0]}); wait for them or stop them first"
        )
    return {
        _config_key(RunConfig.from_dict(config)): (run_id, status)
        for run_id, status, config in zip(runs["run_id"], runs["status"], runs["config"])
    }


def group_plan(store: RunStore, group: str) -> list[PlannedRun]:
    """The runs of ``group`` as planned runs, each with the config and arm it was made with
    (creation order): recorded again with ``reuse``, they resume the group's stopped and
    interrupted runs and keep the rest, so a continuation is the same experiment."""
    runs = store.runs(group=group, flatten_config=False).iloc[::-1]
    return [
        PlannedRun(
            RunConfig.from_dict(config),
            Arm(role, magnitude, direction or "", variant or "") if role else None,
        )
        for config, role, magnitude, direction, variant in zip(
            runs["config"],
            runs["role"].where(runs["role"].notna(), None),
            runs["magnitude_arm"],
            runs["direction_arm"].where(runs["direction_arm"].notna(), None),
            runs["arm_variant"].where(runs["arm_variant"].notna(), None),
        )
    ]
