"""torch's own SGD, Adam, AdamW, Adagrad and RMSprop as children the fused kernels step.

A black-box child is driven through its ``step()``: snapshot the weights, step, take the
difference, restore. That costs about twice the memory traffic of the step itself
(BENCHMARKS.md). For ``torch.optim.SGD``, ``Adam``, ``AdamW``, ``Adagrad`` and ``RMSprop``
(not centred) the fused CPU kernels
(:mod:`grafting_core.fused`) compute the same update from the optimizer's own state and
param groups instead. They leave both as its ``step()`` would:

- the state is created by the optimizer's own ``_init_group`` (same keys, dtypes, devices);
- their ``step`` tensors count up (SGD has none);
- SGD's momentum buffer starts at the first gradient, undamped.

The weights and states equal those of driving ``step()`` to rounding
(``tests/test_torch_children.py``). The state stays the optimizer's, so checkpoints,
``load_state_dict`` and LR schedulers (which change ``param_groups``) work as before.

This holds only where it is exactly what ``step()`` would do:

- the optimizer is of the class itself (a subclass may override ``step``);
- no step hooks are registered, neither the optimizer's nor global ones;
- ``step`` is not replaced on the instance (an LR scheduler's counting wrapper excepted);
- every hyperparameter is a number, with ``maximize``, ``amsgrad``, ``capturable`` and
  ``differentiable`` off.

Otherwise :func:`why_not` says why, and the child is a black box.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch
from torch import Tensor
from torch.optim import optimizer as torch_optimizer

#: The classes whose step the kernels know, and their rule in grafting_core.rules.
CLASSES = {
    torch.optim.SGD: "sgd",
    torch.optim.Adam: "adam",
    torch.optim.AdamW: "adam",
    torch.optim.Adagrad: "adagrad",
    torch.optim.RMSprop: "rmsprop",
}
_NUMBERS = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
    "adam": ("lr", "eps", "weight_decay"),
    "adagrad": ("lr", "lr_decay", "weight_decay", "eps"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum"),
}
#: How many state lists ``_init_group(group, params, grads, *lists, state_steps)`` fills
#: before the step counts, per rule with a step count.
_STATE_LISTS = {"adam": 3, "adagrad": 1, "rmsprop": 3}
_OFF = ("maximize", "amsgrad", "capturable", "differentiable")


def why_not(child: Any) -> str | None:
    """Why the kernels cannot step ``child`` from its own state (``None``: they can)."""
    rule = CLASSES.get(type(child))
    if rule is None:
        names = ", ".join(cls.__name__ for cls in CLASSES)
        return f"{type(child).__name__} is not one of torch.optim's {names}"
    if (
        child._optimizer_step_pre_hooks
        or child._optimizer_step_post_hooks
        or torch_optimizer._global_optimizer_pre_hooks
        or torch_optimizer._global_optimizer_post_hooks
    ):
        return "step hooks are registered"
    replaced = child.__dict__.get("step")
    if replaced is not None and not getattr(replaced, "_wrapped_by_lr_sched", False):
        return "step() is replaced on the instance"
    for group in child.param_groups:
        on = [key for key in _OFF if group.get(key)]
        if on:
            return f"{on[0]}=True"
        numbers = [group[key] for key in _NUMBERS[rule]]
        numbers += list(group.get("betas", ()))
        if not all(isinstance(x, Real) and not isinstance(x, bool) for x in numbers):
            return "a hyperparameter that is a tensor"
    return None


def rule_name(child: torch.optim.Optimizer, group: dict[str, Any]) -> str:
    """The rule of ``grafting_core.rules`` that ``child`` applies to ``group``."""
    rule = CLASSES[type(child)]
    return "adamw" if rule == "adam" and group["decoupled_weight_decay"] else rule


def advance(
    child: torch.optim.Optimizer, params: list[Tensor]
) -> list[tuple[str, dict[str, Any] | None, dict[str, Any], int]]:
    """Advance ``child``'s state for one step over ``params`` as its ``step()`` would, and
    return per parameter, in order, ``(rule name, state, group, step number)``.

    The kernels then advance the moments in the state in place. SGD counts no steps: its
    step number is 1 where the momentum buffer is new (the kernels start it at the
    gradient) and 2 after. SGD without momentum keeps no state, as in torch (``None``).
    """
    wanted = {id(p): i for i, p in enumerate(params)}
    out: list[Any] = [None] * len(params)
    for group in child.param_groups:
        mine = [p for p in group["params"] if id(p) in wanted]
        if not mine:
            continue
        name = rule_name(child, group)
        if name == "sgd":
            for p in mine:
                out[wanted[id(p)]] = _sgd(child, p, group)
            continue
        steps: list[Tensor] = []
        lists = [[] for _ in range(2 + _STATE_LISTS[CLASSES[type(child)]])]
        child._init_group({**group, "params": mine}, *lists, steps)
        torch._foreach_add_(steps, 1)
        for p, step in zip(mine, torch.stack(steps).tolist()):
            out[wanted[id(p)]] = (name, child.state[p], group, int(step))
    return out


def _sgd(
    child: torch.optim.Optimizer, param: Tensor, group: dict[str, Any]
) -> tuple[str, dict[str, Any] | None, dict[str, Any], int]:
    if group["momentum"] == 0:
        return "sgd", None, group, 1
    state = child.state[param]
    if state.get("momentum_buffer") is None:  # torch: clone(grad); the kernels write it
        state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return "sgd", state, group, 1
    return "sgd", state, group, 2
