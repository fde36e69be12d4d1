"""The reference backend of ``Graft.step``: foreach ops, no host sync; any children or device.

Native children return their steps without touching the weights (two weights-sized
temporaries, Δ_M and Δ_D); black-box children are driven through ``step()``: the weights are
copied to one weights-sized scratch, M steps and the difference is its Δ_M, the weights are
restored, D steps and the weights hold D's result until the grafted step is blended in.
This is the path every other backend is tested against, and the one taken on GPUs: there
each ``torch._foreach_*`` op is one multi-tensor kernel launch for all parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import partial
from .core import Proposal
from .schedule import MagnitudeSchedule


def propose(graft: Any, plan: Any) -> Proposal:
    """Run both children on the gradients of ``plan.params`` (see :class:`Proposal`)."""
    params = plan.params
    grads = [p.grad for p in params]
    grad_norm = graft._reduce(graft._tensor_norms(grads), plan)
    if graft.skip_nonfinite:  # the children of a non-finite layer see a zero gradient
        for grad, bad in zip(grads, (~torch.isfinite(grad_norm))[plan.index].unbind()):
            grad.masked_fill_(bad, 0.0)
    weight_norm = graft._reduce(graft._tensor_norms(params), plan)
    scratch = None if graft.native else _snapshot(graft, params)
    if graft.direction is None:  # plain M: its own step
        steps = _steps(graft, graft.magnitude, plan, scratch)
    elif plan.partial:  # Δ_D on grafted parameters, Δ_M on the others
        magnitude_norm, steps = partial.steps(graft, plan, scratch)
    else:
        magnitude_norm = _magnitude_norms(graft, plan, scratch)
        steps = _steps(graft, graft.direction, plan, scratch)
    per_tensor = graft._tensor_norms(steps)
    direction_norm = graft._reduce(per_tensor, plan)
    if graft.direction is None:
        magnitude_norm = direction_norm

    def apply(scales: Tensor) -> Tensor:
        if graft.native:
            torch._foreach_addcmul_(params, steps, list(scales.unbind()))
        else:  # the weights hold D's result: w = scratch + scale · (w − scratch)
            torch._foreach_mul_(params, list(scales.unbind()))
            torch._foreach_add_(params, scratch)
        return weight_norm

    return Proposal(grad_norm, magnitude_norm, direction_norm, per_tensor, apply)


def _snapshot(graft: Any, params: list[Tensor]) -> list[Tensor]:
    scratch = graft._scratch_for(params)
    torch._foreach_copy_(scratch, params)
    return scratch


def _magnitude_norms(graft: Any, plan: Any, scratch: list[Tensor] | None) -> Tensor:
    """‖Δ_M‖ per layer; a black-box M's step is undone before D steps."""
    if isinstance(graft.magnitude, MagnitudeSchedule):
        return graft.magnitude.norms_at(graft.graft_step, plan.index.device)
    steps = _steps(graft, graft.magnitude, plan, scratch)
    norms = graft._reduce(graft._tensor_norms(steps), plan)
    if not graft.native:
        torch._foreach_copy_(plan.params, scratch)
    return norms


def _steps(graft: Any, child: Any, plan: Any, scratch: list[Tensor] | None) -> list[Tensor]:
    """``child``'s proposed steps (black box: left in the weights themselves)."""
    if graft.native:
        return graft._child_steps(child, plan.params)
    child.step()
    torch._foreach_sub_(plan.params, scratch)  # the weights now hold Δ
    return plan.params
