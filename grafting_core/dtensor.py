"""DTensor (FSDP2) helpers: a leaf module that imports torch only.

Both :mod:`grafting_core.native` (rules stepping each rank's local shards) and
:mod:`grafting_core.sharded` (Graft's backend on shards) need them; here neither imports the
other. :class:`Sharding` is what ``Graft`` finds out about its sharded parameters once, when it
is built (:func:`grafting_core.sharded.detect`), and the one reduction that makes shard norms
whole.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def dtensor_type() -> type | None:
    """``DTensor``, or None when ``torch.distributed.tensor`` was never imported (then no
    parameter can be one, and checking costs nothing)."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def has_dtensor(tensors: list[Tensor]) -> bool:
    """Whether any of ``tensors`` is a ``DTensor``."""
    cls = dtensor_type()
    return cls is not None and any(isinstance(t, cls) for t in tensors)


def local_tensors(tensors: list[Tensor]) -> list[Tensor]:
    """Each DTensor's local shard (sharing its storage), other tensors as they are."""
    cls = dtensor_type()
    return [t.to_local() if cls is not None and isinstance(t, cls) else t for t in tensors]


@dataclass(frozen=True)
class Sharding:
    """How Graft's parameters are sharded, and the one reduction that makes their norms whole."""

    groups: tuple[Any, ...]  # process groups summed over: mesh dims some parameter is sharded on
    weights: tuple[float, ...] | None  # per parameter: 0 where a replicated copy must not count
    comm_device: torch.device | None  # where the vector travels when not the shards' (offload)

    def whole_norms(self, pieces: list[Tensor], key: tuple[int, ...]) -> list[Tensor]:
        """Whole-tensor norms from per-tensor shard norms (one 1-D tensor per quantity): one
        all_reduce of all their squares."""
        squares = torch.stack([s.to(torch.float64) for s in pieces]).square()
        if self.weights is not None:
            squares.mul_(
                torch.tensor(
                    [self.weights[i] for i in key], dtype=torch.float64, device=squares.device
                )
            )
        vector = squares if self.comm_device is None else squares.to(self.comm_device)
        for group in self.groups:  # one group for FSDP2 and HSDP
            torch.distributed.all_reduce(vector, group=group)
        norms = vector.to(squares.device).sqrt()
        return [row.to(s.dtype) for row, s in zip(norms.unbind(), pieces)]
