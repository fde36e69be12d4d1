"""Where a fused Graft step spends its time: each kernel pass inside a step, and the
guarded propose pass (‖g‖, then both rules) called on its own, at 1 and 2 threads.

    .venv/bin/python bench/fused_passes.py       # the bench/step.py model, ~30 s

A pass that runs much slower inside a step than alone is waiting for something the rest of
the step leaves behind (BENCHMARKS.md: torch's OpenMP threads, caches).
"""

from __future__ import annotations

import collections
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grafting_core import Graft, fused

PASSES = {
    fused.PROPOSE: "‖g‖ + propose",
    fused.APPLY: "apply",
}


def measure(threads: int, steps: int = 30) -> str:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(448, 448)) for _ in range(50)] + [
        torch.nn.Parameter(torch.randn(448)) for _ in range(50)
    ]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = Graft(
        [(f"p{i}", p) for i, p in enumerate(params)],
        ("adam", {"lr": 1e-4}),
        ("sgd", {"lr": 1e-3, "momentum": 0.9}),
        fused=True,
    )
    for _ in range(3):
        opt.step()
    spent: collections.Counter = collections.Counter()
    run = fused._run

    def timed_run(op, *args, **kwargs):
        start = time.perf_counter()
        try:
            return run(op, *args, **kwargs)
        finally:
            spent[op] += time.perf_counter() - start

    fused._run = timed_run
    try:
        start = time.perf_counter()
        for _ in range(steps):
            opt.step()
        step = (time.perf_counter() - start) / steps
    finally:
        fused._run = run
    alone = []
    for _ in range(steps):
        start = time.perf_counter()
        fused.propose(opt.step_context(params))  # the children advance: timing only
        alone.append(time.perf_counter() - start)
    inside = ", ".join(f"{PASSES.get(op, op)} {1000 * t / steps:.2f}" for op, t in spent.items())
    rest = 1000 * (step - sum(spent.values()) / steps)
    return (
        f"{threads} thread(s): step {1000 * step:.2f} ms = {inside}, Python and small "
        f"tensors {rest:.2f} ms; propose() alone {1000 * statistics.median(alone):.2f} ms"
    )


if __name__ == "__main__":
    if not fused.available():
        sys.exit(f"fused kernels unavailable: {fused.unavailable_reason}")
    for threads in (1, 2):
        print(measure(threads), flush=True)
