"""Graft in a Lightning ``LightningModule``: ``configure_optimizers`` returns it.

Run (a small MLP on a synthetic regression, CPU, seconds):

    python examples/lightning_graft.py    # 40 steps; a second run resumes from step 13

Lightning accepts only schedulers over the optimizer ``configure_optimizers`` returns, so the
scheduler goes on ``graft`` itself (``interval="step"``): it scales Graft's own lr, the
multiplier of the grafted step (1.0 times the schedule). For an M whose step is its lr times
something that does not depend on it (SGD, Adam, AdamW, AdaGrad, RMSprop, Lion; not LARS,
whose momentum accumulates lr) that is exactly M's schedule, the lr that matters (D's
cancels); ``graft.magnitude``'s own lr stays the base lr. Lightning checkpoints
``graft.state_dict()``, which holds both children's state, and a resumed fit continues the
run exactly.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from grafting_core import Graft, StaticRatios

# Full batch: one step an epoch. Lightning resumes an epoch by restarting a plain DataLoader
# from its first batch, so with several batches an epoch a resumed run would see other data
# (Lightning's limit, not Graft's: use a stateful loader there).
ROWS, BATCH = 32, 32


def decay(step: int) -> float:
    """The learning-rate multiplier at ``step``."""
    return 1.0 / (1.0 + 0.1 * step)


class GraftedRegression(pl.LightningModule):
    """A tanh MLP trained with ``magnitude#direction`` grafting."""

    def __init__(
        self,
        magnitude: Any = ("adam", {"lr": 1e-2}),
        direction: Any = ("sgd", {"lr": 0.1, "momentum": 0.9}),
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            OrderedDict(fc1=nn.Linear(6, 16), act=nn.Tanh(), out=nn.Linear(16, 1))
        )
        self.magnitude, self.direction = magnitude, direction

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return (self.net(x) - y).square().mean()

    def configure_optimizers(self) -> dict[str, Any]:
        graft = Graft(self.net.named_parameters(), self.magnitude, self.direction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(graft, decay)  # M's schedule, see above
        return {"optimizer": graft, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StaticRatioRegression(GraftedRegression):
    """The same model trained by plain SGD with per-layer learning rates ``base_lr · c`` from
    static ratios exported by the lab (``grafting runs ratios`` / the Static ratios page),
    recorded on this ``net``: no second optimizer state at all."""

    def __init__(self, ratios: str | Path, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.ratios = str(ratios)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = StaticRatios.load(self.ratios).param_groups(self.net.named_parameters())
        return torch.optim.SGD(groups, momentum=0.9)


def data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, 6, generator=g)
    y = (x[:, :1] * x[:, 1:2]).sin() + x[:, 2:3]
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def fit(
    module: pl.LightningModule,
    steps: int,
    root: str | Path,
    ckpt_path: str | Path | None = None,
    checkpoint: bool = False,
) -> pl.Trainer:
    """``steps`` optimizer steps in total (a resumed fit counts those already taken); with
    ``checkpoint``, Lightning saves ``step=<n>.ckpt`` in ``root`` after every epoch."""
    callbacks = (
        [
            pl.callbacks.ModelCheckpoint(
                dirpath=root, filename="{step}", save_top_k=-1, save_on_train_epoch_end=True
            )
        ]
        if checkpoint
        else []
    )
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=checkpoint,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data(), ckpt_path=ckpt_path)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--resume-at", type=int, default=13)
    args = parser.parse_args()
    steps, resume_at = args.steps, args.resume_at
    with tempfile.TemporaryDirectory() as root:
        straight = GraftedRegression()
        fit(straight, steps, root, checkpoint=True)
        resumed = GraftedRegression(seed=1)  # other initial weights: the checkpoint restores them
        fit(resumed, steps, root, ckpt_path=Path(root) / f"step={resume_at}.ckpt")
        gap = max(
            float((a.detach() - b.detach()).abs().max())
            for a, b in zip(resumed.parameters(), straight.parameters())
        )
        print(
            f"{steps} steps, resumed from Lightning's checkpoint at step {resume_at}: "
            f"largest weight difference from the uninterrupted run {gap:.3g}"
        )


if __name__ == "__main__":
    main()
