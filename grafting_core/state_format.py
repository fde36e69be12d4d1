"""``Graft``'s state in the standard ``{state, param_groups}`` shape of a torch optimizer.

Distributed checkpointing (``torch.distributed.checkpoint``: DCP, FSDP2, Lightning's
ModelParallel strategy) keeps only an optimizer's ``state`` (per parameter) and
``param_groups``, and runs a zero-gradient ``step()`` on an optimizer whose ``state`` is
empty to create it. So ``Graft.state`` is a live view over the children's per-parameter
state, under prefixed keys, keyed by Graft's own parameters:

- ``magnitude.<key>`` / ``direction.<key>``: the children's entries (``magnitude.exp_avg``,
  ``direction.momentum_buffer``, ...);
- ``graft.step`` and ``graft.nonfinite_skips`` (of the parameter's layer): Graft's counters.

The children's groups (their scheduled ``lr``, ``betas``, ``weight_decay``, ...) ride in
Graft's first group as ``magnitude.param_groups`` / ``direction.param_groups``, one dict per
child group whose ``params`` are Graft's indices (so a load checks that D still optimizes
the same, grafted, parameters). The nested format saved before (top-level
``graft``, ``magnitude`` and ``direction`` keys) still loads: :func:`split` converts it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor

from .routing import ROLES  # the children: "magnitude", "direction"

OWN = "graft"  # prefix of Graft's own per-parameter entries
OLD_KEYS = (OWN, *ROLES)  # top-level keys of the nested format saved before


def _children(graft: Any) -> dict[str, torch.optim.Optimizer]:
    """The children that are optimizers (a replayed schedule or ``None`` holds no state)."""
    return {
        role: child
        for role in ROLES
        if isinstance(child := getattr(graft, role, None), torch.optim.Optimizer)
    }


def _params(graft: Any) -> list[Tensor]:
    return [p for g in graft.param_groups for p in g["params"]]


class _Entry(dict):
    """One parameter's entry of :class:`GraftState`: setting a key writes through to its
    owner (a child's state, or Graft's counters), so code that moves state in place
    (``state[p][key] = value.to(device)``, as Lightning does) reaches the children."""

    def __init__(self, graft: Any, param: Tensor, items: dict[str, Any]) -> None:
        super().__init__(items)
        self._graft, self._param = graft, param

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        _write(self._graft, self._param, key, value)


def _write(graft: Any, param: Tensor, key: str, value: Any) -> None:
    """Set one prefixed entry of ``param``'s state on its owner."""
    role, dot, name = key.partition(".")
    children = _children(graft)
    if dot and role in children:
        children[role].state[param][name] = value
    elif key == f"{OWN}.step":
        graft.graft_step = int(value)
    elif key == f"{OWN}.nonfinite_skips":
        layer = graft.layers.index[graft._position[id(param)]]
        graft.nonfinite_skips[layer] = value
    else:
        raise KeyError(
            f"Invalid Graft state key {key!r}: expected magnitude.<key>, "
            f"direction.<key> or {OWN}.step / {OWN}.nonfinite_skips"
        )


class GraftState(MutableMapping):
    """``Graft.state``: per parameter, the children's state under ``magnitude.`` and
    ``direction.`` keys and Graft's own ``graft.`` entries (a live view, never a copy).

    A parameter has an entry once Graft has stepped or a child holds state for it, so the
    view is empty exactly when nothing has been created yet (what DCP checks).
    """

    def __init__(self, graft: Any) -> None:
        self._graft = graft

    def _has_entry(self, param: Tensor) -> bool:
        if not getattr(self._graft, "_ready", False):
            return False
        return self._graft.graft_step > 0 or any(
            child.state.get(param) for child in _children(self._graft).values()
        )

    def __getitem__(self, param: Tensor) -> _Entry:
        if not isinstance(param, Tensor) or not self._has_entry(param):
            raise KeyError(param)
        graft = self._graft
        position = graft._position[id(param)]
        items: dict[str, Any] = {
            f"{OWN}.step": torch.tensor(graft.graft_step, dtype=torch.int64),
            f"{OWN}.nonfinite_skips": graft.nonfinite_skips[graft.layers.index[position]]
            .detach()
            .cpu()
            .clone(),
        }
        for role, child in _children(graft).items():
            for name, value in child.state.get(param, {}).items():
                items[f"{role}.{name}"] = value
        return _Entry(graft, param, items)

    def __setitem__(self, param: Tensor, value: Mapping[str, Any]) -> None:
        for child in _children(self._graft).values():
            child.state.pop(param, None)
        for key, item in value.items():
            _write(self._graft, param, key, item)

    def __delitem__(self, param: Tensor) -> None:
        if not self._has_entry(param):
            raise KeyError(param)
        for child in _children(self._graft).values():
            child.state.pop(param, None)

    def __iter__(self) -> Iterator[Tensor]:
        return (p for p in _params(self._graft) if self._has_entry(p))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"GraftState({len(self)} parameters)"


def assign(graft: Any, value: Mapping[Any, Any]) -> None:
    """``graft.state = value``: torch's constructor assigns an empty dict (nothing to do);
    anything else replaces the entries it names."""
    view = GraftState(graft)
    for param, entry in value.items():
        view[param] = entry


# ------------------------------------------------------------------ state_dict
def child_groups(graft: Any) -> dict[str, list[dict[str, Any]]]:
    """``{"magnitude.param_groups": [...], ...}``: each child's groups, Graft's indices."""
    position = {id(p): i for i, p in enumerate(_params(graft))}
    return {
        f"{role}.param_groups": [
            {
                **{k: v for k, v in g.items() if k != "params"},
                "params": [position[id(p)] for p in live["params"]],
            }
            for g, live in zip(child.state_dict()["param_groups"], child.param_groups)
        ]
        for role, child in _children(graft).items()
    }


def standard(graft: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """torch's packing of ``graft.state`` made plain (weights_only-loadable) dicts, with the
    children's group hyperparameters added to the first group."""
    state_dict["state"] = {i: dict(entry) for i, entry in state_dict["state"].items()}
    state_dict["param_groups"][0].update(child_groups(graft))
    return state_dict


def _upgrade(graft: Any, old: Mapping[str, Any]) -> dict[str, Any]:
    """The nested format saved before (top-level graft/magnitude/direction) in today's."""
    extras = old[OWN]
    missing = [k for k in ("layer_names", "step", "nonfinite_skips", "eps") if k not in extras]
    if missing:
        raise ValueError(f"Not a Graft state_dict: its {OWN!r} entry lacks {missing}")
    if list(extras["layer_names"]) != list(graft.layers.names):
        raise ValueError(
            "Saved Graft layers differ from this optimizer's: "
            f"saved {len(extras['layer_names'])}, here {len(graft.layers)}"
        )
    params = _params(graft)
    position = {id(p): i for i, p in enumerate(params)}
    state: dict[int, dict[str, Any]] = {}
    for i in range(len(params)):
        layer = graft.layers.index[i]
        state[i] = {
            f"{OWN}.step": torch.tensor(int(extras["step"])),
            f"{OWN}.nonfinite_skips": extras["nonfinite_skips"][layer].clone(),
        }
    groups = [dict(g) for g in old["param_groups"]]
    for role, child in _children(graft).items():
        child_state = old[role]
        child_params = [p for g in child.param_groups for p in g["params"]]
        saved_ids = [i for g in child_state["param_groups"] for i in g["params"]]
        for saved_id, p in zip(saved_ids, child_params):
            for name, value in child_state["state"].get(saved_id, {}).items():
                state[position[id(p)]][f"{role}.{name}"] = value
        at = dict(zip(saved_ids, (position[id(p)] for p in child_params)))
        groups[0][f"{role}.param_groups"] = [
            dict(g, params=[at[i] for i in g["params"]]) for g in child_state["param_groups"]
        ]
    graft.eps = float(extras["eps"])
    return {"state": state, "param_groups": groups}


def split(
    graft: Any, state_dict: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[int, dict[str, Any]]]:
    """``(own, children, extras)`` from a Graft state_dict (either format).

    ``own`` is Graft's groups for torch's ``load_state_dict``; ``children`` each child's own
    state_dict (its indices, its groups); ``extras`` Graft's entries per parameter index.
    """
    if any(k in state_dict for k in OLD_KEYS):
        missing = [k for k in OLD_KEYS if k not in state_dict]
        if missing:
            raise ValueError(f"Not a Graft state_dict: missing {missing}")
        state_dict = _upgrade(graft, state_dict)
    if not state_dict.get("param_groups"):
        raise ValueError("Not a Graft state_dict: no param_groups")
    groups = [dict(g) for g in state_dict["param_groups"]]
    saved_sizes = [len(g["params"]) for g in groups]
    sizes = [len(g["params"]) for g in graft.param_groups]
    if saved_sizes != sizes:
        raise ValueError(
            f"Saved Graft param groups hold {saved_sizes} parameters, this optimizer's {sizes}"
        )
    children = _children(graft)
    child_hparams = {role: groups[0].pop(f"{role}.param_groups", None) for role in ROLES}
    for role in ROLES:
        if (child_hparams[role] is None) != (role not in children):
            raise ValueError(
                f"Saved Graft state and this Graft differ in their {role}: saved "
                f"{'no' if child_hparams[role] is None else 'an'} optimizer, "
                f"here {type(getattr(graft, role, None)).__name__}"
            )
    for role, child in children.items():  # adam's state into an sgd, say
        saved_keys = set(child_hparams[role][0]) - {"params"} if child_hparams[role] else set()
        here_keys = set(child.param_groups[0]) - {"params"}
        if saved_keys - here_keys and here_keys - saved_keys:
            raise ValueError(
                f"Saved Graft state's {role} is another optimizer than this "
                f"{type(child).__name__}: its hyperparameters {sorted(saved_keys)}, "
                f"here {sorted(here_keys)}"
            )
    params = _params(graft)
    extras: dict[int, dict[str, Any]] = {}
    per_role: dict[str, dict[Tensor, dict[str, Any]]] = {role: {} for role in children}
    # keys as torch maps them: the saved groups' "params" (indices, or DCP's names) in order
    position = {key: i for i, key in enumerate(k for g in groups for k in g["params"])}
    for saved_key, entry in state_dict["state"].items():
        if saved_key not in position:
            raise ValueError(
                f"Invalid Graft state key {saved_key!r}: not in the saved param_groups' params"
            )
        index = position[saved_key]
        for key, value in entry.items():
            role, _, name = key.partition(".")
            if role == OWN:
                extras.setdefault(index, {})[name] = value
            elif role in per_role:
                _check_shape(graft, index, key, value)
                per_role[role].setdefault(params[index], {})[name] = value
            else:
                raise ValueError(
                    f"Invalid Graft state key {key!r} (parameter {index}): "
                    f"expected {OWN}.*, " + " or ".join(f"{r}.*" for r in children)
                )
    own = {"state": {}, "param_groups": groups}
    return (
        own,
        {
            role: _child_state_dict(graft, role, child, per_role[role], child_hparams[role])
            for role, child in children.items()
        },
        extras,
    )


#: per-parameter state that has its parameter's shape, in torch's optimizers and ours
SHAPED_STATE = frozenset(
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "sum", "square_avg",
     "acc_delta", "grad_avg", "ax", "prev"}
)  # fmt: skip


def _check_shape(graft: Any, index: int, key: str, value: Any) -> None:
    """A state entry saved for a parameter of another shape (a model of other sizes) is
    refused at load, naming the parameter, instead of failing at the next step."""
    name = key.partition(".")[2]
    param = _params(graft)[index]
    if name in SHAPED_STATE and isinstance(value, Tensor) and value.shape != param.shape:
        raise ValueError(
            f"Saved Graft state does not fit this model: {key} of parameter "
            f"{graft.layers.param_names[index]!r} has shape {tuple(value.shape)}, "
            f"the parameter {tuple(param.shape)}"
        )


def _child_state_dict(
    graft: Any,
    role: str,
    child: torch.optim.Optimizer,
    state: dict[Tensor, dict[str, Any]],
    saved_groups: list[dict[str, Any]],
) -> dict[str, Any]:
    """``child``'s own state_dict from its entries by parameter and its saved groups, whose
    parameters (Graft's indices) must be the ones the child optimizes here."""
    position = {id(p): i for i, p in enumerate(_params(graft))}
    here = [[position[id(p)] for p in g["params"]] for g in child.param_groups]
    saved = [list(g["params"]) for g in saved_groups]
    if saved != here:
        names = graft.layers.param_names
        differ = sorted(set(sum(saved, [])) ^ set(sum(here, [])))
        what = (
            "grafted other parameters than this optimizer's grafted="
            if role == "direction"
            else "had other magnitude param groups than this optimizer's"
        )
        raise ValueError(
            f"Saved Graft {what}: {[names[i] for i in differ]} differ (saved "
            f"groups {saved}, here {here})"
        )
    index = {id(p): i for i, p in enumerate(p for g in child.param_groups for p in g["params"])}
    outside = [graft.layers.param_names[position[id(p)]] for p in state if id(p) not in index]
    if outside:
        raise ValueError(
            f"Saved Graft state has {role} entries for {outside}, which this "
            f"{role} does not optimize"
        )
    groups = [
        dict(saved_group, params=[index[id(p)] for p in g["params"]])
        for saved_group, g in zip(saved_groups, child.param_groups)
    ]
    return {"state": {index[id(p)]: entry for p, entry in state.items()}, "param_groups": groups}


def restore_own(graft: Any, extras: dict[int, dict[str, Any]]) -> None:
    """Graft's step count and skip counts from its per-parameter entries (none: a Graft
    saved before its first step)."""
    graft.graft_step = int(next(iter(extras.values()))["step"]) if extras else 0
    graft.nonfinite_skips.zero_()
    for i, entry in extras.items():
        graft.nonfinite_skips[graft.layers.index[i]] = entry["nonfinite_skips"]
