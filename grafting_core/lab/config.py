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

from ..layers import GRANULARITIES
from ..registry import OptimizerSpec

SCHEDULES = ("constant", "cosine", "linear", "warmup_cosine")


@dataclass(frozen=True)
class RunConfig:
    """One training run: data, model, optimizers, schedule and loop settings."""

    name: str = ""  # free label shown in run lists
    dataset: str = "mnist1d"  # a name from data.dataset_names()
    model: str = ""  # "" = the dataset's default model
    width: int = 0  # 0 = the model's default width
    depth: int = 0  # 0 = the model's default depth
    custom: str = ""  # "module:function" returning (model, Dataset); replaces dataset/model
    magnitude: str = "adam"  # M: the optimizer whose step sizes are used (or the plain one)
    magnitude_hparams: dict[str, Any] = field(default_factory=dict)
    direction: str = ""  # D: the optimizer whose directions are used; "" = plain M
    direction_hparams: dict[str, Any] = field(default_factory=dict)
    granularity: str = "tensor"  # grafting layers: tensor | module | global
    graft_lr: float = 1.0  # Graft's global multiplier
    schedule: str = "constant"  # LR schedule on M's lr: constant | cosine | linear | warmup_cosine
    warmup_steps: int = 0  # linear warm-up length for warmup_cosine
    replay: str = ""  # a magnitude-schedule file, or "run:<id>", replayed as M
    static_ratios: str = ""  # a static-ratios file, or "run:<id>": per-layer lr multipliers on M
    steps: int = 500  # optimizer steps
    batch_size: int = 64
    seed: int = 0  # model init and data order
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    eval_every: int = 100  # steps between validation passes (and at the end)
    eval_examples: int = 1000  # validation examples (windows for text) per pass
    log_every: int = 10  # steps between metric flushes (one host sync each)
    record_every: int = 1  # record per-layer norms every this many steps
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at stop and at the end only

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                value = float(value)
            if type(value) is not type(default):
                raise TypeError(f"Invalid {f.name}: {value!r} (expected {type(default).__name__})")
        self._validate()

    def _validate(self) -> None:
        positive = ("steps", "batch_size", "eval_every", "eval_examples", "log_every",
                    "record_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"Invalid {key}: {getattr(self, key)} (must be >= 1)")
        for key in ("width", "depth", "seed", "warmup_steps", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"Invalid {key}: {getattr(self, key)} (must be >= 0)")
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
        self.magnitude_spec()
        if self.direction:
            self.direction_spec()

    def magnitude_spec(self) -> OptimizerSpec:
        """M as a validated spec (errors name the field)."""
        return _spec("magnitude", self.magnitude, self.magnitude_hparams)

    def direction_spec(self) -> OptimizerSpec | None:
        """D as a validated spec, or None for a plain run."""
        return _spec("direction", self.direction, self.direction_hparams) if self.direction else None

    @property
    def label(self) -> str:
        """Short description: ``adam#sgd``, ``adam``, ``replay#sgd``, ``sgd+ratios``."""
        if self.replay:
            return f"replay#{self.direction}"
        if self.static_ratios:
            return f"{self.magnitude}+ratios"
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
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return cls.from_dict(data)


def _spec(role: str, name: str, hparams: dict[str, Any]) -> OptimizerSpec:
    try:
        return OptimizerSpec(name, hparams)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{role}: {error}") from error


def field_names() -> list[str]:
    """All config keys, in declaration order."""
    return [f.name for f in dataclasses.fields(RunConfig)]


def parse_value(key: str, text: str) -> Any:
    """Parse a command-line string for ``key`` into the type of its default."""
    if key not in field_names():
        raise ValueError(f"Unknown config key {key!r}. Valid: {field_names()}")
    default = getattr(RunConfig(), key)
    if isinstance(default, dict):
        value = json.loads(text) if text.strip() else {}
        if not isinstance(value, dict):
            raise ValueError(f"Invalid {key}: expected a JSON object like '{{\"lr\": 0.1}}'")
        return value
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    try:
        return type(default)(text)
    except ValueError as error:
        raise ValueError(f"Invalid {key}: {text!r} (expected {type(default).__name__})") from error
