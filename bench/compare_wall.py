"""Wall time of a tuned comparison (the fair-comparison protocol) and how it scales with workers.

    python bench/compare_wall.py                       # chars transformer, 200 steps, workers 1 2
    python bench/compare_wall.py --steps 1000 --workers 2
    python bench/compare_wall.py --quick               # smoke run

Runs ``protocol.compare`` of SGD and Adam (5 lrs × 3 seeds each, no extensions, then both
grafts × 3 seeds: 36 runs) into a fresh store once per worker count, and prints the wall time,
seconds per run and the speed-up over one worker. One worker trains inline (the command line's
``--workers 1``); more are ``LocalExecutor`` processes, one torch thread each.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from grafting_core.lab.experiments.compare import SweepPlan, compare
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import LocalExecutor
from grafting_core.lab.store.run_store import RunStore


def timed_compare(base: RunConfig, workers: int, seeds: tuple[int, ...], points: int) -> tuple:
    """(wall seconds, runs) of one comparison with ``workers`` worker processes."""
    with tempfile.TemporaryDirectory() as root:
        store = RunStore(root)
        executor = LocalExecutor(root, workers) if workers > 1 else None
        if executor:  # process start-up is not the protocol's cost
            for future in executor.warm_up([base.dataset]):
                future.result()
        started = time.perf_counter()
        result = compare(
            store,
            base,
            {k: LAB_OPTIMIZERS[k] for k in ("sgd", "adam")},
            seeds=seeds,
            plan=SweepPlan(points=points, extensions=0),
            executor=executor,
        )
        wall = time.perf_counter() - started
        runs = len(store.runs(group=result.group))
        if executor:
            executor.shutdown()
        store.close()
    return wall, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="chars")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny runs: a smoke test")
    args = parser.parse_args()
    steps = 10 if args.quick else args.steps
    seeds, points = ((0,), 2) if args.quick else ((0, 1, 2), 5)
    base = RunConfig(
        dataset=args.dataset,
        steps=steps,
        eval_every=steps,
        eval_examples=64 if args.quick else 500,
        schedule="warmup_cosine",
        warmup_steps=max(1, steps // 10),
        width=16 if args.quick else 0,
    )
    print(
        f"{args.dataset}, {steps} steps, 2 optimizers × {points} lrs × {len(seeds)} seeds "
        "+ 2 grafts"
    )
    first = None
    for workers in args.workers:
        wall, runs = timed_compare(base, workers, seeds, points)
        first = first or wall
        print(
            f"workers {workers}: {wall:7.1f} s for {runs} runs ({wall / runs:.2f} s/run), "
            f"speed-up {first / wall:.2f}×"
        )


if __name__ == "__main__":
    main()
