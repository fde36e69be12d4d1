"""Batched plain or grafted runs (``grafting_core.lab.runs.batched``) against the same runs
one by one.

Run (figures for BENCHMARKS.md, a few minutes on 2 cores):
    .venv/bin/python bench/batched.py
    .venv/bin/python bench/batched.py --optimizer adam --direction sgd   # grafted adam#sgd
Smoke run (the figures mean nothing there): ``--quick``.

N plain runs of the MNIST-1D MLP (the default RunConfig: width 100, depth 2, batch 64, 200
steps, evaluations at 100 and 200 on 1000 examples), lrs spread over a decade, warm-up +
cosine with warm-up 0 or 10% in turn, seeds 0-2 in turn (a search's shape), trained two
ways, in interleaved rounds: ``train_batched`` (one vmapped model) and each config through
``Trainer.run()`` in turn (the ordinary path, without a store). Model-steps per second =
N · steps / seconds, the best of the rounds, per wall second and per CPU second of this
process (``time.process_time``: on a machine shared with other jobs, what the work itself
cost; with 2 threads it counts both threads, spinning included); build, evaluations and the
end are included on both sides. Data sets are built once before timing (both paths read the
same per-process cache). Then the character transformer (width 64, depth 2, batch 64) at
N = 1 and 4, for contrast. ``--direction sgd|adam``: the runs are grafts M#D instead (M the
``--optimizer`` as above, D at the lab's default hyperparameters, ``LAB_OPTIMIZERS``), each
one-by-one run a ``Trainer`` with its ``Graft``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from grafting_core.lab.runs.batched import train_batched
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.trainer import Trainer
from grafting_core.lab.tasks.data import load_dataset


def configs(base: RunConfig, n: int, name: str, lr: float) -> list[RunConfig]:
    """``n`` runs (plain, or grafts onto ``base``'s direction): M's lrs on a log grid over a
    decade around ``lr``, seeds 0, 1, 2 in turn."""
    return [
        base.replace(
            magnitude=name,
            magnitude_hparams={"lr": lr * 10 ** ((i % 5) / 4 - 0.5)},
            schedule="warmup_cosine",
            warmup_steps=base.steps // 10 * (i % 2),
            seed=i % 3,
            name=f"{name}#{base.direction}-{i}" if base.direction else f"{name}-{i}",
        )
        for i in range(n)
    ]


def sequential(cfgs: list[RunConfig]) -> tuple[float, float]:
    """(wall, CPU) seconds of each config through ``Trainer.run()`` in turn."""
    wall, cpu = time.perf_counter(), time.process_time()
    for cfg in cfgs:
        assert Trainer(cfg).run() == "finished"
    return time.perf_counter() - wall, time.process_time() - cpu


def batched(cfgs: list[RunConfig]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``train_batched(cfgs)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    results = train_batched(cfgs)
    assert all(r.status == "finished" for r in results)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(base: RunConfig, sizes: list[int], name: str, lr: float, rounds: int) -> None:
    print("model-steps per second:   wall clock               | CPU time of this process")
    print(" | ".join([f"{'N':>3} {'sequential':>11} {'batched':>9} {'ratio':>6}"] * 2))
    for n in sizes:
        cfgs = configs(base, n, name, lr)
        seq, bat = [], []
        for _ in range(rounds):  # interleaved: a load spike hits both sides
            seq.append(sequential(cfgs))
            bat.append(batched(cfgs))
        steps = n * base.steps
        a, b = steps / min(s[0] for s in seq), steps / min(s[0] for s in bat)
        c, d = steps / min(s[1] for s in seq), steps / min(s[1] for s in bat)
        print(
            f"{n:>3} {a:>11.0f} {b:>9.0f} {b / a:>5.2f}x | "
            f"{n:>3} {c:>11.0f} {d:>9.0f} {d / c:>5.2f}x",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 10, 15])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument(
        "--direction", choices=["adam", "sgd"], default="", help="graft M#D onto this D"
    )
    parser.add_argument("--transformer-steps", type=int, default=30, help="0: skip it")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, N 1 and 2")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.sizes, args.steps, args.rounds = [1], [1, 2], 20, 1
        args.transformer_steps = min(args.transformer_steps, 5)
    lr = {"adam": 3e-3, "sgd": 0.1}[args.optimizer]
    grafted = {}
    if args.direction:
        d_name, d_hparams = LAB_OPTIMIZERS[args.direction]
        grafted = {"direction": d_name, "direction_hparams": dict(d_hparams)}
    mlp = RunConfig(dataset="mnist1d", steps=args.steps, device="cpu", **grafted)
    chars = RunConfig(
        dataset="chars",
        steps=max(args.transformer_steps, 1),
        eval_every=max(args.transformer_steps, 1),
        eval_examples=256,
        device="cpu",
        **grafted,
    )
    # vmap has no batching rule for CPU flash attention (it loops): said once here, not per run
    warnings.filterwarnings("ignore", message=".*batching rule for aten::_scaled_dot_product")
    print("transformer: vmap falls back to a loop over members for scaled_dot_product_attention")
    for seed in range(3):
        load_dataset("mnist1d", seed=seed)  # built once, outside the clock
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    label = f"{args.optimizer}#{args.direction}" if args.direction else args.optimizer
    print(f"{label}, {args.steps} steps, best of {args.rounds} interleaved rounds")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\nMNIST-1D MLP, {threads} thread(s)")
        measure(mlp, args.sizes, args.optimizer, lr, args.rounds)
        if args.transformer_steps:
            print(f"\nchar transformer, {threads} thread(s), {args.transformer_steps} steps")
            measure(chars, [1, 4], args.optimizer, lr, 1)
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
