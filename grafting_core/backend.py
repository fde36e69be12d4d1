"""What ``Graft`` hands a backend for one step, and nothing more: the backends' contract.

A backend (the reference foreach step :mod:`grafting_core.reference`, the fused CPU kernels
:mod:`grafting_core.fused`, FSDP2 shards :mod:`grafting_core.sharded`) is a module with

    ``propose(context: StepContext) -> Proposal``

that runs both children on the gradients of ``context.plan.params`` and returns a
:class:`~grafting_core.core.Proposal` (per-layer norms and a way to apply the scaled steps).
``Graft`` builds the :class:`StepContext`, picks the backend, turns the proposal's norms into
scales with :func:`~grafting_core.core.graft_scales` and records the step. A backend reads the
context only, never ``Graft`` itself (``tests/test_backend_contract.py`` checks their source).

A leaf module: it imports torch and the library's leaves (:mod:`grafting_core.dtensor`,
:mod:`grafting_core.schedule`) only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .dtensor import Sharding
from .schedule import MagnitudeSchedule

Tensors = list[Tensor]


@dataclass
class Plan:
    """Index bookkeeping for one set of parameters with gradients (``Graft`` caches it between
    steps while the same parameters have gradients)."""

    key: tuple[int, ...]  # each active parameter's position among Graft's parameters
    params: list[Tensor]  # the active parameters (with a gradient), in Graft's order
    index: Tensor  # layer of each active parameter
    is_identity: bool  # one layer per parameter, all present, in order
    active_layers: Tensor  # bool per layer: has at least one active parameter
    grafted: tuple[bool, ...]  # per active parameter: its layer is grafted (else M's step)
    partial: bool  # some active parameter is not grafted
    elements: int  # numbers in the active parameters
    fused_guard: Any = None  # the fused backend's segments of whole layers, built once

    def reduce(self, per_tensor: Tensor) -> Tensor:
        """Per-layer norms (one per layer of Graft, active or not) from per-tensor norms."""
        if self.is_identity:
            return per_tensor
        sums = torch.zeros(
            len(self.active_layers), dtype=per_tensor.dtype, device=per_tensor.device
        )
        sums.index_add_(0, self.index, per_tensor.square())
        return sums.sqrt()


@dataclass(frozen=True, slots=True)
class StepContext:
    """One step of ``Graft`` as a backend sees it (built by ``Graft`` for every step)."""

    #: The parameters stepped and their layers; ``plan.reduce`` makes per-layer norms.
    plan: Plan
    #: M: a torch optimizer (native or black box) or a replayed :class:`MagnitudeSchedule`.
    magnitude: torch.optim.Optimizer | MagnitudeSchedule
    #: D: a torch optimizer over the grafted parameters (or all), or None (plain M's steps).
    direction: torch.optim.Optimizer | None
    #: Both children are native (their steps computed without touching the weights).
    native: bool
    #: Graft's ``path``: "auto", "native" or "blackbox".
    path: str
    #: Some layer of Graft is not grafted (takes M's own step).
    partial: bool
    #: A layer with a non-finite gradient is skipped, its children seeing a zero gradient.
    skip_nonfinite: bool
    #: Steps Graft took before this one (a replayed schedule's position).
    graft_step: int
    #: How the parameters are sharded (FSDP2), or None when none is a DTensor.
    sharding: Sharding | None
    #: ``scratch_for(params, like=None)``: the black-box path's one weights-sized buffer per
    #: parameter, shaped like ``like`` (default: the parameters), kept by Graft between steps.
    scratch_for: Callable[[Tensors, Tensors | None], Tensors]
    #: A backend's own cache between steps, keyed as it likes (tensors' identities included):
    #: Graft keeps it and empties it when it is copied or unpickled.
    memo: dict[str, Any]


def child_steps(child: Any, params: Tensors) -> Tensors:
    """A native child's steps for ``params``, in that order (its state advances)."""
    stepped, steps = child.compute_steps(params)
    if len(stepped) == len(params) and all(a is b for a, b in zip(stepped, params)):
        return steps
    by_id = {id(p): s for p, s in zip(stepped, steps)}
    return [by_id[id(p)] for p in params]
