"""Training throughput: Graft vs plain Adam, and what the trainer's streaming costs.

    python bench/train.py            # full (a few minutes on 2 cores)
    python bench/train.py --quick    # smoke run

For the MNIST-1D MLP and the char transformer it times, in steps/s (median of repeats):
  - a bare loop with torch.optim.Adam (the baseline);
  - a bare loop with Graft(Adam, SGD-momentum) and with Graft(Adam, None) (plain + norms);
  - the lab Trainer running Graft(Adam, SGD) with every stream on (metrics, per-layer
    norms, final checkpoint, a SQLite run store), timed after the same warm-up to its end
    — its overhead over the bare Graft loop is the price of streaming (target: under 5%).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from grafting_core import Graft
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run, execute_run
from grafting_core.lab.store.run_store import RunStore
from grafting_core.lab.tasks.data import load_dataset
from grafting_core.lab.tasks.models import build_model, default_model, loss_fn

TASKS = {"mlp/mnist1d": ("mnist1d", 2000, 64), "transformer/chars": ("chars", 200, 32)}


def bare_loop(dataset_name: str, steps: int, batch: int, make_optimizer) -> float:
    """Steps/s of a plain loop (batch, forward, backward, step) after a warm-up; no records."""
    dataset = load_dataset(dataset_name)
    model = build_model(default_model(dataset_name), dataset)
    loss_of = loss_fn(dataset.task)
    opt = make_optimizer(model)
    warmup = max(steps // 10, 2)
    for i, (x, y) in enumerate(
        dataset.batch("train", batch, step=s, seed=0) for s in range(warmup + steps)
    ):
        if i == warmup:
            start = time.perf_counter()
        loss = loss_of(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    float(loss.detach())
    return steps / (time.perf_counter() - start)


def trainer_loop(dataset_name: str, steps: int, batch: int) -> float:
    """Steps/s of the lab trainer with the store writer attached, from its first flush after
    the warm-up that ``bare_loop`` leaves out to its end (wall clock)."""
    warmup = max(steps // 10, 2)
    flushes: list[tuple[float, int]] = []  # (time, steps done) at each flush of losses
    ended = {}

    def flushed(trainer, rows) -> None:
        if any(name == "train_loss" for _, name, _ in rows):
            flushes.append((time.perf_counter(), trainer.step))

    with tempfile.TemporaryDirectory() as root:
        store = RunStore(root)
        config = RunConfig(
            dataset=dataset_name,
            magnitude="adam",
            direction="sgd",
            direction_hparams={"momentum": 0.9},
            steps=warmup + steps,
            batch_size=batch,
            eval_every=10**9,
            eval_examples=32,
        )
        run_id = create_run(store, config)
        execute_run(
            store,
            run_id,
            callbacks={
                "on_metrics": flushed,
                "on_end": lambda t, **_: ended.setdefault("time", time.perf_counter()),
            },
        )
        store.close()
    began, done = next((t, n) for t, n in flushes if n >= warmup)
    return (warmup + steps - done) / (ended["time"] - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def adam(m):
        return torch.optim.Adam(m.parameters(), lr=1e-3)

    def graft(m):
        return Graft(
            m.named_parameters(), ("adam", {"lr": 1e-3}), ("sgd", {"lr": 0.1, "momentum": 0.9})
        )

    def plain(m):
        return Graft(m.named_parameters(), ("adam", {"lr": 1e-3}), None)

    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    print(
        f"{'task':20s} {'adam':>9s} {'graft':>9s} {'plain+log':>9s} {'trainer':>9s}"
        f" {'graft/adam':>10s} {'stream cost':>11s}"
    )
    for task, (dataset, steps, batch) in TASKS.items():
        steps = 20 if args.quick else steps
        rate = {
            name: statistics.median(
                bare_loop(dataset, steps, batch, make) for _ in range(args.repeats)
            )
            for name, make in (("adam", adam), ("graft", graft), ("plain", plain))
        }
        rate["trainer"] = statistics.median(
            trainer_loop(dataset, steps, batch) for _ in range(args.repeats)
        )
        print(
            f"{task:20s} {rate['adam']:9.1f} {rate['graft']:9.1f} {rate['plain']:9.1f} "
            f"{rate['trainer']:9.1f} {rate['graft'] / rate['adam']:10.2f} "
            f"{1 - rate['trainer'] / rate['graft']:11.1%}"
        )


if __name__ == "__main__":
    main()
