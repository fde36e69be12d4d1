"""Optimizer memory, measured from the states themselves (not estimated from formulas)."""

from __future__ import annotations

from typing import Any

import torch


def _tensor_bytes(value: Any, seen: set[int]) -> int:
    if torch.is_tensor(value):
        key = value.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return value.untyped_storage().nbytes()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v, seen) for v in value)
    return 0


def state_bytes(optimizer: Any) -> int:
    """Bytes of tensor state an optimizer holds (a Graft: both children and its scratch)."""
    seen: set[int] = set()
    total = 0
    # A Graft's own ``state`` is a view over its children's (state_format): count those.
    owners = (
        (optimizer.magnitude, optimizer.direction)
        if hasattr(optimizer, "magnitude")
        else (optimizer,)
    )
    for opt in owners:
        if isinstance(opt, torch.optim.Optimizer):
            total += _tensor_bytes(dict(opt.state), seen)
    total += _tensor_bytes(list(getattr(optimizer, "_scratch", {}).values()), seen)
    return total
