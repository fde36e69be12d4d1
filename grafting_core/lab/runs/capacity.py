"""Sizes that cannot fit: refuse a run whose model or batch needs more memory than the
device has, before any work starts (``--batch-size 1000000000000`` must not eat the machine).

The estimate builds the model on PyTorch's ``meta`` device (shapes, no storage) and runs one
example through it: parameters × (weights, gradient, up to four optimizer-state copies for M
and D) plus the output of every leaf module (kept for the backward pass) × the batch. It
leaves out temporaries and the allocator's slack, so it errs low: a refusal means the run
could not fit, while a run that passes may still be tight.
"""

from __future__ import annotations

import os

import torch

from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.tasks.data import Dataset, load_dataset
from grafting_core.lab.tasks.models import build_model, default_model

STATE_COPIES = 6  # weights, gradient, and up to four optimizer-state tensors (M and D)
GIB = 2**30


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free memory, else the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def meta_model(config: RunConfig) -> tuple[torch.nn.Module, Dataset]:
    """``config``'s model on the ``meta`` device (shapes, no storage), and its dataset."""
    dataset = load_dataset(config.dataset, seed=config.seed)
    sizes = {k: v for k, v in (("width", config.width), ("depth", config.depth)) if v}
    with torch.device("meta"):
        model = build_model(
            config.model or default_model(config.dataset), dataset, seed=config.seed, **sizes
        )
    return model, dataset


def estimate_bytes(config: RunConfig) -> tuple[int, int]:
    """(bytes of parameters and optimizer state, bytes of activations per example, fp32)."""
    model, dataset = meta_model(config)
    state = sum(p.numel() * p.element_size() for p in model.parameters()) * STATE_COPIES
    outputs: list[int] = []

    def record(module: torch.nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            outputs.append(output.numel() * output.element_size())

    hooks = [
        m.register_forward_hook(record) for m in model.modules() if next(m.children(), None) is None
    ]  # leaves: a container repeats their outputs
    x, _ = dataset.batch("train", 1, step=0, seed=config.seed)
    with torch.no_grad():
        model(x.to("meta"))
    for hook in hooks:
        hook.remove()
    return state, sum(outputs) + x.numel() * x.element_size()


SMALL_BATCH = 1024  # no lab data set has fewer training examples


def check_fits(config: RunConfig, device: torch.device | None = None) -> None:
    """Raise ValueError naming the size when ``config`` cannot fit in ``device``'s free memory
    (custom tasks are not estimated, their model is built by the user's code: only checked to
    exist)."""
    if config.custom:
        from grafting_core.lab.tasks.custom import locate_custom

        locate_custom(config.custom)
        return
    from grafting_core.lab.runs.trainer import (
        pick_device,  # the trainer imports the optimizer stack: load lazily
    )

    if config.batch_size > SMALL_BATCH:  # only then can a batch outgrow a lab data set
        from grafting_core.lab.tasks.data import load_dataset

        data = load_dataset(config.dataset, seed=config.seed)
        examples = len(data.x_train) if data.task != "language" else len(data.x_train) - 1
        if config.batch_size > examples:
            raise ValueError(
                f"Invalid batch_size: {config.batch_size} is more than the {examples} training "
                f"examples of {config.dataset} (at most {examples}: a full batch)"
            )
    device = device or pick_device(config.device)
    free = available_bytes(device)
    state, per_example = estimate_bytes(config)
    if device.type == "cuda":
        per_example //= 2  # the trainer's bf16 autocast halves the activations
    if state > free:
        raise ValueError(
            f"Invalid width/depth: the model's parameters and optimizer state need "
            f"at least {state / GIB:.3g} GiB; {device} has {free / GIB:.3g} GiB free"
        )
    if state + per_example * config.batch_size > free:
        fits = max((free - state) // per_example, 0)
        raise ValueError(
            f"Invalid batch_size: {config.batch_size} needs at least "
            f"{(state + per_example * config.batch_size) / GIB:.3g} GiB; {device} "
            f"has {free / GIB:.3g} GiB free (at most ~{fits} examples fit)"
        )
