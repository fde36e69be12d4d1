"""``NormLog``: per-layer norms of every ``Graft`` step, kept on the device in a ring buffer.

The log attaches to a ``Graft`` as a step post-hook and copies ``graft.last_norms`` into a
preallocated ``(capacity, layers, fields)`` tensor: no host sync per step, bounded memory.
Readers (a trainer every few hundred steps, a notebook at the end) take rows in bulk with
:meth:`read`; the ring keeps the newest ``capacity`` records and counts what it dropped.
For long runs either read regularly (the lab's trainer drains it into the run store) or
set ``every`` to record one step in ``every`` (decimation).

Distributed runs: under DDP every rank computes the same norms; under FSDP2 ``Graft`` sums
the shards' squared norms across ranks before it fills ``last_norms``, so the values are
whole-layer norms, identical on every rank. Attach one ``NormLog`` on rank 0 (it adds no
communication) and save schedules or ratios from there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .graft import NORM_FIELDS, Graft
from .schedule import MagnitudeSchedule


class NormLog:
    """Records ``NORM_FIELDS`` per layer for each (``every``-th) step of ``graft``."""

    def __init__(self, graft: Graft, *, capacity: int = 10_000, every: int = 1) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"Invalid capacity: {capacity!r} (must be an int >= 1)")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"Invalid every: {every!r} (must be an int >= 1)")
        self.graft = graft
        self.capacity = capacity
        self.every = every
        self.fields = NORM_FIELDS
        self.layer_names = graft.layers.names
        self.buffer = torch.full(
            (capacity, len(self.layer_names), len(NORM_FIELDS)),
            float("nan"),
            device=graft.last_norms.device,
        )
        self._steps = [-1] * capacity  # host-side step ids of each row
        self.count = 0  # records written so far (rows beyond capacity were overwritten)
        self._handle = graft.register_step_post_hook(self._on_step)

    def _on_step(self, graft: Graft, args, kwargs) -> None:
        step = graft.graft_step - 1
        if step % self.every:
            return
        row = self.count % self.capacity
        self.buffer[row].copy_(graft.last_norms)
        self._steps[row] = step
        self.count += 1

    @property
    def dropped(self) -> int:
        """Records overwritten because the ring was full."""
        return max(self.count - self.capacity, 0)

    def read(self, since: int = -1) -> tuple[list[int], Tensor]:
        """``(steps, values)`` for records with step > ``since``, oldest first; values on CPU."""
        n = min(self.count, self.capacity)
        start = self.count - n
        rows = [(i % self.capacity) for i in range(start, self.count)]
        rows = [r for r in rows if self._steps[r] > since]
        if not rows:
            return [], torch.empty(0, len(self.layer_names), len(self.fields))
        values = self.buffer[torch.tensor(rows, device=self.buffer.device)].cpu()
        return [self._steps[r] for r in rows], values

    def magnitude_schedule(self) -> MagnitudeSchedule:
        """The recorded ‖Δ_M‖ trajectory as a replayable schedule."""
        steps, values = self.read()
        if not steps:
            raise ValueError("Nothing recorded yet: step the optimizer first")
        return MagnitudeSchedule.from_records(
            list(self.layer_names), steps, values, self.fields, source={"every": self.every}
        )

    def close(self) -> None:
        """Stop recording (remove the hook)."""
        self._handle.remove()
