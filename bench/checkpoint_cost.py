"""What a periodic checkpoint costs: the price of the default ``checkpoint_every``.

    python bench/checkpoint_cost.py            # full (about a minute on 2 cores)
    python bench/checkpoint_cost.py --quick    # smoke run

For the MNIST-1D MLP and the char transformer, each trained as Adam#SGD by the lab trainer
into a SQLite run store, it times (medians of repeats, after a warm-up):
  - one training step (from the trainer's own steps/s);
  - one checkpoint: serialise model, optimizer and scheduler (``Trainer.checkpoint``) and
    write it to the store (``put_artifact``), as the trainer does every ``checkpoint_every``;
and prints the overhead of checkpointing every N steps, ``checkpoint / (N · step)``, and how
much work a ``kill -9`` can lose at most (N steps, in seconds).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run
from grafting_core.lab.runs.trainer import Trainer
from grafting_core.lab.store.run_store import RunStore

TASKS = {"mlp/mnist1d": ("mnist1d", 64), "transformer/chars": ("chars", 32)}
CADENCES = (100, 200, 500, 1000)


def measure(dataset: str, batch: int, steps: int, repeats: int) -> tuple[float, float, int]:
    """(seconds per step, seconds per checkpoint written to a store, checkpoint bytes)."""
    config = RunConfig(
        dataset=dataset,
        batch_size=batch,
        steps=steps,
        magnitude="adam",
        direction="sgd",
        eval_every=10**6,
        log_every=10,
        checkpoint_every=0,
    )
    rates: list[float] = []
    trainer = Trainer(config)
    trainer.add_callback(
        "on_metrics",
        lambda t, rows: rates.extend(v for _, name, v in rows if name == "steps_per_second"),
    )
    trainer.run()
    step_s = 1.0 / statistics.median(rates[len(rates) // 4 :])  # after the warm-up
    with tempfile.TemporaryDirectory() as root:
        store = RunStore(root)
        run_id = create_run(store, config)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            blob = trainer.checkpoint()
            store.put_artifact(run_id, "checkpoint", blob, kind="checkpoint")
            times.append(time.perf_counter() - start)
        store.close()
    return step_s, statistics.median(times[1:]), len(blob)


def main() -> None:
    """Print per-task step and checkpoint times and the overhead of each cadence."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps (smoke test)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (a worker of a 2-core machine running 2 runs: 1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, repeats = (40, 3) if args.quick else (400, 21)
    print(f"torch threads: {args.threads}")
    print(
        f"{'task':20} {'step ms':>8} {'ckpt ms':>8} {'ckpt KB':>8}  "
        + "  ".join(f"every {n:>4}: cost, lost" for n in CADENCES)
    )
    for task, (dataset, batch) in TASKS.items():
        step_s, ckpt_s, size = measure(dataset, batch, steps, repeats)
        cells = "  ".join(
            f"{100 * ckpt_s / (n * step_s):>11.2f}%, {n * step_s:>5.1f}s" for n in CADENCES
        )
        print(f"{task:20} {1e3 * step_s:8.2f} {1e3 * ckpt_s:8.2f} {size / 1024:8.0f}  {cells}")


if __name__ == "__main__":
    main()
