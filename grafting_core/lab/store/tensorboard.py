"""Saved runs as TensorBoard event files, written by ``tensorboardX`` (no TensorFlow).

Each run becomes one TensorBoard run, a folder ``<name>-<run id>`` under the chosen
directory (the name as a slug safe in shells and URLs: ``adam#sgd`` → ``adam-graft-sgd``),
holding:

- every metric the store has, under its own name (``train_loss``, ``val_loss``,
  ``val_accuracy``, ``lr``, ...), at its step;
- per layer: ``magnitude_norm/<layer>`` (‖Δ_M‖), ``direction_norm/<layer>`` (‖Δ_D‖) and
  ``ratio/<layer>`` (‖Δ_M‖ / ‖Δ_D‖) at every recorded step where the layer stepped;
- the run's config, status and name as text (``config``); a run that had not ended when
  it was exported (still training, stopped, interrupted) says so there (``partial``), and
  :func:`partial_notice` gives the line to show the user.

``tensorboard --logdir DIR`` shows them (and W&B imports such a folder). ``tensorboardX``
is imported only here, when an export is asked for (``pip install tensorboardX``, in the
``integrations`` extra).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from grafting_core.lab.store.run_store import RunStore, _pid_alive

NORM_TAGS = ("magnitude_norm", "direction_norm")  # recorded fields written per layer
TENSORBOARDX = "tensorboardX==2.6.5"


#: Statuses of a run whose metrics can still grow: its export is a snapshot.
UNENDED = ("running", "stopped", "interrupted")


def run_folder(run: dict[str, Any]) -> str:
    """``<name>-<run id>``, the name as a slug safe in shells and URLs: ``#`` (M#D) becomes
    ``-graft-``, any other character but letters, digits, ``.``, ``_``, ``+`` and ``-``
    becomes ``_`` (``adam#sgd at M lr 0.1`` → ``adam-graft-sgd_at_M_lr_0.1``). The run id
    keeps it unique."""
    name = str(run["name"]).replace("#", "-graft-")
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_.-") or "run"
    return f"{name}-{run['run_id']}"


def _legacy_folder(run: dict[str, Any]) -> str:
    """The folder name exports had before names became slugs (``adam#sgd-<run id>``)."""
    name = re.sub(r"[^A-Za-z0-9._#=+-]+", "_", str(run["name"])).strip("_") or "run"
    return f"{name}-{run['run_id']}"


def _writer_gone(run: dict[str, Any]) -> bool:
    """A "running" run written on this host by a process that is no longer alive (the store
    marks it interrupted on its next write; an export only reads)."""
    return (
        run.get("host") == socket.gethostname()
        and run.get("pid") is not None
        and not (_pid_alive(int(run["pid"])))
    )


def partial_notice(run: dict[str, Any]) -> str | None:
    """A line saying that ``run``'s export is partial (it had not ended), else None."""
    if run["status"] not in UNENDED:
        return None
    steps = (run.get("config") or {}).get("steps")
    where = f"step {run.get('last_step') or 0}" + (f" of {steps}" if steps else "")
    if run["status"] == "running" and _writer_gone(run):
        return (
            f"notice: run {run['run_id']} was interrupted at {where} (its process is gone): "
            "its export is partial; resume it to complete it"
        )
    if run["status"] == "running":
        return (
            f"notice: run {run['run_id']} is still training ({where}): its export is "
            "partial; export it again when it has finished"
        )
    return (
        f"notice: run {run['run_id']} is {run['status']} at {where}: its export is partial; "
        "resume it to complete it"
    )


def _writer(folder: Path) -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise ImportError(
            f"Exporting to TensorBoard needs {TENSORBOARDX}: pip install "
            f"torch==2.13.0 {TENSORBOARDX}"
        ) from error
    return SummaryWriter(logdir=str(folder), flush_secs=3600)


def export_run(store: RunStore, run_id: str, out_dir: str | Path) -> Path:
    """Write one run's event files into ``out_dir/<name>-<run id>`` (replacing an earlier
    export of it there, under this name or the one exports had before, ``adam#sgd-<id>``);
    returns that folder. A run that has not ended is exported as far as it got, marked
    ``partial`` in its ``config`` text (:func:`partial_notice` says so to the user)."""
    run = store.run(run_id)
    folder = Path(out_dir) / run_folder(run)
    for earlier in {folder, Path(out_dir) / _legacy_folder(run)}:
        if earlier.exists():
            shutil.rmtree(earlier)
    metrics = store.metrics(run_id)
    fields = [f for f in NORM_TAGS if f in store.layer_norm_names(run_id)[1]]
    norms = store.layer_norms(run_id, fields=fields) if fields else None
    writer = _writer(folder)
    try:
        text = {"name": run["name"], "status": run["status"], "config": run["config"]}
        if (notice := partial_notice(run)) is not None:
            text |= {"partial": True, "last_step": run.get("last_step"), "notice": notice}
        writer.add_text("config", "```json\n" + json.dumps(text, indent=2) + "\n```", 0)
        for step, name, value in metrics[["step", "name", "value"]].itertuples(index=False):
            writer.add_scalar(str(name), float(value), int(step))
        if norms is not None and not norms.empty:
            _write_norms(writer, norms)
    finally:
        writer.close()
    return folder


def _write_norms(writer: Any, norms: Any) -> None:
    """Per layer and step: ‖Δ_M‖, ‖Δ_D‖ and their ratio, where the layer stepped."""
    wide = norms.pivot_table(
        index=["layer", "step"], columns="field", values="value", observed=True, dropna=False
    )
    for (layer, step), row in wide.iterrows():
        values = {field: float(row.get(field, math.nan)) for field in NORM_TAGS}
        for field, value in values.items():
            if not math.isnan(value):  # NaN: the layer did not step
                writer.add_scalar(f"{field}/{layer}", value, int(step))
        magnitude, direction = values["magnitude_norm"], values["direction_norm"]
        if direction > 0 and not math.isnan(magnitude):
            writer.add_scalar(f"ratio/{layer}", magnitude / direction, int(step))


def export_runs(store: RunStore, run_ids: Iterable[str], out_dir: str | Path) -> list[Path]:
    """:func:`export_run` for each of ``run_ids``; one TensorBoard run each."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return [export_run(store, run_id, out_dir) for run_id in run_ids]


def partial_runs(store: RunStore, run_ids: Iterable[str]) -> dict[str, str]:
    """Of ``run_ids``, those whose export is (or would be) partial: run id → notice line."""
    notices = {run_id: partial_notice(store.run(run_id)) for run_id in run_ids}
    return {run_id: notice for run_id, notice in notices.items() if notice}
