r"""Partial grafting: grafted layers take M#D, the others M's own step, in one ``Graft``.

``Graft(..., grafted=...)`` chooses the grafted layers; on the others the applied update is
exactly M's, :math:`w_{t+1,l} = w_{t,l} + \mathrm{lr}\,\Delta_{M,l}` (ratio one), as plain M
would take it. D never sees those parameters: built from a spec it is built over the grafted
ones only (so it keeps no state for the others), and a ready D that covers every parameter
is stepped with the ungrafted gradients hidden. This module resolves the choice to one flag
per parameter and per layer; the backends take the step (the reference one in
``grafting_core.reference``, which also serves DTensor shards, and the fused kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from .layer_kinds import check_kinds, layer_kinds
from .layers import Layers

Grafted = Callable[[str], bool] | str | Collection[str] | None


def grafted_params(
    grafted: Grafted, named: list[tuple[str, Tensor]], *, has_names: bool
) -> tuple[bool, ...]:
    """Whether each parameter of ``named`` is grafted under the ``grafted=`` choice.

    Args:
        grafted: ``None`` (every parameter), a predicate on parameter names, or layer kinds
            (one or a collection, see :mod:`grafting_core.layer_kinds`; then the parameters'
            names and shapes decide their kinds).
        named: ``(name, tensor)`` for every parameter, in Graft's order.
        has_names: whether the names are the model's (kinds cannot be read from ``param<i>``).
    """
    names = [n for n, _ in named]
    if grafted is None:
        return (True,) * len(names)
    if callable(grafted):
        flags = tuple(grafted(n) for n in names)
        bad = [(n, f) for n, f in zip(names, flags) if not isinstance(f, bool)]
        if bad:
            raise TypeError(
                f"grafted callable must return a bool, got {bad[0][1]!r} for {bad[0][0]!r}"
            )
        return flags
    if not isinstance(grafted, Collection):
        raise TypeError(
            f"Invalid grafted: {grafted!r} (expected None, a callable name -> bool, or layer kinds)"
        )
    kinds = check_kinds(grafted)
    if not has_names:
        raise ValueError(
            "grafted= by layer kind needs parameter names: pass "
            "model.named_parameters() instead of model.parameters()"
        )
    by_name = layer_kinds(named)
    return tuple(by_name[n] in kinds for n in names)


def grafted_layers(flags: tuple[bool, ...], layers: Layers) -> tuple[bool, ...]:
    """One flag per layer; a layer mixing grafted and ungrafted tensors is a ``ValueError``."""
    members: dict[int, dict[bool, list[str]]] = {}
    for name, layer, flag in zip(layers.param_names, layers.index, flags):
        members.setdefault(layer, {}).setdefault(flag, []).append(name)
    for layer, split in members.items():
        if len(split) == 2:
            raise ValueError(
                f"Invalid grafted: layer {layers.names[layer]!r} mixes grafted parameters "
                f"{split[True]} with ungrafted ones {split[False]}; a layer is grafted as a "
                "whole: choose all of its parameters or none, or use granularity='tensor'"
            )
    return tuple(True in members[i] for i in range(len(layers)))


def pick(items: list[Any], flags: tuple[bool, ...], keep: bool = True) -> list[Any]:
    """The items whose flag is ``keep``."""
    return [x for x, f in zip(items, flags) if f == keep]


@contextmanager
def hidden_grads(params: list[Tensor]) -> Iterator[None]:
    """Set the gradients of ``params`` to None for a while: optimizers skip such parameters."""
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(params, grads):
            p.grad = grad
