"""Param groups as training stacks build them, routed into ``Graft``'s two children.

Hugging Face ``Trainer``, timm and most training scripts build groups of plain tensors with
per-group hyperparameters (``weight_decay`` 0.1 for weights, 0.0 for biases and norms) and
call ``cls(params, lr=..., weight_decay=..., **kwargs)``. Inside ``Graft`` a group's keys mean:

- ``lr``: Graft's own multiplier of the grafted step (the schedule lives in M);
- ``magnitude.<key>`` / ``direction.<key>``: that child's hyperparameter for this group;
- any other key: the hyperparameter of each child that has it (``weight_decay`` reaches an
  AdamW magnitude and an SGD direction; ``momentum`` only the SGD). A key no child takes is
  an error naming it.

Routing applies to the children ``Graft`` builds from specs; a ready optimizer keeps its own
groups. :func:`named` gives plain tensors their names from a model, by identity.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .registry import BLACK_BOX, _import_class, as_spec, default_hparams, validate_hparams
from .rules import RULES

ROLES = ("magnitude", "direction")
GROUP_KEYS = ("params", "param_names")  # torch's own keys of every group


def accepted_keys(child: Any) -> tuple[str, frozenset[str]] | None:
    """``(registry name, hyperparameters it takes)`` of a spec Graft builds; ``None`` for a
    ready optimizer, a replayed schedule or no child (they take no routed keys)."""
    if child is None or isinstance(child, torch.optim.Optimizer) or not _is_spec(child):
        return None
    spec = as_spec(child)
    if spec.name in RULES or spec.name in BLACK_BOX:
        return spec.name, frozenset(default_hparams(spec.name))
    signature = inspect.signature(_import_class(spec.name).__init__)
    return spec.name, frozenset(
        n
        for n, p in signature.parameters.items()
        if n not in ("self", "params") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _is_spec(child: Any) -> bool:
    try:
        as_spec(child)
    except TypeError:
        return False
    return True


def route(
    group: dict[str, Any],
    own: Iterable[str],
    children: Mapping[str, tuple[str, frozenset[str]] | None],
) -> dict[str, dict[str, Any]]:
    """Take the children's keys out of ``group`` (left with Graft's own); per role, the
    hyperparameters for that child's matching group. Unknown keys: one line naming them."""
    own = set(own) | set(GROUP_KEYS)
    routed: dict[str, dict[str, Any]] = {role: {} for role in ROLES}
    for key in [k for k in group if k not in own]:
        value = group.pop(key)
        role, dot, name = key.partition(".")
        if dot and role in ROLES:
            if children[role] is None or name not in children[role][1]:
                raise ValueError(_refusal(key, own, children))
            targets = [role]
        else:
            name = key
            targets = [r for r in ROLES if children[r] is not None and name in children[r][1]]
            if not targets:
                raise ValueError(_refusal(key, own, children))
        for target in targets:
            routed[target][name] = value
    for role in ROLES:
        if routed[role]:
            validate_hparams(children[role][0], routed[role])  # names the bad value
    return routed


def _refusal(key: str, own: set[str], children: Mapping[str, Any]) -> str:
    takes = [f"Graft: {sorted(own - set(GROUP_KEYS))}"]
    for role in ROLES:
        child = children[role]
        takes.append(
            f"{role}: {sorted(child[1])}"
            if child
            else f"{role}: none (a ready optimizer keeps its own groups)"
        )
    return (
        f"Invalid param group key {key!r}: neither Graft nor its children take it "
        f"({'; '.join(takes)}); prefix magnitude. or direction. to address one child"
    )


def named(params: Iterable[Any], model: torch.nn.Module) -> list[dict[str, Any]]:
    """``params`` (tensors, named pairs or groups) as groups of ``(name, tensor)`` pairs,
    plain tensors named by identity from ``model.named_parameters()``."""
    names = {id(p): n for n, p in model.named_parameters()}
    items = list(params)
    groups = items if items and isinstance(items[0], Mapping) else [{"params": items}]
    out = []
    for g, group in enumerate(groups):
        tensors = group["params"]
        tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
        pairs = []
        for i, p in enumerate(tensors):
            if isinstance(p, Tensor):
                if id(p) not in names:
                    raise ValueError(
                        f"Invalid names: parameter {i} of group {g} (shape "
                        f"{tuple(p.shape)}) is not a parameter of the model given"
                    )
                p = (names[id(p)], p)
            pairs.append(p)
        out.append({**group, "params": pairs})
    return out


def factory_groups(
    params: Iterable[Any], lr: float | None, hparams: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Groups for ``cls(params, lr=..., **hparams)`` as optimizer factories call it: the
    keywords become every group's defaults, and ``lr`` (keyword or a group's) is M's."""
    items = list(params)
    groups = items if items and isinstance(items[0], Mapping) else [{"params": items}]
    defaults = dict(hparams)
    if lr is not None:
        defaults["magnitude.lr"] = lr
    out = []
    for group in groups:
        group = dict(group)
        if "lr" in group:
            group["magnitude.lr"] = group.pop("lr")
        out.append({**defaults, **group})
    return out


def factory_class(
    graft_cls: type, magnitude: Any, direction: Any, options: Mapping[str, Any]
) -> type:
    """A subclass of ``graft_cls`` that factories can call as ``cls(params, lr=..., **hparams)``
    (see ``Graft.factory``). A class, not a function: Hugging Face ``Trainer`` calls any
    callable that is not an optimizer class as a factory of the whole model."""

    class GraftFactory(graft_cls):
        def __init__(self, params: Iterable[Any], lr: float | None = None, **hparams: Any) -> None:
            super().__init__(factory_groups(params, lr, hparams), magnitude, direction, **options)

    label = "#".join(
        str(as_spec(c).name) if _is_spec(c) else type(c).__name__ for c in (magnitude, direction)
    )
    GraftFactory.__name__ = GraftFactory.__qualname__ = f"Graft[{label}]"
    return GraftFactory
