"""Implicit schedules: record a magnitude trajectory ‖Δ_M,l(t)‖ and replay it later.

An optimizer's per-layer step norms over time are the learning-rate schedule it implies.
Saved to a JSON file, a :class:`MagnitudeSchedule` can be the ``magnitude`` of a new
``Graft``: the direction optimizer then takes steps of exactly the recorded lengths, with
no need to run the original optimizer again ("schedule transfer").
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FORMAT_VERSION = 1
AFTER_END = ("hold", "error")


class MagnitudeSchedule:
    """A per-layer step-norm trajectory, replayable as ``Graft(..., magnitude=schedule, ...)``.

    Args:
        layer_names: the layers (columns), as ``Graft.layers.names`` of the recorded run.
        steps: the step index (0-based) of each row, increasing; a step between two rows
            takes the earlier row's value, so a decimated recording replays piecewise constant.
        norms: ``(len(steps), len(layer_names))`` step norms; NaN (layer not stepped) → 0.
        after_end: past the last row, ``"hold"`` its value or raise (``"error"``).
        source: free-form description of where the schedule came from (saved with it).
        shapes: parameter name -> shape in the recorded model; when known, a model with other
            shapes (another width, say) is refused at replay.
    """

    def __init__(
        self,
        layer_names: list[str],
        steps: list[int],
        norms: Tensor | list,
        *,
        after_end: str = "hold",
        source: dict[str, Any] | None = None,
        shapes: dict[str, list[int]] | None = None,
    ) -> None:
        norms = torch.as_tensor(norms, dtype=torch.float32)
        if norms.ndim != 2 or norms.shape != (len(steps), len(layer_names)):
            raise ValueError(
                f"norms must have shape (steps={len(steps)}, layers="
                f"{len(layer_names)}), got {tuple(norms.shape)}"
            )
        if not steps:
            raise ValueError("A schedule needs at least one step")
        if any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] < 0:
            raise ValueError("steps must be non-negative and strictly increasing")
        if after_end not in AFTER_END:
            raise ValueError(f"Invalid after_end: {after_end!r} (valid: {AFTER_END})")
        if (norms < 0).any():
            raise ValueError("Step norms cannot be negative")
        if torch.isinf(norms).any():  # replayed, it would skip the layer's step in silence
            row, column = torch.isinf(norms).nonzero()[0].tolist()
            raise ValueError(
                f"norms: {int(torch.isinf(norms).sum())} values are infinite, the first for "
                f"layer {layer_names[column]!r} at step {steps[row]}; a step norm is a finite "
                "number >= 0 (NaN: the layer was not stepped)"
            )
        self.layer_names = list(layer_names)
        self.steps = [int(s) for s in steps]
        self.norms = torch.nan_to_num(norms, nan=0.0)
        self.after_end = after_end
        self.source = dict(source or {})
        self.shapes = {n: list(shape) for n, shape in (shapes or {}).items()}
        self._columns: Tensor | None = None  # norms reordered to the Graft's layers, on device

    def __len__(self) -> int:
        return self.steps[-1] + 1

    def check_layers(
        self, names: tuple[str, ...], shapes: dict[str, list[int]] | None = None
    ) -> None:
        """Align columns to a Graft's layers; a different set of layers, or parameters of
        other ``shapes`` (name -> shape) than the recorded model's, is an error."""
        missing = sorted(set(names) - set(self.layer_names))
        extra = sorted(set(self.layer_names) - set(names))
        if missing or extra:
            raise ValueError(
                f"Schedule layers do not match the optimizer's: missing {missing}, "
                f"not in the model {extra}"
            )
        differ = {
            n: (self.shapes[n], list(shape))
            for n, shape in (shapes or {}).items()
            if n in self.shapes and self.shapes[n] != list(shape)
        }
        if differ:
            raise ValueError(
                f"The schedule was recorded on another model: parameter shapes "
                f"(recorded, here) differ for {differ}"
            )
        order = [self.layer_names.index(n) for n in names]
        self._columns = self.norms[:, order]

    def norms_at(self, step: int, device: torch.device | str = "cpu") -> Tensor:
        """The recorded step norm of every layer at ``step`` (a host index: no device sync)."""
        if self._columns is None:
            raise RuntimeError("check_layers() must be called first (Graft does this)")
        if self._columns.device != torch.device(device):
            self._columns = self._columns.to(device)
        if step > self.steps[-1] and self.after_end == "error":
            raise IndexError(f"Step {step} is past the schedule's last step {self.steps[-1]}")
        row = max(bisect.bisect_right(self.steps, step) - 1, 0)
        return self._columns[row]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (NaN-free)."""
        return {
            "format": "grafting-lab/magnitude-schedule",
            "version": FORMAT_VERSION,
            "layer_names": self.layer_names,
            "steps": self.steps,
            "norms": self.norms.tolist(),
            "after_end": self.after_end,
            "source": self.source,
            "shapes": self.shapes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MagnitudeSchedule:
        """Inverse of :meth:`to_dict`, with a clear error for other files."""
        if data.get("format") != "grafting-lab/magnitude-schedule":
            raise ValueError("Not a magnitude schedule file (format field missing or different)")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"Unsupported schedule version {data.get('version')!r}")
        _check_finite(data["norms"], data["layer_names"], data["steps"])
        return cls(
            data["layer_names"],
            data["steps"],
            data["norms"],
            after_end=data.get("after_end", "hold"),
            source=data.get("source"),
            shapes=data.get("shapes"),
        )

    def save(self, path: str | Path) -> Path:
        """Write the schedule as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> MagnitudeSchedule:
        """Read a schedule written by :meth:`save`."""
        schedule = cls.from_dict(json.loads(Path(path).read_text()))
        if overrides:
            schedule = cls(
                schedule.layer_names,
                schedule.steps,
                schedule.norms,
                source=schedule.source,
                shapes=schedule.shapes,
                **{"after_end": schedule.after_end, **overrides},
            )
        return schedule

    @classmethod
    def from_records(
        cls,
        layer_names: list[str],
        steps: list[int],
        records: Tensor,
        fields: tuple[str, ...],
        *,
        field: str = "magnitude_norm",
        source: dict[str, Any] | None = None,
        shapes: dict[str, list[int]] | None = None,
    ) -> MagnitudeSchedule:
        """From a norm recording ``(steps, layers, fields)``, e.g. ``NormLog.read()``."""
        if field not in fields:
            raise ValueError(f"Unknown field {field!r} (valid: {fields})")
        values = records[:, :, fields.index(field)]
        return cls(layer_names, steps, values, source=source, shapes=shapes)


def _check_finite(norms: Any, layer_names: list[str], steps: list[int]) -> None:
    """A schedule file's norms must be finite (JSON admits ``Infinity`` and ``NaN``): one
    such value would silently skip a layer's step (inf) or freeze it (NaN read as 0)."""
    values = torch.as_tensor(norms, dtype=torch.float64)
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad) and values.ndim == 2:
        row, column = bad[0].tolist()
        layer = layer_names[column] if column < len(layer_names) else column
        step = steps[row] if row < len(steps) else row
        raise ValueError(
            f"norms: {len(bad)} values are not finite, the first {values[row, column].item()} "
            f"for layer {layer!r} at step {step}; a schedule's norms must be finite numbers >= 0"
        )
