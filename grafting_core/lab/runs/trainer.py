"""The trainer: runs one ``RunConfig`` and streams what happens to callbacks.

It knows nothing about grafting beyond building the optimizer, and nothing about storage:
the run store, progress bars and live pages attach as callbacks (minGPT style). Events:

- ``on_start(trainer)``                 model, data and optimizer are built
- ``on_metrics(trainer, rows)``         ``[(step, name, value), ...]`` at each flush
- ``on_norms(trainer, steps, values)``  per-layer norms ``(steps, layers, fields)`` since last time
- ``on_checkpoint(trainer, blob)``      a resumable checkpoint (bytes)
- ``on_end(trainer, status, step)``     finished | stopped | diverged (at ``step``)

Losses stay on the device between flushes. A flush (one host sync, the callbacks) comes
every ``log_every`` steps, but at most every ``flush_seconds`` so that fast small models do
not spend their time in callbacks; the store still gets every step's loss and norms. A
non-finite loss or weight stops the run at once as ``diverged``, keeping what was recorded.

    python -m grafting_core train --dataset mnist1d --magnitude adam --direction sgd
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import pickle
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from grafting_core import Graft, MagnitudeSchedule, NormLog, StaticRatios, build_optimizer
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.tasks.custom import load_custom
from grafting_core.lab.tasks.data import load_dataset
from grafting_core.lab.tasks.models import build_model, default_model, loss_fn
from grafting_core.layer_kinds import select_kinds
from grafting_core.memory import state_bytes

EVENTS = ("on_start", "on_metrics", "on_norms", "on_checkpoint", "on_end")
#: config fields that name another file or run, and the artifact each loads by default
REFERENCES = {"replay": "magnitude_schedule", "static_ratios": "static_ratios"}
NORM_RING = 2048  # norm records kept between flushes; a flush is forced before it fills


def pick_device(requested: str) -> torch.device:
    """CUDA when available for ``auto``; a clear error when CUDA is asked for but absent."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} but no CUDA device is available; use cpu or auto")
    return torch.device(requested)


def lr_factor(step: int, total: int, kind: str, warmup: int = 0) -> float:
    """The schedule's multiplier of the base learning rate at ``step`` (a pure function)."""
    if kind == "constant":
        return 1.0
    if kind == "warmup_cosine" and step < warmup:  # 1) linear warm-up from ~0
        return (step + 1) / warmup
    start = warmup if kind == "warmup_cosine" else 0
    progress = min(max(step - start, 0) / max(total - start, 1), 1.0)
    if kind == "linear":  # 2) linear decay to zero
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # 3) cosine decay to zero


def read_checkpoint(blob: bytes, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's state, loaded with ``weights_only=True``: a store may come from someone
    else, and a full unpickle would run whatever code a planted blob names."""
    if not isinstance(blob, bytes) or not blob.startswith(b"PK\x03\x04"):  # torch.save's zip
        shown = blob[:8] if isinstance(blob, bytes) else type(blob).__name__
        raise DamagedCheckpoint(
            f"The checkpoint is damaged: {len(blob) if isinstance(blob, bytes) else '?'} "
            f"bytes that are not a torch checkpoint (they start {shown!r}). Start the run "
            "afresh instead of resuming it."
        )
    try:
        state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next((line for line in str(error).splitlines() if "GLOBAL" in line), None)
        if reason is None:  # not a forbidden global: the pickle itself is broken
            raise DamagedCheckpoint(
                f"The checkpoint is damaged ({str(error).splitlines()[0]}). Start the run "
                "afresh instead of resuming it."
            ) from None
        raise ValueError(
            f"Refused to load the checkpoint: it holds more than tensors and plain "
            f"values, and loading it could run code ({reason.strip()}). Start the "
            f"run afresh instead of resuming it."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # a truncated zip, say
        raise DamagedCheckpoint(
            f"The checkpoint is damaged ({len(blob)} bytes, truncated or overwritten: "
            f"{str(error).splitlines()[0][:120]}). Start the run afresh instead of resuming it."
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
        raise DamagedCheckpoint(
            "The checkpoint is damaged: it lacks the model, optimizer or step. Start the run "
            "afresh instead of resuming it."
        )
    return state


class DamagedCheckpoint(ValueError):
    """A checkpoint that cannot be read back (truncated, overwritten, not a checkpoint)."""


def check_inputs(
    config: RunConfig, artifact_loader: Callable[[str, str], Any] | None = None
) -> None:
    """Raise one ValueError naming the setting and the file when a run of ``config`` could
    not start: a replay schedule or static ratios that cannot be read or do not fit the
    model. Called before a run is recorded, so that a bad file leaves no failed run behind;
    a config that reads nothing from elsewhere costs nothing."""
    if config.replay or config.static_ratios:
        Trainer(config, artifact_loader=artifact_loader).check()


def run_reference(ref: str, artifact: str) -> tuple[str, str] | None:
    """(run id, artifact name) of a ``run:<id>`` or ``run:<id>:<name>`` reference (``artifact``
    by default); None for a file path."""
    if not ref.startswith("run:"):
        return None
    run_id, _, name = ref[4:].partition(":")
    return run_id, name or artifact


def stored_references(config: RunConfig) -> list[tuple[str, str]]:
    """The (run id, artifact name) pairs that ``config`` loads from the run store."""
    refs = ((getattr(config, field), artifact) for field, artifact in REFERENCES.items())
    return [pair for ref, artifact in refs if ref and (pair := run_reference(ref, artifact))]


def check_replay_source(schedule: MagnitudeSchedule, config: RunConfig) -> None:
    """A schedule recorded on one dataset (or custom task) is not replayed on another; the
    model's layers and shapes are checked when Graft takes the schedule."""
    source = schedule.source
    recorded, here = source.get("custom") or source.get("dataset"), config.custom or config.dataset
    if recorded and recorded != here:
        raise ValueError(
            f"replay: the schedule was recorded on {recorded!r}, not on {here!r}; "
            "replay it on the data it was recorded on"
        )


class Trainer:
    """Runs one config. ``should_stop`` is polled at every flush; ``resume`` is a checkpoint."""

    def __init__(
        self,
        config: RunConfig,
        *,
        should_stop: Callable[[], bool] | None = None,
        resume: bytes | None = None,
        artifact_loader: Callable[[str, str], Any] | None = None,
        pause_at: int = 0,
    ) -> None:
        self.config = config
        #: train only to this step (a rung of successive halving), then stop resumably with
        #: an evaluation; 0 (or ≥ steps): to the end. Steps and schedule are unchanged, so a
        #: paused run resumed is a prefix of the same run.
        self.end = pause_at if 0 < pause_at < config.steps else config.steps
        self.should_stop = should_stop or (lambda: False)
        self.resume = resume
        self.artifact_loader = artifact_loader  # ("run:<id>", artifact name) -> object
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        self.step = 0  # optimizer steps taken
        self.status = "running"
        self.diverged_at: int | None = None  # first step with a non-finite loss or weight
        self.stop_soon = False  # set (by a signal handler, any thread) to stop after this step

    def add_callback(self, event: str, callback: Callable) -> None:
        """Call ``callback(trainer, **payload)`` on ``event`` (one of ``EVENTS``)."""
        if event not in EVENTS:
            raise ValueError(f"Unknown event {event!r} (valid: {EVENTS})")
        self.callbacks[event].append(callback)

    def _fire(self, event: str, **payload: Any) -> None:
        for callback in self.callbacks[event]:
            callback(self, **payload)

    # ------------------------------------------------------------------ set-up
    def _reference(self, ref: str, artifact: str) -> Any:
        if (stored := run_reference(ref, artifact)) is not None:
            if self.artifact_loader is None:
                raise ValueError(f"{ref!r} needs a run store to load {artifact!r} from")
            return self.artifact_loader(*stored)
        with open(ref) as handle:
            return json.load(handle)

    def _load_reference(self, field: str, parse: Callable[[Any], Any]) -> Any:
        """``parse`` of what the config's ``field`` names (a file, or a stored run's
        artifact); any problem is one ValueError naming the setting and the file."""
        ref = getattr(self.config, field)
        flag = f"--{field.replace('_', '-')}"
        try:
            return parse(self._reference(ref, REFERENCES[field]))
        except FileNotFoundError:
            raise ValueError(f"{flag} {ref}: no such file") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{flag} {ref}: not a JSON file ({error})") from None
        except KeyError as error:
            raise ValueError(
                f"{flag} {ref}: not a {REFERENCES[field].replace('_', ' ')} file "
                f"(it has no {error} entry)"
            ) from None
        except (ValueError, TypeError, OSError, AttributeError) as error:
            raise ValueError(f"{flag} {ref}: {error}") from None

    def _build(self) -> None:
        cfg = self.config
        self.device = pick_device(cfg.device)
        if cfg.custom:
            model, self.dataset = load_custom(cfg.custom)
        else:
            self.dataset = load_dataset(cfg.dataset, seed=cfg.seed)
            sizes = {k: v for k, v in (("width", cfg.width), ("depth", cfg.depth)) if v}
            model = build_model(
                cfg.model or default_model(cfg.dataset), self.dataset, seed=cfg.seed, **sizes
            )
        self.model = model.to(self.device)
        self._precision = (
            functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext
        )
        self.loss_fn = loss_fn(self.dataset.task)
        named = list(self.model.named_parameters())
        magnitude: Any = cfg.magnitude_spec()
        if cfg.replay:
            magnitude = self._load_reference("replay", MagnitudeSchedule.from_dict)
            try:
                check_replay_source(magnitude, cfg)
            except ValueError as error:
                raise ValueError(f"--replay {cfg.replay}: {error}") from None
        if cfg.static_ratios:  # plain M with per-layer lr = M's lr · c: M's groups carry it
            ratios = self._load_reference("static_ratios", StaticRatios.from_dict)
            spec = cfg.magnitude_spec()
            try:
                groups = ratios.param_groups(named, lr=spec.resolved["lr"])
            except (KeyError, ValueError) as error:
                raise ValueError(
                    f"--static-ratios {cfg.static_ratios}: does not fit this model "
                    f"({str(error).strip(chr(39))})"
                ) from None
            magnitude = build_optimizer(spec, groups)
        grafted = select_kinds(self.model, cfg.grafted) if cfg.grafted else None
        self.optimizer = Graft(
            named,
            magnitude,
            cfg.direction_spec(),
            grafted=grafted,
            granularity=cfg.granularity,
            lr=cfg.graft_lr,
        )
        scheduled = self.optimizer if cfg.replay else self.optimizer.magnitude
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            scheduled, lambda s: lr_factor(s, cfg.steps, cfg.schedule, cfg.warmup_steps)
        )
        self._scheduled = cfg.schedule != "constant"  # a constant factor needs no stepping
        self.norm_log = NormLog(self.optimizer, capacity=NORM_RING, every=cfg.record_every)
        self._norms_seen = -1
        if self.resume is not None:
            self._load_checkpoint(self.resume)

    def check(self) -> None:
        """Build the model, data and optimizer without training: what a run of this config
        reads from elsewhere (replay schedule, static ratios) must load and fit the model.
        For a check before the run is recorded (``check_inputs``)."""
        self._build()

    # -------------------------------------------------------------- checkpoint
    def checkpoint(self) -> bytes:
        """Model, optimizer, scheduler and step, as bytes for the run store."""
        buffer = io.BytesIO()
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "config": self.config.to_dict(),
            },
            buffer,
        )
        return buffer.getvalue()

    def _load_checkpoint(self, blob: bytes) -> None:
        state = read_checkpoint(blob, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self._norms_seen = self.step - 1

    # -------------------------------------------------------------------- loop
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss (and accuracy for classification and text) on fixed batches."""
        self.model.eval()
        total, correct, count = 0.0, 0, 0
        for x, y in self.dataset.eval_batches(256, max_examples=self.config.eval_examples):
            x, y = x.to(self.device), y.to(self.device)
            out = self.model(x)
            n = y.numel() if self.dataset.task != "regression" else len(y)
            total += float(self.loss_fn(out, y)) * n
            count += n
            if self.dataset.task != "regression":
                correct += int((out.argmax(-1) == y).sum())
        self.model.train()
        metrics = {"val_loss": total / count}
        if self.dataset.task != "regression":
            metrics["val_accuracy"] = correct / count
        return metrics

    def _train_step(self) -> torch.Tensor:
        cfg = self.config
        x, y = self.dataset.batch("train", cfg.batch_size, step=self.step, seed=cfg.seed)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self._precision():
            loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self._scheduled:
            self.scheduler.step()
        self.step += 1
        return loss.detach()

    def _weights_finite(self) -> bool:
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        return math.isfinite(float(torch.stack(norms).sum()))

    def _flush(self, losses: list[torch.Tensor], started: float) -> bool:
        """Send metrics and norms since the last flush; False when the run diverged."""
        values = torch.stack(losses).float().cpu().tolist()
        first = self.step - len(values)
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        rows = [(first + i, "train_loss", v) for i, v in enumerate(values[:bad])]
        if bad is None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            rows.append((self.step - 1, "steps_per_second", len(values) / elapsed))
            rows.append((self.step - 1, "lr", self.scheduler.get_last_lr()[0]))
        self._fire("on_metrics", rows=rows)
        steps, norms = self.norm_log.read(since=self._norms_seen)
        if steps:
            self._norms_seen = steps[-1]
            self._fire("on_norms", steps=steps, values=norms)
        if bad is not None:
            self.diverged_at = first + bad
            return False
        if not self._weights_finite():
            self.diverged_at = self.step - 1
            return False
        return True

    def run(self) -> str:
        """Train to ``config.steps`` (or the pause step) or until stopped/diverged; returns the
        final status (``stopped`` at a pause)."""
        cfg = self.config
        self._build()
        self._fire("on_start")
        losses: list[torch.Tensor] = []
        started = time.perf_counter()
        while self.step < self.end:
            losses.append(self._train_step())
            last = self.step == self.end
            due = bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0 and not last
            # A checkpoint or a stop comes after a flush: a resumed run has every step's rows.
            flushed = (
                last
                or due
                or self.stop_soon
                or len(losses) >= cfg.log_every
                and (
                    time.perf_counter() - started >= cfg.flush_seconds
                    or len(losses) >= NORM_RING // 2 * cfg.record_every
                )
            )
            if flushed:
                if not self._flush(losses, started):
                    self.status = "diverged"
                    break
                losses = []
            if self.step % cfg.eval_every == 0 or last:
                self._fire(
                    "on_metrics", rows=[(self.step - 1, k, v) for k, v in self.evaluate().items()]
                )
            if due:
                self._fire("on_checkpoint", blob=self.checkpoint())
            if flushed:
                if self.stop_soon or self.should_stop():
                    self.status = "stopped"
                    break
                started = time.perf_counter()
        if self.status == "running":
            self.status = "finished" if self.step >= cfg.steps else "stopped"  # paused
        self._fire(
            "on_metrics",
            rows=[(self.step - 1, "optimizer_state_bytes", float(state_bytes(self.optimizer)))],
        )
        if self.status != "diverged":
            self._fire("on_checkpoint", blob=self.checkpoint())
        self._fire(
            "on_end",
            status=self.status,
            step=self.diverged_at if self.diverged_at is not None else self.step,
        )
        return self.status
