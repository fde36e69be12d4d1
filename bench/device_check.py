"""Graft on an accelerator: parity with the float64 CPU reference, no host sync, step time.

The one command a session with a GPU runs (a few minutes; figures for BENCHMARKS.md):
    .venv/bin/python bench/device_check.py
Smoke run on the CPU (what the test suite runs; the figures mean nothing there):
    .venv/bin/python bench/device_check.py --device cpu --quick

1. Parity. Every case steps a small MLP on ``--device`` with ``Graft`` as a user writes it
   (no flag: the backend Graft picks there), and the same MLP in float64 on the CPU with the
   reference backend (``fused=False``), on the same gradients (taken from the float64 model
   at each step). The weights and ``last_norms`` must agree to 1e-12 in float64 and 1e-5 in
   float32 (relative). Cases: rule pairs, a granularity, partial grafting, a non-finite
   layer, two param groups at different lrs, a replayed schedule, and torch's own
   optimizers as black-box children; and A#A
   against torch's Adam on the device, an independent computation.
2. No host sync: on CUDA every ``step()`` but the first (which builds the step's plan)
   runs under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any wait.
3. Time: bench/step.py's paths on bench/step.py's model (on a GPU also a 210M-parameter
   one, ``--widths``) on the device (CUDA: synchronised around each step), with its ratios
   over torch's fused Adam + fused SGD-momentum, and what one step of each launches (the
   profiler's count of kernels; on the CPU, of top-level aten ops).
Exit status 1 when any parity or sync check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import step as step_bench
from grafting_core import Graft, MagnitudeSchedule

STEPS = 6
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
ADAM = ("adam", {"lr": 1e-3})
SGD_M = ("sgd", {"lr": 0.05, "momentum": 0.9})
GPU_WIDTH = 2048  # 50 Linear(2048, 2048): 210M parameters, where a GPU's bandwidth shows
INF_STEP, INF_LAYER = 2, 1  # the step and the parameter whose gradient gets an inf


def mlp() -> nn.Sequential:
    """A float64 MLP with named layers (hidden weights, biases, a head)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)
    ).double()


def torch_children(cls_m: type, cls_d: type) -> Callable[[list[nn.Parameter]], dict[str, Any]]:
    """Children as torch optimizers over the given parameters (fused where torch has it)."""

    def children(params: list[nn.Parameter]) -> dict[str, Any]:
        on_cpu = params[0].device.type == "cpu"
        fast = {"foreach": True} if on_cpu else {"fused": True}
        return {
            "magnitude": cls_m(params, lr=1e-3, **fast),
            "direction": cls_d(params, lr=0.05, momentum=0.9, **fast),
        }

    return children


def constant_schedule(model: nn.Module) -> MagnitudeSchedule:
    names = [name for name, _ in model.named_parameters()]
    return MagnitudeSchedule(names, [0], torch.linspace(1e-3, 3e-3, len(names))[None])


#: name -> Graft's arguments but the parameters: a dict, or a function of the parameters.
CASES: dict[str, Any] = {
    "adam#sgd-m": {"magnitude": ADAM, "direction": SGD_M},
    "sgd-m#adam": {"magnitude": SGD_M, "direction": ADAM},
    "adamw#nesterov": {
        "magnitude": ("adamw", {"lr": 1e-3}),
        "direction": ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    },
    "lion#signum": {
        "magnitude": ("lion", {"lr": 1e-4}),
        "direction": ("sign_sgd", {"lr": 1e-4, "momentum": 0.9}),
    },
    "lamb#lars": {"magnitude": ("lamb", {"lr": 1e-3}), "direction": ("lars", {"lr": 0.05})},
    "adagrad#rmsprop": {
        "magnitude": ("adagrad", {"lr": 1e-2}),
        "direction": ("rmsprop", {"lr": 1e-3, "momentum": 0.9}),
    },
    "adam#sgd-m, global": {"magnitude": ADAM, "direction": SGD_M, "granularity": "global"},
    "adam#sgd-m, hidden grafted": {"magnitude": ADAM, "direction": SGD_M, "grafted": "hidden"},
    "adam#sgd-m, an inf gradient": {"magnitude": ADAM, "direction": SGD_M, "inf": True},
    "adam#sgd-m, two groups' lrs": {"magnitude": ADAM, "direction": SGD_M, "groups": True},
    "replayed schedule#sgd-m": {"magnitude": "schedule", "direction": SGD_M},
    "torch Adam#SGD-m (black-box)": torch_children(torch.optim.Adam, torch.optim.SGD),
}


def build(case: str, model: nn.Module, **options: Any) -> Graft:
    spec = CASES[case]
    params: Any = model.named_parameters()
    if isinstance(spec, dict) and spec.get("groups"):  # the head at 0.3 × the group lr
        head = {id(p) for p in model[-1].parameters()}
        params = [
            {"params": [p for p in model.parameters() if id(p) not in head]},
            {"params": list(model[-1].parameters()), "lr": 0.3},
        ]
    args = (
        spec(list(model.parameters()))
        if callable(spec)
        else {k: v for k, v in spec.items() if k not in ("inf", "groups")}
    )
    if args["magnitude"] == "schedule":
        args["magnitude"] = constant_schedule(model)
    return Graft(params, **args, **options)


def gradients(model: nn.Module, step: int, inf: bool) -> list[torch.Tensor]:
    """The float64 model's gradients on the step's batch (an inf in one layer if asked)."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    y = torch.stack([x[:, 0] * x[:, 1], x[:, 2].sin(), x[:, 3:].sum(1), x[:, 4].abs()], 1)
    model.zero_grad(set_to_none=True)
    (model(x) - y).square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    if inf and step == INF_STEP:
        grads[INF_LAYER][0] = torch.inf
    return grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 on the CPU, over the finite entries of ``b``."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    keep = torch.isfinite(b)
    if not torch.equal(keep, torch.isfinite(a)):
        return float("inf")  # NaN (a layer that did not step) in one and not the other
    scale = b[keep].norm()
    return float((a[keep] - b[keep]).norm() / scale) if scale > 0 else float(a[keep].norm())


def no_sync(device: torch.device, step: int):
    """Raise on any wait on the device inside the block: on CUDA, from the second step on
    (the first builds the step's plan, a few small copies from the host)."""
    if device.type != "cuda" or step == 0:
        return nullcontext()

    class _Guard:
        def __enter__(self):
            torch.cuda.set_sync_debug_mode("error")

        def __exit__(self, *exc):
            torch.cuda.set_sync_debug_mode("default")

    return _Guard()


def parity(case: str, device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Worst relative difference of the weights and of ``last_norms`` over STEPS steps,
    ``case`` on ``device`` in ``dtype`` against the float64 CPU reference."""
    reference = mlp()
    theirs = mlp().to(device=device, dtype=dtype)
    ref_opt = build(case, reference, fused=False)
    opt = build(case, theirs)
    inf = isinstance(CASES[case], dict) and CASES[case].get("inf", False)
    weights = norms = 0.0
    for step in range(STEPS):
        grads = gradients(reference, step, inf)
        for p, q, g in zip(reference.parameters(), theirs.parameters(), grads):
            p.grad = g
            q.grad = g.to(device=device, dtype=dtype, copy=True)  # never the same tensor
        ref_opt.step()
        with no_sync(device, step):
            opt.step()
        for p, q in zip(reference.parameters(), theirs.parameters()):
            weights = max(weights, relative(q, p))
        norms = max(norms, relative(opt.last_norms, ref_opt.last_norms))
    if inf:  # the skipped layer is counted on both
        assert int(opt.nonfinite_skips.sum()) == int(ref_opt.nonfinite_skips.sum()) == 1
    return weights, norms


def a_a_against_torch(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Adam#Adam against torch's Adam on the device: the worst relative difference of the
    weights, and of Graft's recorded step norms against torch's steps."""
    ours, theirs = mlp().to(device=device, dtype=dtype), mlp().to(device=device, dtype=dtype)
    graft = Graft(ours.named_parameters(), ADAM, ADAM)
    adam = torch.optim.Adam(theirs.parameters(), lr=ADAM[1]["lr"])
    weights = norms = 0.0
    for step in range(STEPS):
        for p, q, g in zip(ours.parameters(), theirs.parameters(), gradients(mlp(), step, False)):
            p.grad, q.grad = (g.to(device=device, dtype=dtype, copy=True) for _ in range(2))
        before = [q.detach().clone() for q in theirs.parameters()]
        with no_sync(device, step):
            graft.step()
        adam.step()
        pairs = list(zip(ours.parameters(), theirs.parameters()))
        weights = max(weights, *(relative(p, q) for p, q in pairs))
        steps = torch.stack([(q - b).norm() for q, b in zip(theirs.parameters(), before)])
        norms = max(norms, relative(graft.last_norms[:, 2], steps))
    return weights, norms


def check_parity(device: torch.device, dtypes: list[torch.dtype]) -> list[str]:
    """Every case in every dtype, a line each (printed); the lines of those that failed. An
    error (a host sync on CUDA, a device mismatch) fails its case and the run goes on."""
    failed = []
    for dtype in dtypes:
        tolerance = TOLERANCE[dtype]
        checks = {case: partial(parity, case, device, dtype) for case in CASES}
        checks["adam#adam vs torch Adam"] = partial(a_a_against_torch, device, dtype)
        for case, check in checks.items():
            label = f"parity {case} [{str(dtype).removeprefix('torch.')}]"
            try:
                weights, norms = check()
            except Exception as error:  # report it as this case's failure, do not stop
                line = f"{label}: FAILED with {type(error).__name__}: {str(error)[:300]}"
            else:
                ok = weights <= tolerance and norms <= tolerance
                line = (
                    f"{label}: weights {weights:.1e}, last_norms {norms:.1e} "
                    f"(tolerance {tolerance:.0e}): {'ok' if ok else 'FAILED'}"
                )
            print(line, flush=True)
            if "FAILED" in line:
                failed.append(line)
    return failed


def launches(opt: torch.optim.Optimizer, device: torch.device) -> int:
    """What one step launches: on a GPU its kernels and copies; on the CPU the aten ops it
    calls at top level (each a kernel launch, or several, on a GPU)."""
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        opt.step()
        if cuda:
            torch.cuda.synchronize()
    if cuda:
        return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())
    return sum(
        e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        for e in prof.events()
    )


def time_paths(device: torch.device, layers: int, width: int, rounds: int) -> None:
    """bench/step.py's paths on ``layers`` Linear(width, width) on ``device``, its ratios."""
    model = step_bench.build_model(layers, width).to(device)  # the gradients move with it
    opts = step_bench.optimizers(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = step_bench.time_steps(opts, rounds, step_bench.PER_ROUND, sync=sync)
    med = {name: statistics.median(t) for name, t in times.items()}
    low = {name: min(t) for name, t in times.items()}
    numbers = sum(p.numel() for p in model.parameters())
    unit = "kernels" if device.type == "cuda" else "ops"
    print(f"\n{layers} Linear({width}, {width}): {numbers:,} parameters on {device}")
    print(f"{'path':34s} {'median ms':>10s} {'min ms':>8s} {unit + '/step':>12s}  backend")
    for name, opt in opts.items():
        where = step_bench.backend(opt) if isinstance(opt, Graft) else ""
        print(
            f"{name:34s} {med[name] * 1e3:10.3f} {low[name] * 1e3:8.3f} "
            f"{launches(opt, device):12d}  {where}"
        )
    for line in step_bench.ratio_lines(med, low):
        print(line)
    del opts, model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, help=f"default here: {default}")
    parser.add_argument(
        "--widths",
        default=None,
        help="comma-separated widths of the timed MLPs (bench/step.py's 50 layers); "
        f"default {step_bench.WIDTH} on the CPU, {step_bench.WIDTH},{GPU_WIDTH} on a GPU",
    )
    parser.add_argument("--quick", action="store_true", help="a small timed MLP, few rounds")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {device} ({name})")
    failed = check_parity(device, [torch.float64, torch.float32])
    if args.quick:
        time_paths(device, step_bench.QUICK_LAYERS, step_bench.QUICK_WIDTH, rounds=2)
    else:
        widths = args.widths or (
            f"{step_bench.WIDTH},{GPU_WIDTH}" if device.type == "cuda" else str(step_bench.WIDTH)
        )
        for width in map(int, widths.split(",")):
            time_paths(device, step_bench.LAYERS, width, step_bench.ROUNDS)
    print(f"\n{len(failed)} parity or sync check(s) failed" if failed else "\nall checks ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
