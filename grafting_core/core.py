r"""The grafting formula, as one function, and what a backend hands it.

Every backend (the reference foreach step in :mod:`grafting_core.reference`, the fused CPU
kernels of :mod:`grafting_core.fused`, FSDP2 shards in :mod:`grafting_core.sharded`) works
the same way: handed a :class:`~grafting_core.backend.StepContext` (the step's plan, the
children and what else ``Graft`` lends it), it runs both children on the gradients and
returns a :class:`Proposal` (per-layer ‖Δ_M‖, ‖Δ_D‖, ‖g‖ and a way to apply scaled
directions), ``Graft`` turns the norms into per-parameter scales with :func:`graft_scales`,
and the proposal applies them. Only the arithmetic of the children and where the memory
passes go differ between backends; the formula is here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def graft_scales(
    magnitude_norm: Tensor,
    direction_norm: Tensor,
    grad_finite: Tensor,
    *,
    layer_of: Tensor,
    lr: float | Tensor,
    grafted: Tensor,
    eps: float,
    skip_nonfinite: bool,
) -> tuple[Tensor, Tensor]:
    r"""Per-parameter multipliers of D's step: grafting M#D (Agarwal et al. 2020, eq. 1).

    .. math::
        w_{t+1,l} = w_{t,l} + \mathrm{lr} \cdot
            \frac{\lVert \Delta_{M,l} \rVert}{\lVert \Delta_{D,l} \rVert + \epsilon}\,\Delta_{D,l}

    so the scale of every parameter of layer ``l`` is ``lr · ‖Δ_M,l‖ / (‖Δ_D,l‖ + eps)``.
    A layer that is not grafted takes M's own step (its step *is* Δ_M, ratio one); a layer
    whose direction step is exactly zero does not move; with ``skip_nonfinite`` a layer whose
    gradient or proposed steps are NaN/inf does not move either (scale 0).

    Args:
        magnitude_norm, direction_norm: ‖Δ_M‖ and ‖Δ_D‖ per layer.
        grad_finite: per layer, whether ‖g‖ was finite.
        layer_of: the layer of each stepped parameter (indexes the per-layer tensors).
        lr: Graft's group learning rate, one number or one per stepped parameter.
        grafted: bool per layer; False: the layer's step is M's (no D, or partial grafting).
        eps: added to ‖Δ_D‖ in the ratio.
        skip_nonfinite: give non-finite layers scale 0.

    Returns:
        ``(finite, scales)``: per layer whether it stepped finitely, per parameter its scale.
    """
    ratio = magnitude_norm / (direction_norm + eps)
    ratio = torch.where(grafted, ratio, 1.0)
    moves = direction_norm > 0  # a zero direction step: the layer stays
    finite = grad_finite
    if skip_nonfinite:  # a non-finite gradient or proposed step never reaches w
        finite = finite & torch.isfinite(ratio) & torch.isfinite(direction_norm)
        moves = moves & finite
    ratio = torch.where(moves, ratio, 0.0)
    return finite, ratio[layer_of] * lr


@dataclass
class Proposal:
    """One step's children run by a backend: the norms the formula needs, and how to apply it.

    ``apply(scales)`` moves every stepped parameter by ``scales[i] · step_i`` (``step_i`` is
    Δ_D, or Δ_M on a layer that is not grafted) and returns ‖w‖ per layer before the move.
    """

    grad_norm: Tensor  # ‖g‖ per layer (inf/nan where the gradient was not finite)
    magnitude_norm: Tensor  # ‖Δ_M‖ per layer (a replayed schedule's value)
    direction_norm: Tensor  # ‖Δ_D‖ per layer (‖Δ_M‖ where the step is M's)
    direction_per_tensor: Tensor  # ‖step_i‖ per stepped parameter, for the applied step's norm
    apply: Callable[[Tensor], Tensor]
