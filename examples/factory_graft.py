"""Graft through an optimizer factory: code that calls ``cls(params, lr=..., weight_decay=...)``.

Run (a small MLP on a synthetic regression, CPU, seconds):

    python examples/factory_graft.py

timm's ``create_optimizer_v2`` and many training scripts build optimizers this way: groups of
plain tensors (weight decay for matrices, none for biases and norms) and the keyword arguments
every optimizer takes. ``Graft.factory(M, D, names=model)`` is a class that fits: ``lr`` becomes
M's learning rate (a scheduler belongs on ``opt.magnitude``), ``weight_decay``, ``betas`` and
the groups' own keys reach each child that takes them, and ``names=model`` keeps readable layer
names. (timm itself needs torchvision, which has no build for this CPU torch; this is its
convention, written out.)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from grafting_core import Graft


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's rule (``param_groups_weight_decay``): no decay for biases and 1-D tensors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def create_optimizer(
    model: nn.Module, optimizer_class: type, lr: float, weight_decay: float, **kwargs: Any
) -> torch.optim.Optimizer:
    """What an optimizer factory does: groups, then ``cls(groups, lr=..., **kwargs)``."""
    return optimizer_class(decay_groups(model, weight_decay), lr=lr, **kwargs)


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(6, 32), norm=nn.LayerNorm(32), act=nn.Tanh(), out=nn.Linear(32, 1)
        )
    ).to(dtype)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> float:
    """``steps`` steps of a cosine schedule on the optimizer that carries the learning rate."""
    lr_holder = opt.magnitude if isinstance(opt, Graft) else opt
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(lr_holder, steps)
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 6, generator=g, dtype=torch.float64).to(dtype)
        y = (x[:, :1] * x[:, 1:2]).sin() + x[:, 2:3]
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        schedule.step()
    return float(loss.detach())


def main() -> None:
    model = make_model()
    AdamWSGD = Graft.factory("adamw", ("sgd", {"lr": 0.1, "momentum": 0.9}), names=model)
    opt = create_optimizer(model, AdamWSGD, lr=3e-3, weight_decay=0.05, betas=(0.9, 0.95))
    print(f"{type(opt).__name__}: layers {list(opt.layers.names)}")
    print(
        f"M's groups: lr {[g['lr'] for g in opt.magnitude.param_groups]}, weight_decay "
        f"{[g['weight_decay'] for g in opt.magnitude.param_groups]}"
    )
    print(f"final loss after 200 steps: {train(model, opt, 200):.4f}")


if __name__ == "__main__":
    main()
