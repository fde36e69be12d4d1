"""Graft in a data-parallel run: DistributedDataParallel or FSDP2 (``fully_shard``), by torchrun.

Run (2 CPU processes with gloo; one GPU per process with NCCL where CUDA is present):

    torchrun --nproc-per-node 2 examples/ddp_fsdp_graft.py --mode fsdp
    torchrun --nproc-per-node 2 examples/ddp_fsdp_graft.py --mode ddp --steps 300
    torchrun --nproc-per-node 8 examples/ddp_fsdp_graft.py --mode fsdp --out runs/fsdp

It trains a tanh MLP on a synthetic teacher regression with Adam#SGD-momentum grafting
(Adam's per-layer step sizes, SGD's directions). Each rank takes its own slice of every
global batch; the gradients are averaged by the wrapper, so the run matches one process
on the global batch.

- DDP: parameters are replicated and gradients arrive averaged, so ``Graft`` is used as in
  one process and every rank takes the identical step; Graft adds no communication.
- FSDP2: shard each ``Linear`` and then the root with ``fully_shard`` *before* building
  ``Graft`` over ``model.named_parameters()`` (now ``DTensor`` shards). The native rules run
  on each rank's shards; the per-layer norms ‖g‖, ‖w‖, ‖Δ_M‖, ‖Δ_D‖ are those of the whole
  layer, summed across shards by one all_reduce per step for all layers together.
  Combinations that cannot work there (native LARS/LAMB, Muon, Adafactor, optimizers that
  do not declare ``supports_dtensor = True``) are refused when ``Graft`` is built.
- Recording: after that reduction ``Graft.last_norms`` is the same on every rank, so rank 0
  alone keeps a ``NormLog`` and, with ``--out``, saves the implicit schedule
  (``schedule.json``, replayable as ``MagnitudeSchedule.load``) and static per-layer ratios
  (``ratios.json``, for ``torch.optim.SGD(StaticRatios.load(...).param_groups(...))``).
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from grafting_core import Graft, NormLog, static_ratios_from_log

STEPS = 200  # optimizer steps
BATCH = 64  # global batch, split evenly across ranks
WIDTH = 255  # hidden width: odd on purpose, FSDP2's shards are then uneven
MAGNITUDE = ("adam", {"lr": 3e-3})  # whose per-layer step sizes the run takes
DIRECTION = ("sgd", {"lr": 0.1, "momentum": 0.9})  # whose step directions
LOG_EVERY = 50  # steps between loss lines (each costs one all_reduce of the loss)


def make_model(width: int) -> nn.Module:
    """A 32-width-width-1 tanh MLP with named layers (the names label the norm records)."""
    torch.manual_seed(0)  # every rank starts from the same weights
    return nn.Sequential(
        OrderedDict(
            hidden1=nn.Linear(32, width),
            act1=nn.Tanh(),
            hidden2=nn.Linear(width, width),
            act2=nn.Tanh(),
            out=nn.Linear(width, 1),
        )
    )


def global_batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's global batch of an ill-conditioned teacher regression (same on every rank)."""
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(size, 32, generator=gen) * torch.logspace(0, -2, 32)
    teacher = torch.Generator().manual_seed(12345)
    w = torch.randn(32, 1, generator=teacher)
    return x, torch.tanh(x @ w * 3)


def wrap(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """DDP around the model, or FSDP2 on each Linear and then on the root."""
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("ddp", "fsdp"), default="fsdp")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--out", type=Path, default=None, help="rank 0 saves schedule/ratios here")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {world} ranks")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    model = make_model(args.width).to(device)
    wrapped = wrap(model, args.mode, device)
    # After fully_shard: the parameters Graft sees are the DTensor shards.
    opt = Graft(model.named_parameters(), MAGNITUDE, DIRECTION)
    log = NormLog(opt, capacity=args.steps) if rank == 0 else None
    mine = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
    for step in range(args.steps):
        x, y = (t[mine].to(device) for t in global_batch(step, args.batch))
        opt.zero_grad(set_to_none=True)
        loss = (wrapped(x) - y).square().mean()
        loss.backward()
        opt.step()
        if step % LOG_EVERY == 0 or step == args.steps - 1:
            loss = loss.detach().clone()
            dist.all_reduce(loss, op=dist.ReduceOp.SUM)
            if rank == 0:
                print(f"step {step:5d}  loss {float(loss) / world:.5f}", flush=True)

    if rank == 0:
        _, values = log.read()
        fields = list(log.fields)
        print(f"\n{args.mode}, {world} ranks: whole-layer norms at the last step")
        print(f"{'layer':16s} {'|dM|':>10s} {'|dD|':>10s} {'|g|':>10s} {'|w|':>10s}")
        for name, row in zip(log.layer_names, values[-1]):
            cols = [
                row[fields.index(f)]
                for f in ("magnitude_norm", "direction_norm", "grad_norm", "weight_norm")
            ]
            print(f"{name:16s} " + " ".join(f"{float(v):10.4g}" for v in cols))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            log.magnitude_schedule().save(args.out / "schedule.json")
            window = (args.steps // 4, args.steps)
            static_ratios_from_log(log, window=window).save(args.out / "ratios.json")
            print(f"saved {args.out / 'schedule.json'} and {args.out / 'ratios.json'}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
