"""Run a stored config, handing everything the trainer reports to a sink.

The one path every run takes, whoever started it (command line, grid worker, app):
``create_run`` records the config; ``prepare_run`` marks it running and reads what training
needs (a ``RunTicket``); ``train`` trains it and hands its records to a ``RunSink``.
``execute_run`` does both here with a ``StoreSink``, which writes the store directly (the
command line, local worker processes); a Dask worker trains the same ticket with a sink that
streams to the driver, which owns the store (``dask_executor``). Stopping goes through the
store, so any process can stop any run.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from grafting_core import NORM_FIELDS
from grafting_core.lab.runs import lifeline
from grafting_core.lab.runs.arms import Arm
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.trainer import Trainer, read_checkpoint, stored_references
from grafting_core.lab.store.norms import schedule_from_run
from grafting_core.lab.store.run_store import RunStore

STOP_ARTIFACT = "stop_requested"
PAUSE_ARTIFACT = "pause_at"


def create_run(
    store: RunStore,
    config: RunConfig,
    *,
    kind: str = "train",
    group: str | None = None,
    arm: Arm | None = None,
) -> str:
    """Record ``config`` (as ``arm`` of an experiment) as a new run, status running until a
    worker picks it up; without a name it is called by its arm or its config."""
    name = config.name or (arm.label if arm else config.label)
    return store.create_run(
        config.to_dict(),
        name=name,
        kind=kind,
        group=group,
        arm=(arm.role, arm.magnitude, arm.direction, arm.variant) if arm else None,
    )


def request_stop(store: RunStore, run_id: str) -> None:
    """Ask a run to stop cleanly at its next flush (works from any process)."""
    store.put_artifact(run_id, STOP_ARTIFACT, "1", kind="control")


def pause_run(store: RunStore, run_id: str, step: int) -> None:
    """Have ``run_id`` train only to ``step`` when it next runs (a rung of successive
    halving), stopped resumably there; 0: to the end (clears an earlier pause)."""
    if step or PAUSE_ARTIFACT in store.artifact_names(run_id):
        store.put_artifact(run_id, PAUSE_ARTIFACT, str(int(step)), kind="control")


def stop_requested(store: RunStore, run_id: str) -> bool:
    """Whether someone asked ``run_id`` to stop (and it was not resumed since)."""
    try:
        return store.get_artifact(run_id, STOP_ARTIFACT) == "1"
    except KeyError:
        return False


def load_artifact(store: RunStore, run_id: str, name: str) -> Any:
    """An artifact of a run; a magnitude schedule is derived from its norms when not saved."""
    if name in store.artifact_names(run_id):
        return store.get_artifact(run_id, name)
    if name == "magnitude_schedule":
        return schedule_from_run(store, run_id).to_dict()
    raise KeyError(
        f"Run {run_id!r} has no artifact {name!r} (it has {store.artifact_names(run_id)})"
    )


class RunSink(Protocol):
    """Where one run's records go. The store's owner writes them (``StoreSink``); a worker
    that cannot reach the store sends each call to it instead (``dask_executor``)."""

    def start(self, layers: dict[str, Any], step: int) -> None: ...

    def metrics(self, rows: list[tuple[int, str, float]], step: int) -> None: ...

    def norms(
        self, steps: list[int], layers: list[str], fields: list[str], data: bytes
    ) -> None: ...

    def checkpoint(self, blob: bytes) -> None: ...

    def status(self, status: str, *, error: str | None = None, step: int | None = None) -> None: ...

    def log(self, name: str, text: str) -> None: ...

    def stop_requested(self) -> bool: ...


class StoreSink:
    """A run's records written into the store (a ``RunSink``)."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def start(self, layers: dict[str, Any], step: int) -> None:
        """The run's layers; a resume from ``step`` records later steps anew."""
        self.store.put_artifact(self.run_id, "layers", layers)
        self.store.drop_steps(self.run_id, step)
        self.store.heartbeat(self.run_id, step=step)

    def metrics(self, rows: list[tuple[int, str, float]], step: int) -> None:
        if rows:
            self.store.log_metrics_many(self.run_id, rows)
        self.store.heartbeat(self.run_id, step=step)

    def norms(self, steps: list[int], layers: list[str], fields: list[str], data: bytes) -> None:
        """Per-layer norms: ``data`` is float64 (little-endian) of shape (steps, layers, fields)."""
        values = np.frombuffer(data, dtype="<f8").reshape(len(steps), len(layers), len(fields))
        self.store.log_layer_norms(self.run_id, steps, layers, fields, values)

    def checkpoint(self, blob: bytes) -> None:
        self.store.put_artifact(self.run_id, "checkpoint", blob, kind="checkpoint")

    def status(self, status: str, *, error: str | None = None, step: int | None = None) -> None:
        self.store.set_status(self.run_id, status, error=error, step=step)

    def log(self, name: str, text: str) -> None:
        self.store.put_artifact(self.run_id, name, text, kind="log")

    def stop_requested(self) -> bool:
        return stop_requested(self.store, self.run_id)


class SinkWriter:
    """Trainer callbacks that hand a run's records to a ``RunSink``."""

    def __init__(self, sink: RunSink) -> None:
        self.sink = sink

    def attach(self, trainer: Trainer) -> None:
        """Register on every trainer event."""
        for event in ("on_start", "on_metrics", "on_norms", "on_checkpoint", "on_end"):
            trainer.add_callback(event, getattr(self, event))

    def on_start(self, trainer: Trainer) -> None:
        self.sink.start(layers_record(trainer), trainer.step)

    def on_metrics(self, trainer: Trainer, rows: list[tuple[int, str, float]]) -> None:
        self.sink.metrics(rows, trainer.step)

    def on_norms(self, trainer: Trainer, steps: list[int], values: Any) -> None:
        log = trainer.norm_log
        self.sink.norms(
            list(steps),
            list(log.layer_names),
            list(log.fields),
            values.numpy().astype("<f8").tobytes(),
        )

    def on_checkpoint(self, trainer: Trainer, blob: bytes) -> None:
        self.sink.checkpoint(blob)

    def on_end(self, trainer: Trainer, status: str, step: int) -> None:
        self.sink.status(status, step=step)


def layers_record(trainer: Trainer) -> dict[str, Any]:
    """The ``layers`` artifact of a run: its optimizer's layers, shapes, device and size."""
    opt = trainer.optimizer
    return {
        "layer_names": list(opt.layers.names),
        "param_names": list(opt.layers.param_names),
        "param_layer": list(opt.layers.index),
        "shapes": {n: list(p.shape) for n, p in opt.named_params()},
        "device": str(trainer.device),
        "parameters": sum(p.numel() for _, p in opt.named_params()),
    }


@dataclass(frozen=True)
class RunTicket:
    """What training a stored run needs, read from the store by the process that owns it,
    so that a worker anywhere can train the run without opening the store."""

    run_id: str
    config: dict[str, Any]
    checkpoint: bytes | None  # where a resume starts (None: step 0)
    artifacts: dict[tuple[str, str], Any]  # (run id, name) -> artifact the config refers to
    pause_at: int = 0  # train only to this step (``pause_run``); 0: to the end

    def artifact(self, run_id: str, name: str) -> Any:
        """An artifact of another run that the config names (``run:<id>``)."""
        return self.artifacts[run_id, name]


def prepare_run(store: RunStore, run_id: str, *, resume: bool = False) -> RunTicket:
    """Mark ``run_id`` running (owned by this process) and read what training it needs.

    A config that cannot be read, or a run it refers to that lacks the artifact, marks the
    run ``failed`` and raises; a resume of a run live elsewhere is refused (ValueError) and
    leaves its row as it was.
    """
    record = store.run(run_id)
    blob = _resume_point(store, record) if resume else None
    store.set_status(run_id, "running")
    try:
        config = RunConfig.from_dict(record["config"])
        artifacts = {ref: load_artifact(store, *ref) for ref in stored_references(config)}
    except Exception as error:
        _fail(StoreSink(store, run_id), error)
        raise
    if resume:
        store.put_artifact(run_id, STOP_ARTIFACT, "0", kind="control")
    pause_at = int(_artifact_or(store, run_id, PAUSE_ARTIFACT, "0"))
    return RunTicket(run_id, record["config"], blob, artifacts, pause_at)


def train(
    ticket: RunTicket,
    sink: RunSink,
    *,
    should_stop: Callable[[], bool] | None = None,
    callbacks: dict[str, Callable] | None = None,
) -> str:
    """Train a prepared run here, handing everything it records to ``sink``; returns the
    final status (see ``execute_run``)."""

    def stop() -> bool:
        return bool(should_stop and should_stop()) or sink.stop_requested()

    trainer = Trainer(
        RunConfig.from_dict(ticket.config),
        should_stop=stop,
        resume=ticket.checkpoint,
        artifact_loader=ticket.artifact,
        pause_at=ticket.pause_at,
    )
    SinkWriter(sink).attach(trainer)
    for event, callback in (callbacks or {}).items():
        trainer.add_callback(event, callback)
    outside: list[tuple[str, str]] = []  # (status, reason) of a signal or a dead parent

    def stop_from_outside(status: str, reason: str) -> None:
        outside.append((status, reason))
        trainer.stop_soon = True

    with lifeline.stoppable(stop_from_outside):
        try:
            status = trainer.run()
        except KeyboardInterrupt:  # a second Ctrl-C: the last periodic checkpoint stays
            sink.status("stopped", step=trainer.step)
            raise
        except Exception as error:
            _fail(sink, error)
            raise
        if status == "stopped" and outside:
            final, reason = outside[0]
            if final == "interrupted":
                sink.status(final, error=reason, step=trainer.step)
                return final
            raise KeyboardInterrupt(f"run {ticket.run_id} {reason}")
        return status


def execute_run(
    store: RunStore,
    run_id: str,
    *,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    callbacks: dict[str, Callable] | None = None,
) -> str:
    """Train the stored config of ``run_id`` here, writing to the store; returns the final
    status.

    Errors mark the run ``failed`` with the message and are re-raised. Ctrl-C and SIGTERM
    stop the run at the end of its step: it flushes, checkpoints, is marked ``stopped`` and
    KeyboardInterrupt is raised, so ``resume=True`` continues it exactly. A dead parent
    (in a worker, ``lifeline.exit_with_parent``) stops it the same way as ``interrupted``.
    A resume starts from the run's last checkpoint, or from step 0 when it has none; a run
    live in another process is refused (ValueError) and its row is left as it was.
    """
    ticket = prepare_run(store, run_id, resume=resume)
    return train(ticket, StoreSink(store, run_id), should_stop=should_stop, callbacks=callbacks)


def _resume_point(store: RunStore, record: dict[str, Any]) -> bytes | None:
    """The checkpoint a resume starts from (None: from step 0), after keeping the run's
    earlier outcome in its ``history`` log; refuses a run that is live elsewhere."""
    run_id = record["run_id"]
    store.mark_interrupted()  # a writer that died leaves "running": its run is resumable
    record = store.run(run_id)
    if record["status"] == "running" and record["last_step"] is not None:
        raise ValueError(
            f"Run {run_id} is training in process {record['pid']} on "
            f"{record['host']}; stop it before resuming it"
        )
    blob = _artifact_or(store, run_id, "checkpoint", None)
    if blob is not None:
        try:
            read_checkpoint(blob)  # a damaged one is refused before anything is written
        except ValueError as error:
            raise ValueError(f"Run {run_id} cannot resume: {error}") from None
    if record["error"]:
        history = _artifact_or(store, run_id, "history", "")
        store.put_artifact(
            run_id,
            "history",
            f"{history}{record['status']} at step {record['last_step']}: {record['error']}\n",
            kind="log",
        )
    return blob


def _artifact_or(store: RunStore, run_id: str, name: str, default: Any) -> Any:
    """An artifact of the run, or ``default`` when it has none."""
    try:
        return store.get_artifact(run_id, name)
    except KeyError:
        return default


def _fail(sink: RunSink, error: Exception) -> None:
    sink.status("failed", error=f"{type(error).__name__}: {error}")
    sink.log("traceback", traceback.format_exc())


def execute_batch(store: RunStore, run_ids: Sequence[str], *, resume: bool = False) -> list[str]:
    """``execute_run`` of several runs at once: the plain runs and M#D grafts of one task
    that can train as one batch do (``train_batch``), the others one by one; returns each
    run's final status, in order. Each run writes to the store what ``execute_run`` would
    have written.

    A run that cannot be prepared (a refused resume, an unreadable config) is left out with
    its row as ``prepare_run`` left it; an error in a batch marks its unfinished members
    ``failed`` and is re-raised after the other runs trained."""
    tickets = []
    for run_id in run_ids:
        try:
            tickets.append(prepare_run(store, run_id, resume=resume))
        except Exception:
            pass  # recorded (failed) or refused (live elsewhere): its row says which
    sinks = {t.run_id: StoreSink(store, t.run_id) for t in tickets}
    train_batch(tickets, sinks)
    return [store.run(run_id)["status"] for run_id in run_ids]


def train_batch(tickets: Sequence[RunTicket], sinks: dict[str, RunSink]) -> dict[str, str]:
    """Train prepared runs here, those that share a start step, a pause and everything
    ``check_batchable`` asks as one ``BatchedTrainer``, the rest through ``train``; every
    record goes to the run's sink. Returns the final status by run id. An error is raised
    once every group has had its turn."""
    from grafting_core.lab.runs.batched import batch_key, check_batchable

    groups: dict[Any, list[RunTicket]] = {}
    alone: list[RunTicket] = []
    for ticket in tickets:
        config = RunConfig.from_dict(ticket.config)
        key = batch_key(config)
        if key is None:
            alone.append(ticket)
            continue
        start = read_checkpoint(ticket.checkpoint)["step"] if ticket.checkpoint else 0
        groups.setdefault((key, start, ticket.pause_at), []).append(ticket)
    batches = []
    for members in groups.values():
        configs = [RunConfig.from_dict(t.config) for t in members]
        try:
            check_batchable(configs)
        except ValueError:
            alone += members
            continue
        (batches if len(members) > 1 else alone).append(members)
    statuses: dict[str, str] = {}
    errors: list[BaseException] = []
    for members in batches:
        try:
            statuses.update(_train_members(members, sinks))
        except KeyboardInterrupt:
            raise
        except Exception as error:
            errors.append(error)
    for ticket in alone:
        try:
            statuses[ticket.run_id] = train(ticket, sinks[ticket.run_id])
        except KeyboardInterrupt:
            raise
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]
    return statuses


def _train_members(members: Sequence[RunTicket], sinks: dict[str, RunSink]) -> dict[str, str]:
    """One ``BatchedTrainer`` over ``members`` (they can batch), each member's records to
    its sink; stops as ``train`` has them (a stop request per member, a signal or a dead
    parent for all)."""
    from grafting_core.lab.runs.batched import BatchedTrainer

    ids = [t.run_id for t in members]
    member_sinks = [sinks[run_id] for run_id in ids]
    ended: dict[int, str] = {}

    def should_stop(training: list[int]) -> list[bool]:
        return [member_sinks[m].stop_requested() for m in training]

    trainer = BatchedTrainer(
        [RunConfig.from_dict(t.config) for t in members],
        resume=[t.checkpoint for t in members],
        pause_at=members[0].pause_at,
        should_stop=should_stop,
        record_norms=True,
    )
    trainer.add_callback(
        "on_start", lambda _, m, shell: member_sinks[m].start(layers_record(shell), shell.step)
    )
    trainer.add_callback("on_metrics", lambda _, m, rows, step: member_sinks[m].metrics(rows, step))
    trainer.add_callback(
        "on_norms",
        lambda t, m, steps, values: member_sinks[m].norms(
            list(steps),
            list(t.shells[m].optimizer.layers.names),
            list(NORM_FIELDS),
            values.numpy().astype("<f8").tobytes(),
        ),
    )
    trainer.add_callback("on_checkpoint", lambda _, m, blob: member_sinks[m].checkpoint(blob))

    def on_end(_: Any, m: int, status: str, step: int) -> None:
        ended[m] = status
        member_sinks[m].status(status, step=step)

    trainer.add_callback("on_end", on_end)
    outside: list[tuple[str, str]] = []

    def stop_from_outside(status: str, reason: str) -> None:
        outside.append((status, reason))
        trainer.stop_soon = True

    def unfinished() -> list[int]:
        return [m for m in range(len(members)) if m not in ended]

    with lifeline.stoppable(stop_from_outside):
        try:
            trainer.run()
        except KeyboardInterrupt:  # a second Ctrl-C: the last periodic checkpoints stay
            for m in unfinished():
                member_sinks[m].status("stopped", step=trainer.results[m].step)
            raise
        except Exception as error:
            for m in unfinished():
                _fail(member_sinks[m], error)
            raise
    if outside:
        final, reason = outside[0]
        stopped = [m for m, status in ended.items() if status == "stopped"]
        if final == "interrupted":
            for m in stopped:
                member_sinks[m].status(final, error=reason, step=trainer.results[m].step)
                ended[m] = final
        else:
            raise KeyboardInterrupt(f"runs {', '.join(ids)} {reason}")
    return {ids[m]: status for m, status in ended.items()}
