"""``NativeOptimizer``: a real ``torch.optim.Optimizer`` around one native update rule.

It is used two ways. On its own it is a plain optimizer (``step()`` applies its rule), which
is how the lab runs "A alone". Inside ``Graft`` it is a child whose :meth:`compute_steps`
returns the proposed steps without applying them, so the weights are written only once.
Its hyperparameters live in ``param_groups`` as usual, so torch LR schedulers attach to it.
On ``DTensor`` parameters (FSDP2) an element-wise rule runs on each rank's local shards and
keeps its state as DTensors (so distributed checkpoints see it sharded); LARS and LAMB, whose
trust ratios need whole-tensor norms, are refused when the optimizer is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .dtensor import has_dtensor, local_tensors
from .rules import RULES, Rule, init_state, needed_buffers, resolve_hparams

#: Group keys that are not hyperparameters: the parameters, their names, and the multiplier
#: that :meth:`StaticRatios.param_groups <grafting_core.StaticRatios.param_groups>` records.
GROUP_KEYS = ("params", "param_names", "static_ratio")
#: Why a rule that is not element-wise cannot run on DTensor (FSDP2) shards.
NOT_ELEMENTWISE = (
    "Native rule {name!r} computes per-tensor trust ratios from whole-tensor "
    "norms, which are not reduced across DTensor (FSDP2) shards: each rank would "
    "use its shard's norms. Use it under DDP or in one process, or pick an "
    "element-wise rule ({elementwise})."
)


class NativeOptimizer(torch.optim.Optimizer):
    """A torch optimizer driven by a :class:`~grafting_core.rules.Rule`.

    Args:
        params: tensors, ``(name, tensor)`` pairs or param-group dicts; a group's own
            options must be the rule's hyperparameters, checked as ``hparams`` are.
        rule: the update rule (see ``grafting_core.rules.RULES``).
        **hparams: the rule's hyperparameters (defaults: ``rule.defaults``). An unknown
            name or a bad value (a negative lr, ``betas=(2, 5)``...) is a ``ValueError``
            that names it, as in :func:`~grafting_core.rules.resolve_hparams`.
    """

    def __init__(self, params: Iterable[Any], rule: Rule, **hparams: Any) -> None:
        self.rule = rule
        self._sharded = False  # DTensor parameters: the rule runs on the local shards
        super().__init__(params, resolve_hparams(rule, hparams))

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, param_groups) and the rule, for pickle and deepcopy."""
        return {**super().__getstate__(), "rule": self.rule, "_sharded": self._sharded}

    def __repr__(self) -> str:
        hp = {k: v for k, v in self.defaults.items()}
        return f"NativeOptimizer({self.rule.name}, {hp})"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: its options are checked like the rule's hyperparameters, and DTensor
        parameters need an element-wise rule (both checked once, here)."""
        if isinstance(param_group, dict):  # torch's own checks refuse anything else
            options = {k: v for k, v in param_group.items() if k not in GROUP_KEYS}
            resolve_hparams(self.rule, {**self.defaults, **options})
        super().add_param_group(param_group)
        if has_dtensor(self.param_groups[-1]["params"]):
            if not self.rule.elementwise:
                self.param_groups.pop()
                elementwise = ", ".join(n for n, r in RULES.items() if r.elementwise)
                raise RuntimeError(
                    NOT_ELEMENTWISE.format(name=self.rule.name, elementwise=elementwise)
                )
            self._sharded = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_sharded", False)

    def _active(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params = [p for p in group["params"] if p.grad is not None and p.requires_grad]
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{self.rule.name}: sparse gradients are not supported")
        return params, [p.grad for p in params]

    @torch.no_grad()
    def compute_steps(
        self, params: list[Tensor] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Advance the state on the current gradients and return ``(params, steps)``.

        Only parameters with a gradient take part (others keep their state untouched).
        ``params`` restricts the work to those tensors (default: all with a gradient).
        The weights are not modified. For DTensor parameters the steps are local shards.
        """
        wanted = None if params is None else {id(p) for p in params}
        all_params: list[Tensor] = []
        all_steps: list[Tensor] = []
        for group in self.param_groups:
            group_params, grads = self._active(group)
            if wanted is not None:
                keep = [i for i, p in enumerate(group_params) if id(p) in wanted]
                group_params = [group_params[i] for i in keep]
                grads = [grads[i] for i in keep]
            if not group_params:
                continue
            hp = {k: v for k, v in group.items() if k in self.rule.defaults}
            states = [self._state_for(p, hp) for p in group_params]
            for state in states:
                state["step"] += 1
            buffers = {name: [s[name] for s in states] for name in needed_buffers(self.rule, hp)}
            steps = [s["step"] for s in states]
            all_params += group_params
            if self._sharded:  # element-wise: each rank steps its own shards
                group_params, grads = local_tensors(group_params), local_tensors(grads)
                buffers = {name: local_tensors(b) for name, b in buffers.items()}
            all_steps += self.rule.update(group_params, grads, buffers, steps, hp)
        return all_params, all_steps

    @torch.no_grad()
    def advance(self, params: list[Tensor]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Count a step for each of ``params`` and return its ``(state, group)``, in order.

        For kernels that apply the rule themselves (``grafting_core.fused``): the state is
        created if new and its step count advanced exactly as :meth:`compute_steps` does.
        """
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        out = []
        for p in params:
            group, state = group_of[id(p)], self.state[p]
            if not state:  # the group's hyperparameters only matter for a new state
                state.update(init_state(self.rule, p, {k: group[k] for k in self.rule.defaults}))
            state["step"] += 1
            out.append((state, group))
        return out

    def _state_for(self, param: Tensor, hp: dict[str, Any]) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            state.update(init_state(self.rule, param, hp))
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params, steps = self.compute_steps()
        if params:
            torch._foreach_add_(local_tensors(params) if self._sharded else params, steps)
        return loss
