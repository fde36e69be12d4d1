"""Time and memory of one optimizer step: torch's Adam and SGD against Graft's paths.

Run (figures for BENCHMARKS.md; ~3 min, plus up to --compile-timeout for torch.compile):
    .venv/bin/python bench/step.py
Smoke run on a small model (the figures mean nothing there):
    .venv/bin/python bench/step.py --quick

Every optimizer steps the same fixed gradients of an MLP (default 50 Linear(448, 448) layers:
10.06M parameters in 100 tensors) on the CPU. Paths are timed in interleaved rounds, so that
load from other processes hits them alike; medians and minima are printed with the ratios
against the sum of torch's Adam and SGD-momentum steps (fused and foreach). Two regimes,
each in its own rounds: "back to back", each step right after the previous one (part of an
optimizer's data is still in the last-level cache from its previous step: this machine's is
480 MB, larger than the model's optimizers' data), and "from memory", each step after a read
of ``--flush-mb`` (1 GB) that evicts it, as for a model whose weights and states do not fit
in the cache, or a training step's forward and backward passes between two steps. Graft rows:
"default" is Graft as a user writes it, no flag (the backend it picks is printed first: the
fused CPU kernels here; torch's own Adam and SGD as children are run by the kernels on their
own states), "via step()" is ``path="blackbox"`` (the kernels drive the children through
their ``step()``, as for any optimizer), "reference" is ``fused=False``. Memory is read
from the allocator through the profiler: the peak of bytes allocated and not yet freed
inside one step() (temporaries), besides the persistent state bytes of each optimizer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grafting_core import Graft, fused, state_bytes

LAYERS, WIDTH = 50, 448  # 50 × (448² + 448) = 10,057,600 parameters in 100 tensors
QUICK_LAYERS, QUICK_WIDTH = 4, 64
ROUNDS, PER_ROUND = 15, 2  # timed steps per path = ROUNDS · PER_ROUND, after WARMUP
WARMUP = 3
BACK_TO_BACK, FROM_MEMORY = "back to back", "from memory"
FLUSH_MB, QUICK_FLUSH_MB = 1024, 16
ADAM_LR, SGD_LR, MOMENTUM = 1e-4, 1e-3, 0.9  # small: the weights barely move over a run


def build_model(layers: int, width: int) -> torch.nn.Sequential:
    """An MLP with fixed random gradients on every parameter."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    return model


def optimizers(model: torch.nn.Module) -> dict[str, torch.optim.Optimizer]:
    """Every path, each with its own state over the same parameters."""
    params = list(model.parameters())

    def adam(**kw):
        return torch.optim.Adam(params, lr=ADAM_LR, **kw)

    def sgd(**kw):
        return torch.optim.SGD(params, lr=SGD_LR, momentum=MOMENTUM, **kw)

    native = (("adam", {"lr": ADAM_LR}), ("sgd", {"lr": SGD_LR, "momentum": MOMENTUM}))
    named = model.named_parameters
    return {
        "torch Adam fused": adam(fused=True),
        "torch SGD-m fused": sgd(fused=True),
        "torch Adam foreach": adam(foreach=True),
        "torch SGD-m foreach": sgd(foreach=True),
        "Graft native, default": Graft(named(), *native),
        "Graft native, reference": Graft(named(), *native, fused=False),
        "Graft black-box, default": Graft(named(), adam(fused=True), sgd(fused=True)),
        "Graft black-box, via step()": Graft(
            named(), adam(fused=True), sgd(fused=True), path="blackbox"
        ),
        "Graft black-box, reference": Graft(
            named(), adam(fused=True), sgd(fused=True), fused=False
        ),
    }


#: Other rule pairs: magnitude spec, direction spec, torch's equivalents of the two children.
OTHER_PAIRS = {
    "adagrad#rmsprop-m": (
        ("adagrad", {"lr": 1e-2}),
        ("rmsprop", {"lr": 1e-4, "momentum": 0.9}),
        lambda p: {
            "torch Adagrad fused": torch.optim.Adagrad(p, lr=1e-2, fused=True),
            "torch RMSprop foreach": torch.optim.RMSprop(p, lr=1e-4, momentum=0.9, foreach=True),
        },
    ),
    "adamw#nesterov": (
        ("adamw", {"lr": ADAM_LR}),
        ("sgd", {"lr": SGD_LR, "momentum": MOMENTUM, "nesterov": True}),
        lambda p: {
            "torch AdamW fused": torch.optim.AdamW(p, lr=ADAM_LR, fused=True),
            "torch SGD-nesterov fused": torch.optim.SGD(
                p, lr=SGD_LR, momentum=MOMENTUM, nesterov=True, fused=True
            ),
        },
    ),
    "lion#signum": (
        ("lion", {"lr": 1e-5}),
        ("sign_sgd", {"lr": 1e-5, "momentum": 0.9}),
        lambda p: {},
    ),  # torch has neither
    "lamb#sgd-m": (  # the trust ratios: between kernel passes by default
        ("lamb", {"lr": ADAM_LR}),
        ("sgd", {"lr": SGD_LR, "momentum": MOMENTUM}),
        lambda p: {},
    ),  # torch has no LAMB
    "sgd-m#lars": (
        ("sgd", {"lr": SGD_LR, "momentum": MOMENTUM}),
        ("lars", {"lr": SGD_LR, "momentum": MOMENTUM}),
        lambda p: {},
    ),  # torch has no LARS
}


def backend(opt: Graft) -> str:
    """The backend ``opt`` takes for a step of all its parameters (they all have gradients)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    name = opt._backend(opt._plan_for(params)).__name__.rpartition(".")[2]
    if name == "fused" and not opt.native:  # black-box children: stepped how?
        how = "on their states" if fused.runs_children(opt, params) else "via step()"
        name += f" ({how})"
    return name


OVER = "Graft over torch's"


def other_pairs(
    model: torch.nn.Module, rounds: int, prepare: Callable[[], None] = lambda: None
) -> list[str]:
    """Per pair: Graft's default vs its reference path and vs torch's two children
    (``prepare``: as for :func:`time_steps`)."""
    lines = []
    for label, (magnitude, direction, torch_children) in OTHER_PAIRS.items():
        params = list(model.parameters())
        opts = {
            "default": Graft(model.named_parameters(), magnitude, direction),
            "reference": Graft(model.named_parameters(), magnitude, direction, fused=False),
            **torch_children(params),
        }
        if torch_children(params):  # Graft over torch's own two optimizers, no flag
            opts[OVER] = Graft(model.named_parameters(), *torch_children(params).values())
        times = time_steps(opts, rounds, PER_ROUND, prepare=prepare)
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        line = (
            f"{label}: default ({backend(opts['default'])}) {med['default']:.2f} ms, "
            f"reference {med['reference']:.2f} ms: {med['default'] / med['reference']:.2f}"
        )
        theirs = {name: ms for name, ms in med.items() if name.startswith("torch")}
        if theirs:
            total = sum(theirs.values())
            line += (
                f"; {' + '.join(theirs)} {total:.2f} ms: default / torch "
                f"{med['default'] / total:.2f}; {OVER} ({backend(opts[OVER])}) "
                f"{med[OVER]:.2f} ms: / torch {med[OVER] / total:.2f}"
            )
        lines.append(line)
    return lines


def time_steps(
    opts: dict[str, torch.optim.Optimizer],
    rounds: int,
    per_round: int,
    sync: Callable[[], None] = lambda: None,
    prepare: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per step of each optimizer, measured in interleaved rounds after a warm-up;
    ``prepare`` runs before each timed step (untimed), ``sync`` waits for the device before
    and after it (CUDA)."""
    for opt in opts.values():
        for _ in range(WARMUP):
            opt.step()
    times: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(rounds):
        for name, opt in opts.items():
            for _ in range(per_round):
                prepare()
                sync()
                start = time.perf_counter()
                opt.step()
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def regimes(flush_mb: int) -> dict[str, Callable[[], None]]:
    """The timing regimes: name -> what runs before each timed step (module docstring)."""
    if flush_mb <= 0:
        return {BACK_TO_BACK: lambda: None}
    other = torch.ones(flush_mb * 2**20 // 4)  # read, not written: no write-backs to time
    return {BACK_TO_BACK: lambda: None, FROM_MEMORY: lambda: other.sum()}


def step_memory(opt: torch.optim.Optimizer) -> tuple[int, int]:
    """(peak bytes allocated and alive inside one step(), bytes still held after it)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak, live


def compile_check(layers: int, width: int, steps: int = 12) -> str:
    """torch.compile of forward + backward + Graft.step(); the times or the error, as text."""
    model = build_model(layers, width)
    opt = Graft(
        model.named_parameters(),
        ("adam", {"lr": ADAM_LR}),
        ("sgd", {"lr": SGD_LR, "momentum": MOMENTUM}),
    )
    x = torch.randn(16, width)

    def train_step(x: torch.Tensor) -> torch.Tensor:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(2):  # warm-up: the first steps create the optimizer states
        train_step(x)
    eager = []
    for _ in range(5):
        start = time.perf_counter()
        train_step(x)
        eager.append(time.perf_counter() - start)
    from torch._dynamo.utils import counters

    compiled = torch.compile(train_step)
    times, frames = [], []
    try:
        for _ in range(steps):
            start = time.perf_counter()
            compiled(x)
            times.append(time.perf_counter() - start)
            frames.append(counters["frames"].get("ok", 0))
    except Exception as error:  # report whatever torch.compile raises, do not hide it
        return f"torch.compile failed: {type(error).__name__}: {str(error)[:400]}"
    breaks = sum(counters["graph_break"].values())
    return (
        f"torch.compile works: first call {times[0]:.1f} s; later calls median "
        f"{statistics.median(times[1:]) * 1e3:.1f} ms, last 3 median "
        f"{statistics.median(times[-3:]) * 1e3:.1f} ms "
        f"(eager {statistics.median(eager) * 1e3:.1f} ms); frames compiled: {frames[0]} in "
        f"the first call, {frames[-1] - frames[0]} in the {steps - 1} later ones; "
        f"{breaks} graph breaks"
    )


def run_compile_check(args: argparse.Namespace) -> str:
    """The compile check in a fresh process with a time limit (it can take minutes)."""
    command = [
        sys.executable,
        __file__,
        "--compile-only",
        "--threads",
        str(args.threads),
        "--layers",
        str(args.layers),
        "--width",
        str(args.width),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.compile_timeout)
    except subprocess.TimeoutExpired:
        return f"torch.compile did not finish within {args.compile_timeout} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("torch.compile")]
    return lines[-1] if lines else f"torch.compile crashed: {done.stderr.strip()[-400:]}"


def ratio_lines(med: dict[str, float], low: dict[str, float], regime: str = "") -> list[str]:
    """Ratios of the Graft paths over the sums of torch's steps (medians, minima)."""
    prefix = f"ratio [{regime}]" if regime else "ratio"
    sums = {
        "fused": ("torch Adam fused", "torch SGD-m fused"),
        "foreach": ("torch Adam foreach", "torch SGD-m foreach"),
    }
    targets = {("Graft native, default", "fused"): 1.0, ("Graft black-box, default", "fused"): 2.0}
    lines = []
    for name in [n for n in med if n.startswith("Graft")]:
        for base, (adam, sgd) in sums.items():
            by_med = med[name] / (med[adam] + med[sgd])
            by_min = low[name] / (low[adam] + low[sgd])
            target = targets.get((name, base))
            note = (
                f"  (target <= {target}: {'met' if by_med <= target else 'NOT met'})"
                if target
                else ""
            )
            lines.append(
                f"{prefix} {name} / (Adam + SGD-m {base}): {by_med:.2f} median, "
                f"{by_min:.2f} min{note}"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, few repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--flush-mb",
        type=int,
        default=None,
        help=f"MB read before each step of the 'from memory' regime (default {FLUSH_MB}, "
        f"--quick {QUICK_FLUSH_MB}; 0: back to back only)",
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="run the torch.compile check (auto: not with --quick)",
    )
    parser.add_argument("--compile-timeout", type=int, default=900)
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.layers = args.layers or (QUICK_LAYERS if args.quick else LAYERS)
    args.width = args.width or (QUICK_WIDTH if args.quick else WIDTH)
    rounds = args.rounds or (2 if args.quick else ROUNDS)
    if args.flush_mb is None:
        args.flush_mb = QUICK_FLUSH_MB if args.quick else FLUSH_MB
    torch.set_num_threads(args.threads)
    if args.compile_only:
        print(compile_check(args.layers, args.width), flush=True)
        return

    model = build_model(args.layers, args.width)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"torch {torch.__version__}, {args.threads} threads, {_cpu_model()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"model: {n_params:,} parameters in {len(list(model.parameters()))} tensors; "
        f"fused kernels: {'available' if fused.available() else fused.unavailable_reason}"
    )
    opts = optimizers(model)
    print(
        "backends: "
        + ", ".join(
            f"{name}: {backend(opt)}" for name, opt in opts.items() if isinstance(opt, Graft)
        )
    )
    before_step = regimes(args.flush_mb)
    timed = {
        regime: time_steps(opts, rounds, 1 if args.quick else PER_ROUND, prepare=prepare)
        for regime, prepare in before_step.items()
    }
    memory = {name: step_memory(opt)[0] for name, opt in opts.items()}
    weights = n_params * 4
    for regime, times in timed.items():
        med = {name: statistics.median(t) for name, t in times.items()}
        low = {name: min(t) for name, t in times.items()}
        print(f"\n{regime}:")
        print(
            f"{'path':34s} {'median ms':>10s} {'min ms':>8s} {'peak temp MB':>13s} {'state MB':>9s}"
        )
        for name, opt in opts.items():
            print(
                f"{name:34s} {med[name] * 1e3:10.2f} {low[name] * 1e3:8.2f} "
                f"{memory[name] / 2**20:13.2f} {state_bytes(opt) / 2**20:9.1f}"
            )
        for kind in ("fused", "foreach"):
            adam, sgd = f"torch Adam {kind}", f"torch SGD-m {kind}"
            print(
                f"{'sum Adam + SGD-m ' + kind:34s} {(med[adam] + med[sgd]) * 1e3:10.2f} "
                f"{(low[adam] + low[sgd]) * 1e3:8.2f}"
            )
        print(f"(weights: {weights / 2**20:.1f} MB; temp = allocator peak inside step())\n")
        for line in ratio_lines(med, low, regime):
            print(line)
    for regime, prepare in before_step.items():
        print(f"\nother rule pairs, {regime} (median ms; torch's children where it has them):")
        for line in other_pairs(model, max(1, rounds // 3), prepare):
            print(line)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.compile == "yes" or (args.compile == "auto" and not args.quick):
        print(run_compile_check(args))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
