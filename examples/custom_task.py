"""A custom task for Grafting Lab: fit y = sin(3x) with a small MLP. Copy this file to start.

A custom task is any function that returns `(model, dataset)`:
- `model` is a `torch.nn.Module` mapping a batch of inputs to outputs;
- `dataset` is a `grafting_core.lab.tasks.data.Dataset` holding train/val tensors in memory.

The engine then trains it like a built-in task. Load it by spec, "file.py:function" or
"package.module:function"; keyword arguments reach the function:

    from grafting_core.lab.tasks.custom import load_custom
    model, dataset = load_custom("examples/custom_task.py:sine_task", width=32)

Tips:
- Name your layers (an OrderedDict as below): parameter names such as "hidden1.weight" are the
  layer names shown in every per-layer plot, much easier to read than "0.weight".
- Seed everything from the arguments, so the same call gives the same data and weights.
- task is "classification" (y: int64 class ids, output_dim = classes), "regression"
  (y: float32 of shape (N, output_dim)) or "language" (see grafting_core/lab/data.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from grafting_core.lab.tasks.data import Dataset


def sine_task(
    n_train: int = 1024, n_val: int = 256, noise: float = 0.05, width: int = 64, seed: int = 0
) -> tuple[nn.Module, Dataset]:
    """A 1-D regression, y = sin(3x) + noise on x in [-pi, pi], and a 1-64-64-1 tanh MLP."""
    gen = torch.Generator().manual_seed(seed)  # a private generator: global RNG untouched
    x = (torch.rand(n_train + n_val, 1, generator=gen) * 2 - 1) * math.pi
    y = torch.sin(3 * x) + noise * torch.randn(x.shape, generator=gen)
    dataset = Dataset(
        name="sine",
        task="regression",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_val=x[n_train:],
        y_val=y[n_train:],
        input_shape=(1,),  # shape of one example
        output_dim=1,  # regression outputs per example
        seed=seed,
        options={"n_train": n_train, "n_val": n_val, "noise": noise},  # saved with each run
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights, caller's RNG untouched
        torch.manual_seed(seed)
        model = nn.Sequential(
            OrderedDict(
                hidden1=nn.Linear(1, width),
                act1=nn.Tanh(),
                hidden2=nn.Linear(width, width),
                act2=nn.Tanh(),
                out=nn.Linear(width, 1),
            )
        )
    return model, dataset
