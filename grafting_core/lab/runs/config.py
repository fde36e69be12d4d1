"""``RunConfig``: everything one training run needs, flat, typed and validated.

One flat record (not a nested tree) so that the command line, grids, the app and the run
store all speak the same keys: ``--magnitude adam``, ``grid(vary={"seed": [0, 1, 2]})``.
Overrides accept only known keys with values of the default's type; unknown keys are errors.

    cfg = RunConfig(dataset="chars", magnitude="adam", direction="sgd", steps=300)
    cfg = cfg.replace(seed=1)
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafting_core.layer_kinds import LAYER_KINDS
from grafting_core.layers import GRANULARITIES
from grafting_core.registry import OptimizerSpec

SCHEDULES = ("constant", "cosine", "linear", "warmup_cosine")


def _option(default: Any, help: str) -> Any:
    """A config field with its help text (shown by ``--help`` and in the app)."""
    if isinstance(default, dict | list):
        return field(default_factory=type(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


#: numpy's seeding (the generated data sets, mnist1d) takes 0 … 2^32 - 1; torch and SQLite more
MAX_SEED = 2**32 - 1
#: a bound on a run's length (10^8 steps: a day at 1 ms a step), so a typo is not a run
MAX_STEPS = 10**8


@dataclass(frozen=True)
class RunConfig:
    """One training run: data, model, optimizers, schedule and loop settings."""

    name: str = _option("", "free label shown in run lists")
    dataset: str = _option("mnist1d", "dataset: mnist1d | digits | chars | teacher")
    model: str = _option("", "model: mlp | cnn1d | cnn | transformer; empty = dataset's default")
    width: int = _option(0, "model width; 0 = the model's default")
    depth: int = _option(0, "model depth; 0 = the model's default")
    custom: str = _option("", "'module:function' returning (model, Dataset); replaces dataset")
    magnitude: str = _option("adam", "M: the optimizer whose step sizes are used (or plain M)")
    magnitude_hparams: dict[str, Any] = _option({}, "M's hyperparameters as JSON: '{\"lr\": 1e-3}'")
    direction: str = _option("", "D: the optimizer whose directions are used; empty = plain M")
    direction_hparams: dict[str, Any] = _option({}, "D's hyperparameters as JSON")
    granularity: str = _option("tensor", "grafting layers: tensor | module | global")
    grafted: list = _option(
        [],
        "layer kinds grafted (embedding, head, norm, bias, hidden); "
        "the others take M's own step; empty = every layer",
    )
    graft_lr: float = _option(1.0, "Graft's global multiplier of the grafted step")
    schedule: str = _option("constant", "schedule of M's lr: constant|cosine|linear|warmup_cosine")
    warmup_steps: int = _option(0, "linear warm-up steps for warmup_cosine")
    replay: str = _option("", "magnitude-schedule JSON file or 'run:<id>' replayed as M")
    static_ratios: str = _option(
        "", "static-ratios JSON file, 'run:<id>' or 'run:<id>:<artifact>': per-layer lr on M"
    )
    steps: int = _option(500, "optimizer steps")
    batch_size: int = _option(64, "examples (text: windows) per step")
    seed: int = _option(0, "seed of model init and data order")
    device: str = _option("auto", "auto (CUDA when present) | cpu | cuda | cuda:N")
    eval_every: int = _option(100, "steps between validation passes (and at the end)")
    eval_examples: int = _option(1000, "validation examples (text: windows) per pass")
    log_every: int = _option(10, "steps between metric flushes (one host sync each)")
    flush_seconds: float = _option(0.25, "at least this long between flushes (0 = every log_every)")
    record_every: int = _option(1, "record per-layer norms every this many steps")
    checkpoint_every: int = _option(
        200, "steps between checkpoints (a kill -9 loses at most these); 0 = at stop and end only"
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if isinstance(default, float) and is_int:
                object.__setattr__(self, f.name, float(value))
                value = float(value)
            if type(value) is not type(default):
                raise TypeError(f"Invalid {f.name}: {value!r} (expected {type(default).__name__})")
        self._validate()

    def _validate(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "eval_every",
            "eval_examples",
            "log_every",
            "record_every",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"Invalid {key}: {getattr(self, key)} (must be >= 1)")
        for key in ("width", "depth", "seed", "warmup_steps", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"Invalid {key}: {getattr(self, key)} (must be >= 0)")
        for key, most in (("seed", MAX_SEED), ("steps", MAX_STEPS)):
            if getattr(self, key) > most:
                raise ValueError(f"Invalid {key}: {getattr(self, key)} (must be <= {most})")
        if not math.isfinite(self.flush_seconds) or self.flush_seconds < 0:
            raise ValueError(f"Invalid flush_seconds: {self.flush_seconds} (must be >= 0)")
        if not math.isfinite(self.graft_lr) or self.graft_lr < 0:
            raise ValueError(f"Invalid graft_lr: {self.graft_lr} (must be a finite number >= 0)")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"Invalid granularity: {self.granularity!r} (valid: {GRANULARITIES})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Invalid schedule: {self.schedule!r} (valid: {SCHEDULES})")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"Invalid device: {self.device!r} (valid: auto, cpu, cuda, cuda:N)")
        if self.replay and not self.direction:
            raise ValueError("replay needs a direction optimizer (the schedule replaces M)")
        if self.replay and self.static_ratios:
            raise ValueError("Choose replay or static_ratios, not both")
        if self.replay and self.schedule != "constant":
            raise ValueError(
                f"Invalid schedule for a replay: {self.schedule!r}. The recorded "
                "step sizes already carry the source run's schedule; a replay "
                "runs with schedule 'constant' (another would apply it twice)"
            )
        unknown = [k for k in self.grafted if k not in LAYER_KINDS]
        if unknown or len(set(self.grafted)) != len(self.grafted):
            raise ValueError(
                f"Invalid grafted: {self.grafted!r} (distinct layer kinds "
                f"among {', '.join(LAYER_KINDS)})"
            )
        if self.grafted and (not self.direction or self.replay):
            raise ValueError(
                "grafted chooses the layers of an M#D graft: it needs a direction "
                "optimizer and no replay (a replayed schedule has no M step)"
            )
        if self.static_ratios and self.direction:
            raise ValueError(
                "static_ratios trains one plain optimizer (magnitude) with "
                "per-layer learning rates; leave direction empty"
            )
        self.magnitude_spec()
        if self.direction:
            self.direction_spec()

    def magnitude_spec(self) -> OptimizerSpec:
        """M as a validated spec (errors name the field)."""
        return _spec("magnitude", self.magnitude, self.magnitude_hparams)

    def direction_spec(self) -> OptimizerSpec | None:
        """D as a validated spec, or None for a plain run."""
        if not self.direction:
            return None
        return _spec("direction", self.direction, self.direction_hparams)

    @property
    def label(self) -> str:
        """Short description: ``adam#sgd``, ``adam``, ``replay#sgd``, ``sgd+ratios``."""
        if self.replay:
            return f"replay#{self.direction}"
        if self.static_ratios:
            return f"{self.magnitude}+ratios"
        if self.grafted:
            return f"{self.magnitude}#{self.direction}[{'+'.join(self.grafted)}]"
        return f"{self.magnitude}#{self.direction}" if self.direction else self.magnitude

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (validated like the constructor)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ValueError(f"Unknown config key(s) {unknown}. Valid: {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls().replace(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        """Read a TOML or JSON file of config keys."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--config {path}: cannot be read ({error})") from None
        kind = "JSON" if path.suffix == ".json" else "TOML"
        try:
            data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
        except ValueError as error:  # json.JSONDecodeError, tomllib.TOMLDecodeError
            raise ValueError(f"--config {path}: not valid {kind} ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: expected a table of settings, got {data!r:.60}")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as error:
            raise type(error)(f"--config {path}: {error}") from None


def _spec(role: str, name: str, hparams: dict[str, Any]) -> OptimizerSpec:
    try:
        spec = OptimizerSpec(name, hparams)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{role}: {error}") from error
    if spec.resolved.get("lr") == 0:  # M would take no step; D would give no direction
        raise ValueError(
            f"Invalid {role} lr: 0 ({name} would not move; a number too large "
            "to represent, like 1e400, also arrives as 0)"
        )
    return spec


def field_names() -> list[str]:
    """All config keys, in declaration order."""
    return [f.name for f in dataclasses.fields(RunConfig)]


def field_help(name: str) -> str:
    """The one-line explanation of a config key."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(RunConfig)}[name]


def parse_value(key: str, text: str) -> Any:
    """Parse a command-line string for ``key`` into the type of its default."""
    if key not in field_names():
        raise ValueError(f"Unknown config key {key!r}. Valid: {field_names()}")
    default = getattr(RunConfig(), key)
    flag = f"--{key.replace('_', '-')}"
    if isinstance(default, (dict, list)) and text.strip().startswith(("{", "[")):
        try:
            json.loads(text)
        except ValueError as error:
            raise ValueError(f"{flag} {text!r}: not valid JSON ({error})") from None
    if isinstance(default, dict):
        value = json.loads(text) if text.strip() else {}
        if not isinstance(value, dict):
            raise ValueError(f"Invalid {key}: expected a JSON object like '{{\"lr\": 0.1}}'")
        return value
    if isinstance(default, list):  # a JSON list, or words separated by commas
        value = (
            json.loads(text)
            if text.strip().startswith("[")
            else [word.strip() for word in text.split(",") if word.strip()]
        )
        if not isinstance(value, list):
            raise ValueError(f"Invalid {key}: expected a list like 'hidden,norm'")
        return value
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    try:
        return type(default)(text)
    except ValueError as error:
        raise ValueError(f"Invalid {key}: {text!r} (expected {type(default).__name__})") from error
