"""Graft in a Hugging Face ``Trainer``, the two ways Trainer takes an optimizer.

Run (a one-layer GPT-2 built from a config, random tokens: no download, seconds on a CPU;
Trainer needs ``accelerate``, which transformers lists as its ``torch`` extra):

    python examples/hf_trainer_graft.py

- ``optimizers=(graft, scheduler)``: build ``Graft`` over ``model.named_parameters()`` and put
  the scheduler on ``graft.magnitude``. M's learning rate is the run's learning rate (D's
  cancels), and the ``learning_rate`` Trainer logs is M's.
- ``optimizer_cls_and_kwargs=(Graft.factory(M, D, names=model), {"lr": ...})``: Trainer builds
  its own groups (``weight_decay`` for weights, 0.0 for biases and norms; Graft routes them to
  the children that take weight decay) and its own scheduler. ``lr`` becomes M's; Trainer's
  scheduler then scales Graft's own multiplier (1.0 times the schedule), which for an M whose
  step is linear in its lr (SGD, Adam, AdamW) is M's schedule; the logged ``learning_rate``
  is that multiplier.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

from grafting_core import Graft

VOCAB, CONTEXT, ROWS = 64, 16, 32
ADAMW = ("adamw", {"lr": 3e-3})
SGD = ("sgd", {"lr": 0.1, "momentum": 0.9})


def tiny_gpt2(seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    """A one-layer GPT-2 from a config (weights from the seed, nothing downloaded)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # no dropout: runs comparable step by step
    return GPT2LMHeadModel(config).to(dtype)


def token_dataset(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``ROWS`` sequences that repeat a short random pattern (something to learn)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(ROWS):
        pattern = torch.randint(VOCAB, (4,), generator=g)
        ids = pattern.repeat(CONTEXT // 4)
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The groups Trainer.create_optimizer builds: plain tensors, ``weight_decay`` for the
    weights, 0.0 for biases and norms (Trainer's own rule decides which is which)."""
    decay = set(Trainer.get_decay_parameter_names(None, model))  # its `self` is unused
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]


def arguments(out_dir: str, steps: int = 8, **overrides: Any) -> TrainingArguments:
    """CPU, a fixed seed, linear warm-up (2 steps) and decay, a log line every step."""
    settings = dict(
        output_dir=out_dir,
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        weight_decay=0.1,
        warmup_steps=2,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**settings, **overrides})


def train_ready(
    out_dir: str,
    magnitude: Any = ADAMW,
    direction: Any = SGD,
    steps: int = 8,
    dtype: torch.dtype = torch.float32,
) -> Trainer:
    """``optimizers=(graft, scheduler)``: the scheduler on ``graft.magnitude``."""
    model = tiny_gpt2(dtype=dtype)
    graft = Graft(model.named_parameters(), magnitude, direction)
    scheduler = get_linear_schedule_with_warmup(graft.magnitude, 2, steps)
    trainer = Trainer(
        model=model,
        args=arguments(out_dir, steps),
        train_dataset=token_dataset(),
        optimizers=(graft, scheduler),
    )
    trainer.train()
    return trainer


def train_factory(
    out_dir: str,
    magnitude: Any = "adamw",
    direction: Any = SGD,
    steps: int = 8,
    dtype: torch.dtype = torch.float32,
) -> Trainer:
    """``optimizer_cls_and_kwargs``: Trainer builds the groups (as :func:`decay_groups`) and
    the scheduler, and calls ``Graft.factory(...)(groups, **kwargs)``."""
    model = tiny_gpt2(dtype=dtype)
    args = arguments(out_dir, steps)
    kwargs = {
        "lr": args.learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
    }
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=token_dataset(),
        optimizer_cls_and_kwargs=(Graft.factory(magnitude, direction, names=model), kwargs),
    )
    trainer.train()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    steps = parser.parse_args().steps
    with tempfile.TemporaryDirectory() as out:
        for label, run in (
            ("optimizers=(graft, scheduler)", train_ready),
            ("optimizer_cls_and_kwargs", train_factory),
        ):
            losses = [e["loss"] for e in run(out, steps=steps).state.log_history if "loss" in e]
            print(f"{label}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps")


if __name__ == "__main__":
    main()
