"""Step cost of Shampoo and SOAP (pytorch-optimizer), plain and grafted, on the lab's models.

Run (figures for BENCHMARKS.md; ~1 min):
    .venv/bin/python bench/shampoo.py
Smoke run (the figures mean nothing there):
    .venv/bin/python bench/shampoo.py --quick

Each optimizer steps the same fixed gradients of the lab's default models (the MNIST-1D MLP,
the character transformer) on the CPU; optimizers are timed in interleaved rounds so that load
from other processes hits them alike. Printed: median ms per step and the ratio to Adam.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grafting_core import Graft, build_optimizer
from grafting_core.lab.tasks.data import load_dataset
from grafting_core.lab.tasks.models import build_model, default_model

ARMS = {  # label -> (magnitude, direction); direction None: plain magnitude
    "adam": ("adam", None),
    "shampoo": ("shampoo", None),
    "soap": ("soap", None),
    "adam#shampoo": ("adam", "shampoo"),
    "adam#soap": ("adam", "soap"),
}
WARMUP = 3  # SOAP's first step only sets up its preconditioner


def model_with_grads(dataset: str, data) -> torch.nn.Module:
    """The dataset's default lab model, with fixed random gradients on every parameter."""
    model = build_model(default_model(dataset), data, seed=0)
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    return model


def optimizer(model: torch.nn.Module, magnitude: str, direction: str | None):
    """The arm's optimizer; plain arms are the registry's own optimizer, not wrapped in Graft."""
    if direction is None:
        return build_optimizer(magnitude, model.parameters())
    return Graft(model.named_parameters(), magnitude, direction)


def time_arms(dataset: str, rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per step of every arm, from interleaved rounds after a warm-up."""
    data = load_dataset(dataset, seed=0)
    arms = {
        label: optimizer(model_with_grads(dataset, data), *spec) for label, spec in ARMS.items()
    }
    for opt in arms.values():
        for _ in range(WARMUP):
            opt.step()
    times: dict[str, list[float]] = {label: [] for label in arms}
    for _ in range(rounds):
        for label, opt in arms.items():
            for _ in range(per_round):
                start = time.perf_counter()
                opt.step()
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, MNIST-1D only")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    datasets, rounds, per_round = (
        (["mnist1d"], 1, 1) if args.quick else (["mnist1d", "chars"], 10, 3)
    )
    print(f"torch {torch.__version__}, {args.threads} thread(s), {rounds * per_round} steps/arm")
    for dataset in datasets:
        medians = time_arms(dataset, rounds, per_round)
        for label, seconds in medians.items():
            print(
                f"{dataset:8s} {label:14s} {seconds * 1e3:8.2f} ms/step  "
                f"{seconds / medians['adam']:6.1f}x adam"
            )


if __name__ == "__main__":
    main()
