"""The reference backend of ``Graft.step``: foreach ops, no host sync; any children or device.

Native children return their steps without touching the weights (two weights-sized
temporaries, Δ_M and Δ_D); black-box children are driven through ``step()``: the weights are
copied to one weights-sized scratch, M steps and the difference is its Δ_M, the weights are
restored, D steps and the weights hold D's result until the grafted step is blended in.
With ``grafted=`` (partial grafting) D steps only the grafted tensors and the others keep
Δ_M. This is the path every other backend is tested against, and the one taken on GPUs:
there each ``torch._foreach_*`` op is one multi-tensor kernel launch for all parameters.
FSDP2 shards take it too (:mod:`grafting_core.sharded`): the children step each rank's
local shards and one all_reduce makes the shards' norms whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .backend import StepContext, Tensors, child_steps
from .core import Proposal
from .partial import hidden_grads, pick
from .rules import tensor_norms
from .schedule import MagnitudeSchedule


def _same(tensors: Any) -> Any:
    return tensors


def propose(
    context: StepContext,
    *,
    local: Callable[[Tensors], Tensors] = _same,
    whole: Callable[[Tensors], Tensors] = _same,
) -> Proposal:
    """Run both children on the gradients of ``context.plan.params`` (see :class:`Proposal`).

    ``local`` maps tensors to the ones the children's steps live in (FSDP2: each rank's
    shards); ``whole`` turns per-tensor norms of those into norms of the whole tensors
    (FSDP2: sums their squares over the ranks, one all_reduce for every norm of the step).
    """
    plan = context.plan
    params = plan.params
    grads = local([p.grad for p in params])
    grad_t = torch.stack(tensor_norms(grads))
    if context.skip_nonfinite:  # the children of a non-finite layer see a zero gradient
        bad = ~torch.isfinite(plan.reduce(grad_t))
        for grad, skip in zip(grads, bad[plan.index].unbind()):
            grad.masked_fill_(skip, 0.0)
    weight_t = torch.stack(tensor_norms(local(params)))
    scratch = None if context.native else _snapshot(context, params, local)
    replay = isinstance(context.magnitude, MagnitudeSchedule)
    magnitude_t = []
    if context.direction is None:  # plain M: its own step
        steps = _steps(context, context.magnitude, scratch, local)
    elif plan.partial:  # Δ_D on grafted parameters, Δ_M on the others
        magnitude, steps = _partial_steps(context, scratch, local)
        magnitude_t = [magnitude]
    else:
        if not replay:
            magnitude_t = [_magnitude_norms(context, scratch, local)]
        steps = _steps(context, context.direction, scratch, local)
    step_t = torch.stack(tensor_norms(steps))
    grad_t, weight_t, step_t, *magnitude_t = whole([grad_t, weight_t, step_t, *magnitude_t])
    direction_norm = plan.reduce(step_t)
    if context.direction is None:
        magnitude_norm = direction_norm
    elif replay:
        magnitude_norm = context.magnitude.norms_at(context.graft_step, plan.index.device)
    else:
        magnitude_norm = plan.reduce(magnitude_t[0])

    def apply(scales: Tensor) -> Tensor:
        if context.native:
            torch._foreach_addcmul_(local(params), steps, list(scales.unbind()))
        else:  # the weights hold D's step: w = scratch + scale · Δ
            torch._foreach_mul_(steps, list(scales.unbind()))
            torch._foreach_add_(steps, scratch)
        return plan.reduce(weight_t)

    return Proposal(plan.reduce(grad_t), magnitude_norm, direction_norm, step_t, apply)


def _snapshot(
    context: StepContext, params: Tensors, local: Callable[[Tensors], Tensors]
) -> Tensors:
    """Copy the weights into the black-box path's one weights-sized scratch per parameter."""
    weights = local(params)
    scratch = context.scratch_for(params, weights)
    torch._foreach_copy_(scratch, weights)
    return scratch


def _steps(
    context: StepContext,
    child: Any,
    scratch: Tensors | None,
    local: Callable[[Tensors], Tensors],
) -> Tensors:
    """``child``'s proposed steps (black box: left in the weights themselves)."""
    params = context.plan.params
    if context.native:
        return child_steps(child, params)
    child.step()
    weights = local(params)  # read after the step: a child may rebind DTensor shards
    torch._foreach_sub_(weights, scratch)  # the weights now hold Δ
    return weights


def _magnitude_norms(
    context: StepContext, scratch: Tensors | None, local: Callable[[Tensors], Tensors]
) -> Tensor:
    """‖Δ_M‖ per tensor; a black-box M's step is undone before D steps."""
    steps = _steps(context, context.magnitude, scratch, local)
    norms = torch.stack(tensor_norms(steps))
    if not context.native:
        torch._foreach_copy_(steps, scratch)
    return norms


def _partial_steps(
    context: StepContext, scratch: Tensors | None, local: Callable[[Tensors], Tensors]
) -> tuple[Tensor, Tensors]:
    """``(‖Δ_M‖ per tensor, per-tensor step)``: Δ_D on grafted parameters, Δ_M elsewhere.

    Native children return steps without touching the weights and D computes only the
    grafted ones. Black boxes: M steps every parameter and the weights then hold Δ_M; the
    grafted ones are restored from ``scratch`` before D steps them and then hold Δ_D.
    """
    params, grafted = context.plan.params, context.plan.grafted
    magnitude = _steps(context, context.magnitude, scratch, local)
    norms = torch.stack(tensor_norms(magnitude))
    chosen = pick(params, grafted)
    if not chosen:
        return norms, magnitude
    if context.native:
        direction = iter(child_steps(context.direction, chosen))
        return norms, [next(direction) if g else m for m, g in zip(magnitude, grafted)]
    saved = pick(scratch, grafted)
    torch._foreach_copy_(pick(magnitude, grafted), saved)  # grafted weights back to w
    with hidden_grads(pick(params, grafted, keep=False)):
        context.direction.step()
    torch._foreach_sub_(local(chosen), saved)  # grafted weights hold Δ_D
    return norms, local(params)
