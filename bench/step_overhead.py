"""Where the native default step's time goes: the kernel passes, and what runs around them.

Run (figures for BENCHMARKS.md, about a minute):
    .venv/bin/python bench/step_overhead.py --threads 1
    .venv/bin/python bench/step_overhead.py --threads 2
Smoke run (the figures mean nothing there): ``--quick``, 50 Linear(64, 64) and few rounds.

On bench/step.py's model (50 Linear(448, 448), fixed gradients), torch's fused Adam, fused
SGD-momentum and ``Graft(params, "adam", "sgd")`` step in interleaved rounds. For Graft, the
time inside each C kernel call is taken apart from the rest (Python and small tensor ops).
Then the same bookkeeping is timed on a model of the same 100 tensors small enough to stay in
cache, and the latency of one small torch op right after a kernel pass, after torch's fused
Adam step, and after another small op. Last, the step's first pass alone, with and without
the guard that scans each layer's gradients before its states move, and that scan alone
(the passes run on the children's states: they move them, which changes no timing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.step import ADAM_LR, MOMENTUM, SGD_LR, build_model
from grafting_core import Graft, fused

ROUNDS, PER_ROUND, WARMUP = 20, 2, 3
NATIVE = (("adam", {"lr": ADAM_LR}), ("sgd", {"lr": SGD_LR, "momentum": MOMENTUM}))


class KernelClock:
    """Wraps the float32 kernel entry point: the seconds spent inside it since ``reset``."""

    def __init__(self) -> None:
        library = fused._build()
        self.calls: list[float] = []
        self.inner = library.graft_pass_f32

        def timed(*args):
            start = time.perf_counter()
            result = self.inner(*args)
            self.calls.append(time.perf_counter() - start)
            return result

        library.graft_pass_f32 = timed

    def reset(self) -> None:
        self.calls.clear()


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def interleaved(width: int, clock: KernelClock, rounds: int) -> None:
    """torch's two fused steps and Graft's, in rounds; Graft's time in and out of the kernels."""
    model = build_model(50, width)
    params = list(model.parameters())
    opts = {
        "torch Adam fused": torch.optim.Adam(params, lr=ADAM_LR, fused=True),
        "torch SGD-m fused": torch.optim.SGD(params, lr=SGD_LR, momentum=MOMENTUM, fused=True),
        "Graft native, default": Graft(model.named_parameters(), *NATIVE, fused=True),
    }
    for opt in opts.values():
        for _ in range(WARMUP):
            opt.step()
    times = {name: [] for name in opts}
    passes: list[list[float]] = []
    for _ in range(rounds):
        for name, opt in opts.items():
            for _ in range(PER_ROUND):
                clock.reset()
                start = time.perf_counter()
                opt.step()
                times[name].append(time.perf_counter() - start)
                if isinstance(opt, Graft):
                    passes.append(list(clock.calls))
    graft = times["Graft native, default"]
    inside = [sum(p) for p in passes]
    torch_sum = median_ms(times["torch Adam fused"]) + median_ms(times["torch SGD-m fused"])
    print(f"model: 50 Linear({width}, {width}), {sum(p.numel() for p in params):,} numbers")
    for name, values in times.items():
        print(f"  {name:24s} {median_ms(values):8.2f} ms (median)")
    per_pass = [median_ms([p[i] for p in passes]) for i in range(len(passes[0]))]
    outside = [total - kernel for total, kernel in zip(graft, inside)]
    print(
        f"  Graft: kernel passes {' + '.join(f'{t:.2f}' for t in per_pass)} ms, "
        f"the rest {median_ms(outside):.2f} ms"
    )
    print(
        f"  ratios over torch's two steps: Graft {median_ms(graft) / torch_sum:.2f}, "
        f"its kernel passes alone {sum(per_pass) / torch_sum:.2f}"
    )


def first_op_latency(width: int) -> None:
    """One 300-number sqrt right after a kernel pass (inside the call that ran it), after a
    torch fused Adam step, and after another such sqrt."""
    x = torch.zeros(300, dtype=torch.float64)
    model = build_model(50, width)
    graft = Graft(model.named_parameters(), *NATIVE, fused=True)
    adam = torch.optim.Adam(list(model.parameters()), lr=ADAM_LR, fused=True)
    library = fused._build()
    entry, after_pass = library.graft_pass_f32, []

    def probed(*args):
        result = entry(*args)
        start = time.perf_counter()
        x.sqrt()
        after_pass.append(time.perf_counter() - start)
        return result

    library.graft_pass_f32 = probed
    try:
        for _ in range(WARMUP + 30):
            graft.step()
    finally:
        library.graft_pass_f32 = entry
    samples = {"a kernel pass": after_pass[2 * WARMUP :]}
    for label, before in (("torch's fused Adam step", adam.step), ("another small op", x.sqrt)):
        samples[label] = []
        for i in range(WARMUP + 30):
            before()
            start = time.perf_counter()
            x.sqrt()
            if i >= WARMUP:
                samples[label].append(time.perf_counter() - start)
    for label, values in samples.items():
        print(f"  first small op after {label:24s} {median_ms(values) * 1e3:7.1f} µs")


def guard_cost(width: int, rounds: int) -> None:
    """The first pass of a native step with and without its guard (the scan of each layer's
    gradients for ‖g‖ and non-finite values before any state moves), and the scan alone."""
    model = build_model(50, width)
    graft = Graft(model.named_parameters(), *NATIVE, fused=True)
    for _ in range(WARMUP):
        graft.step()
    plan = graft._plan
    params = plan.params
    everything = list(range(len(params)))
    layout = fused._layout(params)
    grads = [p.grad for p in params]
    magnitude, direction = (
        fused._Child(c, params, everything) for c in (graft.magnitude, graft.direction)
    )
    tables = [grads, None, *magnitude.states, *direction.states]
    kinds, coefs = (magnitude.kind, direction.kind), (magnitude.proposing, direction.proposing)
    passes = {
        "propose, guarded (default)": lambda: fused._run(
            fused.PROPOSE,
            layout,
            torch.float32,
            tables,
            kinds=kinds,
            coefs=coefs,
            guard=fused._guard(graft, plan),
        ),
        "propose, not guarded": lambda: fused._run(
            fused.PROPOSE, layout, torch.float32, tables, kinds=kinds, coefs=coefs
        ),
        "the scan alone (‖g‖ per tensor)": lambda: fused._run(
            fused.SUMSQ, layout, torch.float32, [grads, None]
        ),
    }
    times = {label: [] for label in passes}
    for _ in range(rounds):
        for label, run in passes.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    for label, values in times.items():
        print(f"  {label:34s} {median_ms(values):7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="smoke run on a small model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not fused.available():
        raise SystemExit(f"fused kernels unavailable: {fused.unavailable_reason}")
    print(f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    clock = KernelClock()
    width = 64 if args.quick else 448  # 10M numbers; 208K: above MIN_ELEMENTS_NATIVE
    rounds = 2 if args.quick else ROUNDS
    for size in (width, 16):  # then the same 100 tensors in cache
        interleaved(size, clock, rounds)
    first_op_latency(width)
    guard_cost(width, rounds)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
