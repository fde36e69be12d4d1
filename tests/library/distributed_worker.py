"""Grafted runs on 2 CPU processes (gloo) for tests/library/test_distributed.py, and
one-process twins.

Every scenario trains the same small model from the same seed on the same global batch:
in one process on all 16 rows, or on ``WORLD`` ranks that each take 8 rows (DDP and FSDP2
average the gradients, so both see the global batch's mean gradient). Each rank saves what it
saw to ``rank<r>.pt``; the tests compare that with the one-process run.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from grafting_core import Graft, MagnitudeSchedule, NormLog, StaticRatios

WORLD = 2
STEPS = 20
ROWS = 16  # global batch; each rank takes ROWS // WORLD
ADAM = ("adam", {"lr": 1e-2})
SGD = ("sgd", {"lr": 0.1, "momentum": 0.9})
FSDP_KINDS = (
    "native",
    "blackbox",
    "module",
    "plain",
    "fused",
    "replay",
    "static",
    "hsdp",
    "optin",
    "partial",
    "partial_blackbox",
)


class OptInSGD(torch.optim.SGD):
    """A subclass Graft cannot vouch for on DTensors until it declares itself element-wise."""


def make_model() -> nn.Module:
    """6-15-5-1 tanh MLP with biases: 15, 5 and 1 rows shard unevenly (rank 1 holds no 'out')."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(6, 15),
            act1=nn.Tanh(),
            fc2=nn.Linear(15, 5),
            act2=nn.Tanh(),
            out=nn.Linear(5, 1),
        )
    )


def batch(step: int, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step`` (or some of its rows)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(ROWS, 6, generator=g)
    y = (x[:, :1] * x[:, 1:2]).sin() + x[:, 2:3]
    return x[rows], y[rows]


def build(kind: str, model: nn.Module, extras: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer of scenario ``kind`` over ``model`` (plain or already sharded)."""
    named = list(model.named_parameters())
    params = [p for _, p in named]
    if kind in ("native", "hsdp"):
        return Graft(named, ADAM, SGD)
    if kind == "blackbox":
        return Graft(
            named, torch.optim.Adam(params, lr=1e-2), torch.optim.SGD(params, lr=0.1, momentum=0.9)
        )
    if kind == "module":  # weight and bias share a norm; black-box NAdam#RMSprop
        return Graft(
            named,
            ("torch.optim:NAdam", {"lr": 1e-2}),
            ("rmsprop", {"lr": 1e-3}),
            granularity="module",
            path="blackbox",
        )
    if kind == "plain":
        return Graft(named, ADAM, None)
    if kind == "fused":
        return Graft(named, ADAM, SGD, fused=True)
    if kind == "replay":
        return Graft(named, MagnitudeSchedule.from_dict(extras["schedule"]), SGD)
    if kind == "static":
        groups = StaticRatios.from_dict(extras["ratios"]).param_groups(named)
        return torch.optim.SGD(groups, momentum=0.9)
    if kind == "optin":
        direction = OptInSGD(params, lr=0.1, momentum=0.9)
        direction.supports_dtensor = True
        return Graft(named, ADAM, direction, granularity="global")
    if kind == "partial":  # Adam's own step on biases and the head ("out", on rank 0 only)
        return Graft(named, ADAM, SGD, grafted="hidden")
    if kind == "partial_blackbox":  # D over every parameter: it must never step the others
        return Graft(
            named,
            torch.optim.Adam(params, lr=1e-2),
            torch.optim.SGD(params, lr=0.1, momentum=0.9),
            grafted="hidden",
        )
    raise ValueError(f"Unknown scenario {kind!r}")


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    rows: slice = slice(None),
    steps: int = STEPS,
    start: int = 0,
) -> NormLog | None:
    """``steps`` steps on ``rows`` of each global batch; the NormLog of a Graft."""
    log = NormLog(opt) if isinstance(opt, Graft) else None
    for step in range(start, start + steps):
        x, y = batch(step, rows)
        opt.zero_grad(set_to_none=True)
        (model(x) - y).square().mean().backward()
        opt.step()
    return log


def single_run(kind: str, extras: dict[str, Any]) -> dict[str, Any]:
    """The one-process reference of scenario ``kind``."""
    model = make_model()
    log = train(model, build(kind, model, extras))
    return {
        "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
        "norms": None if log is None else log.read()[1],
    }


# ----------------------------------------------------------------------------- workers
def _shard(model: nn.Module, mesh=None) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for n, p in model.named_parameters()
    }


class _HostSyncs(TorchDispatchMode):
    """Counts aten._local_scalar_dense: every .item()/float(t)/bool(t) host sync."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def _comm_counts(fn) -> dict[str, int]:
    from torch.distributed.tensor.debug import CommDebugMode

    with CommDebugMode() as mode:
        fn()
    return {str(op): n for op, n in mode.get_comm_counts().items()}


def _forward_backward(model: nn.Module, rows: slice, step: int) -> None:
    x, y = batch(step, rows)
    (model(x) - y).square().mean().backward()


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, rows: slice, step: int) -> None:
    opt.zero_grad(set_to_none=True)
    _forward_backward(model, rows, step)
    opt.step()


def _error(fn) -> str | None:
    try:
        fn()
    except RuntimeError as error:
        return str(error)
    return None


def _fsdp_checks(rank: int, rows: slice) -> dict[str, Any]:
    """Collective counts, refusals at construction and the non-finite skip under FSDP2."""
    out: dict[str, Any] = {}
    for kind in ("native", "blackbox"):
        model = _shard(make_model())
        opt = build(kind, model, {})
        _train_step(model, opt, rows, 0)
        opt.zero_grad(set_to_none=True)
        out[f"fwd_bwd_{kind}"] = _comm_counts(partial(_forward_backward, model, rows, 1))
        out[f"step_{kind}"] = _comm_counts(opt.step)
        _train_step(model, opt, rows, 2)
        opt.zero_grad(set_to_none=True)
        _forward_backward(model, rows, 3)
        with _HostSyncs() as syncs:
            opt.step()
        out[f"host_syncs_{kind}"] = syncs.count
    model = _shard(make_model())
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train_step(model, adam, rows, 0)
    out["train_step_adam"] = _comm_counts(lambda: _train_step(model, adam, rows, 1))
    graft = build("native", model, {})
    _train_step(model, graft, rows, 0)
    out["train_step_graft"] = _comm_counts(lambda: _train_step(model, graft, rows, 1))

    named = list(model.named_parameters())
    params = [p for _, p in named]
    out["error_lars"] = _error(lambda: Graft(named, ("lars", {}), SGD))
    out["error_lamb_blackbox"] = _error(lambda: Graft(named, ADAM, "lamb", path="blackbox"))
    out["error_adafactor"] = _error(lambda: Graft(named, ADAM, torch.optim.Adafactor(params)))
    out["error_unknown"] = _error(lambda: Graft(named, ADAM, OptInSGD(params, lr=0.1)))
    out["error_mixed"] = _error(
        lambda: Graft(named + [("extra", nn.Parameter(torch.ones(2)))], ADAM, SGD)
    )

    model = _shard(make_model())
    opt = build("native", model, {})
    train(model, opt, rows, steps=2)
    before = _full_weights(model)
    x, y = batch(2, rows)
    opt.zero_grad(set_to_none=True)
    (model(x) - y).square().mean().backward()
    if rank == 0:  # rank 0 holds rows 0..2 of fc2.weight's 5: only its shard is bad
        model.fc2.weight.grad.to_local()[0, 0] = float("nan")
    opt.step()
    after = _full_weights(model)
    out["nonfinite_moved"] = sorted(n for n in before if not torch.equal(before[n], after[n]))
    out["nonfinite_norms"] = opt.last_norms.clone()
    out["nonfinite_skips"] = opt.nonfinite_skips.clone()
    out["layer_names"] = list(opt.layers.names)
    return out


def _clone(tree: Any) -> Any:
    """A deep copy of a state_dict whose tensors may be DTensors."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_clone(v) for v in tree)
    return tree


def _resumed_run(rows: slice) -> dict[str, Any]:
    """Adam#SGD under FSDP2 for half the steps, saved, rebuilt, restored, then the rest."""
    half = STEPS // 2
    model = _shard(make_model())
    opt = build("native", model, {})
    first = train(model, opt, rows, steps=half)
    weights, state = _clone(model.state_dict()), _clone(opt.state_dict())
    model = _shard(make_model())
    model.load_state_dict(weights)
    opt = build("native", model, {})
    opt.load_state_dict(state)
    second = train(model, opt, rows, steps=STEPS - half, start=half)
    return {
        "weights": _full_weights(model),
        "norms": torch.cat([first.read()[1], second.read()[1]]),
        "state_type": type(opt.magnitude.state[next(model.parameters())]["exp_avg"]).__name__,
    }


def _same(a: Any, b: Any) -> bool:
    """Equal values; DTensors compared as whole tensors."""
    from torch.distributed.tensor import DTensor

    if isinstance(a, torch.Tensor):
        a, b = (t.full_tensor() if isinstance(t, DTensor) else t for t in (a, b))
        return torch.equal(a, b)
    return a == b


def _dcp_resumed_run(rows: slice, folder: Path) -> dict[str, Any]:
    """Adam#SGD under FSDP2: half the steps, ``dcp.save`` to a folder, a fresh sharded model
    and Graft ``dcp.load`` it, then the rest; also whether taking the state touched M."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    half = STEPS // 2
    model = _shard(make_model())
    opt = build("native", model, {})
    first = train(model, opt, rows, steps=half)
    opt.zero_grad(set_to_none=True)  # no gradients: DCP would step an optimizer it thinks new
    before = _clone(opt.magnitude.state_dict())
    model_state, optim_state = get_state_dict(model, opt)
    after = opt.magnitude.state_dict()
    untouched = all(
        _same(before["state"][i][k], after["state"][i][k])
        for i in before["state"]
        for k in ("step", "exp_avg", "exp_avg_sq")
    )
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=folder)
    saved_keys = sorted(optim_state["state"]["fc1.weight"])

    model = _shard(make_model())
    opt = build("native", model, {})
    model_state, optim_state = get_state_dict(model, opt)
    dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=folder)
    set_state_dict(model, opt, model_state_dict=model_state, optim_state_dict=optim_state)
    step_after_load = opt.graft_step
    second = train(model, opt, rows, steps=STEPS - half, start=half)
    return {
        "weights": _full_weights(model),
        "norms": torch.cat([first.read()[1], second.read()[1]]),
        "untouched": untouched,
        "saved_keys": saved_keys,
        "step_after_load": step_after_load,
    }


def _mixed_placements_run(world: int) -> dict[str, Any]:
    """Hand-made DTensors: rows, columns and replicated biases on one mesh (not FSDP's layout).

    Every rank computes the global batch's gradient of the whole model and hands Graft its
    own shard: a replicated bias must count once in the summed norms, not once per rank.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    plain = make_model()
    layout = {"fc1.weight": Shard(0), "fc2.weight": Shard(1), "out.weight": Shard(1)}
    params = {
        n: nn.Parameter(distribute_tensor(p.detach(), mesh, [layout.get(n, Replicate())]))
        for n, p in plain.named_parameters()
    }
    opt = Graft(list(params.items()), ADAM, SGD)
    log = NormLog(opt)
    for step in range(STEPS):
        full = {n: p.full_tensor().detach().requires_grad_() for n, p in params.items()}
        x, y = batch(step)
        loss = (torch.func.functional_call(plain, full, (x,)) - y).square().mean()
        for p, grad in zip(params.values(), torch.autograd.grad(loss, list(full.values()))):
            p.grad = distribute_tensor(grad, mesh, p.placements)
        opt.step()
    return {
        "weights": {n: p.full_tensor().detach().clone() for n, p in params.items()},
        "norms": log.read()[1],
        "placements": [str(p.placements) for p in params.values()],
        "weights_mask": opt._sharding.weights,
    }


def worker(rank: int, world: int, port: int, out_dir: str, extras: dict[str, Any]) -> None:
    """One rank: every DDP and FSDP2 scenario, then the checks; saves ``rank<r>.pt``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    rows = slice(rank * ROWS // world, (rank + 1) * ROWS // world)
    results: dict[str, Any] = {}
    try:
        for kind in ("native", "blackbox"):
            model = make_model()
            ddp = DistributedDataParallel(model)
            opt = build(kind, model, extras)
            log = train(ddp, opt, rows)
            x, y = batch(0, rows)
            opt.zero_grad(set_to_none=True)
            (ddp(x) - y).square().mean().backward()
            results[f"ddp_{kind}"] = {
                "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
                "norms": log.read()[1],
                "step_comms": _comm_counts(opt.step),
            }
        for kind in FSDP_KINDS:
            mesh = None  # fully_shard's default: a 1-D mesh over all ranks
            if kind == "hsdp":  # replicate over 1 group, shard over the 2 ranks
                mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard"))
            model = _shard(make_model(), mesh)
            opt = build(kind, model, extras)
            log = train(model, opt, rows)
            results[f"fsdp_{kind}"] = {
                "weights": _full_weights(model),
                "norms": None if log is None else log.read()[1],
                "placements": [str(p.placements) for p in model.parameters()],
                "sharded": getattr(opt, "_sharding", None) is not None,
            }
        results["dtensor_mixed"] = _mixed_placements_run(world)
        results["fsdp_resume"] = _resumed_run(rows)
        results["fsdp_dcp"] = _dcp_resumed_run(rows, Path(out_dir) / "dcp")
        results["checks"] = _fsdp_checks(rank, rows)
        dist.barrier()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()
