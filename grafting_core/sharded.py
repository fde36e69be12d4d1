r"""``Graft`` on sharded parameters (FSDP2's ``DTensor``): whole-layer norms from ONE all_reduce.

Under ``torch.distributed.fsdp.fully_shard`` every parameter and gradient is a ``DTensor``
whose local tensor is this rank's shard. The native rules are element-wise, so each rank
runs them on its own shards (``p.to_local()``, the gradients' local tensors); only the
norms need the whole tensor. A grafted step therefore first computes every local quantity,
then sums squares across the shards with a single collective for all layers together:

.. math::
    v = \bigl[\lVert g_i \rVert^2,\ \lVert w_i \rVert^2,\ \lVert \Delta_{D,i} \rVert^2,\
        \lVert \Delta_{M,i} \rVert^2\bigr]_{i \in \text{tensors}}, \qquad
    v \leftarrow \textstyle\sum_{\text{shards}} v \quad (\text{one all\_reduce})

after which every rank holds the norms of the whole tensors, takes the same per-layer ratios
a single process would (:func:`grafting_core.core.graft_scales`), and applies them to its
shards. The step itself is the reference backend's (:mod:`grafting_core.reference`), handed
the shards and this reduction. Under DDP the parameters are plain replicated tensors with
averaged gradients: Graft needs nothing from this module there.

Everything here is decided once, when ``Graft`` is built (:func:`detect`): which mesh
dimensions are summed over and whether each child can step DTensor parameters. The
single-process step never looks at any of it. The DTensor helpers this backend shares with
:mod:`grafting_core.native` (local shards, :class:`~grafting_core.dtensor.Sharding`) are in
the leaf module :mod:`grafting_core.dtensor`.

.. warning:: A non-finite gradient is found per shard before the children step and only
    everywhere after the reduction. A layer whose gradient is NaN/inf on any shard is skipped
    on every rank (no weight moves, ``skipped`` is 1 everywhere), but only the ranks holding
    the bad values give their children zeros; the other shards' children see their finite
    gradient. In one process the children see zeros for the whole layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import reference
from .backend import StepContext
from .core import Proposal
from .dtensor import Sharding, dtensor_type, local_tensors
from .native import NativeOptimizer
from .schedule import MagnitudeSchedule

#: torch optimizers with element-wise steps that run on DTensor shards as they are (each
#: checked against one process in torch 2.13). Others must declare ``supports_dtensor = True``.
ELEMENTWISE_TORCH = frozenset(
    getattr(torch.optim, name)
    for name in (
        "SGD",
        "Adam",
        "AdamW",
        "Adagrad",
        "RMSprop",
        "NAdam",
        "RAdam",
        "Adamax",
        "Adadelta",
        "ASGD",
    )
)

#: torch optimizers known not to step FSDP2 shards correctly, with the reason (torch 2.13).
NOT_ON_DTENSOR = {
    getattr(torch.optim, name): reason
    for name, reason in (
        ("Muon", "it orthogonalises whole matrices and fails on uneven DTensor shards"),
        ("Adafactor", "its factored statistics fail on DTensor (in-place op on a partial norm)"),
        ("Rprop", "its in-place index_put_ is not supported on DTensor shards"),
        ("LBFGS", "it needs a closure and whole-model line searches"),
        ("SparseAdam", "it needs sparse gradients"),
    )
    if hasattr(torch.optim, name)
}

CHILD_ERROR = (
    "Graft cannot use {name} as {role} on DTensor (FSDP2-sharded) parameters: "
    "{reason}. Use one of torch's element-wise optimizers ({known}) or a native "
    "spec, or run it under DDP / in one process."
)
UNKNOWN_CHILD = (
    "it is not known to step DTensor shards correctly; if its update is "
    "element-wise (or written in DTensor-aware ops) set `supports_dtensor = True` "
    "on the class or instance first"
)
MIXED = (
    "Graft needs all its parameters to be DTensors on one device mesh when any is "
    "(fully_shard the root module too); {problem}"
)


def detect(named: list[tuple[str, Tensor]], magnitude: Any, direction: Any) -> Sharding | None:
    """The sharding of Graft's parameters ``named`` (``(name, tensor)`` pairs), or None when
    none is a ``DTensor``; ``magnitude`` and ``direction``: its children.

    Raises ``RuntimeError`` at construction for what cannot work: plain tensors mixed with
    DTensors, several meshes, placements other than Shard/Replicate, a child that cannot
    step DTensor shards.
    """
    cls = dtensor_type()
    if cls is None or not any(isinstance(p, cls) for _, p in named):
        return None
    plain = [n for n, p in named if not isinstance(p, cls)]
    if plain:
        raise RuntimeError(MIXED.format(problem=f"plain tensors: {plain[:5]}"))
    mesh = named[0][1].device_mesh
    elsewhere = [n for n, p in named if p.device_mesh != mesh]
    if elsewhere:
        raise RuntimeError(MIXED.format(problem=f"on another mesh: {elsewhere[:5]}"))
    summed = set()
    for name, p in named:
        for dim, placement in enumerate(p.placements):
            if placement.is_shard():
                summed.add(dim)
            elif not placement.is_replicate():
                raise RuntimeError(
                    f"Graft supports Shard and Replicate placements only; "
                    f"parameter {name!r} has {placement}"
                )
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        raise RuntimeError("This rank is not in the parameters' device mesh")
    # A tensor replicated along a summed dim has whole copies there: count one (coordinate 0).
    weights = tuple(
        float(all(coordinate[d] == 0 for d in summed if p.placements[d].is_replicate()))
        for _, p in named
    )
    for role, child in (("magnitude", magnitude), ("direction", direction)):
        _check_child(role, child)
    shard_device = named[0][1].to_local().device
    comm_device = None if shard_device.type == mesh.device_type else torch.device(mesh.device_type)
    return Sharding(
        tuple(mesh.get_group(d) for d in sorted(summed)),
        None if all(w == 1.0 for w in weights) else weights,
        comm_device,
    )


def _check_child(role: str, child: Any) -> None:
    """A clear error now for a child that cannot step DTensor shards."""
    if child is None or isinstance(child, MagnitudeSchedule | NativeOptimizer):
        return  # a native child checked its rule when it was built over the DTensors
    declared = getattr(child, "supports_dtensor", None)
    if declared is True or (declared is None and type(child) in ELEMENTWISE_TORCH):
        return
    known = ", ".join(sorted(c.__name__ for c in ELEMENTWISE_TORCH))
    reason = NOT_ON_DTENSOR.get(type(child), UNKNOWN_CHILD)
    if declared is False:
        reason = "it declares supports_dtensor = False"
    raise RuntimeError(
        CHILD_ERROR.format(name=type(child).__name__, role=role, reason=reason, known=known)
    )


def propose(context: StepContext) -> Proposal:
    """The reference step on the local shards, its norms made whole by one all_reduce."""
    sharding, key = context.sharding, context.plan.key
    return reference.propose(
        context, local=local_tensors, whole=lambda norms: sharding.whole_norms(norms, key)
    )
