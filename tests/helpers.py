"""Small models, data and comparisons shared by the core tests."""

from __future__ import annotations

import torch
from torch import nn


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0, bias: bool = True) -> nn.Module:
    """A 3-layer MLP with readable parameter names."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(6, 16, bias=bias))
    model.add_module("act1", nn.Tanh())
    model.add_module("fc2", nn.Linear(16, 12, bias=bias))
    model.add_module("act2", nn.Tanh())
    model.add_module("out", nn.Linear(12, 3, bias=bias))
    return model.to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic regression batch for ``step``."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = torch.stack([x[:, 0] * x[:, 1], x[:, 2].sin(), x[:, 3:].sum(1)], 1)
    return x.to(dtype), y.to(dtype)


def compute_grads(model: nn.Module, step: int) -> torch.Tensor:
    """Forward/backward on the step's batch; returns the loss."""
    dtype = next(model.parameters()).dtype
    x, y = batch(step, dtype)
    model.zero_grad(set_to_none=True)
    loss = (model(x) - y).square().mean()
    loss.backward()
    return loss.detach()


def train(
    model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, start: int = 0, scheduler=None
) -> list[float]:
    """Run ``steps`` optimizer steps; returns the losses."""
    losses = []
    for step in range(start, start + steps):
        losses.append(float(compute_grads(model, step)))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return losses


def max_relative_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest ‖a_p − b_p‖ / ‖b_p‖ over the parameter tensors."""
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        a64, b64 = pa.detach().double(), pb.detach().double()
        worst = max(worst, float((a64 - b64).norm() / b64.norm()))
    return worst
