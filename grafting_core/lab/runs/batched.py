"""Batched training: several plain runs of one task trained as one vmapped model.

A tuned comparison's cost is mostly plain runs (the lr x warm-up search, the tuned arms'
reruns) that share a model, data set and length and differ in lr, warm-up and seed. Here N
such runs train together: their weights are the rows of one ``(N, P)`` tensor, the forward
and backward passes are one ``torch.func.vmap`` of ``functional_call`` over the rows, and the
optimizer is a functional SGD/Adam over whole rows with one lr per row.

Each member computes what ``Trainer`` computes for its ``RunConfig``: the same init
(``build_model(..., seed=seed)``), the same batches (``Dataset.batch(step, seed)``, on the
member's own data set: MNIST-1D is generated from the seed), the same lr schedule
(``lr_factor``), the same arithmetic as the native rules in ``grafting_core.rules`` behind
``Graft``'s plain-M step (a layer with a non-finite gradient is skipped, its optimizer seeing
a zero gradient; ``graft_lr`` multiplies the step), the same flushes, divergence checks and
evaluations. Batched matmuls may round differently from one model's, so members agree with
``Trainer`` to float32 rounding (``tests/lab/runs/test_batched.py`` measures how close).

A member whose loss or weights turn non-finite is marked ``diverged`` at the step ``Trainer``
would report and dropped from the batch; the others go on unchanged.

Not in this slice: grafted runs (``direction``), replays and static ratios, custom tasks,
other optimizers than SGD and Adam, checkpoints, stop/pause/resume, per-layer norm records.

    results = train_batched([config.replace(seed=s) for s in (0, 1, 2)])
    results[0].final["val_loss"]
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from grafting_core.lab.runs.config import RunConfig, field_names
from grafting_core.lab.runs.trainer import lr_factor, pick_device
from grafting_core.lab.tasks.data import Dataset, load_dataset
from grafting_core.lab.tasks.models import build_model, default_model, loss_fn
from grafting_core.layers import Layers

#: the plain optimizers a batch can train (native rules whose arithmetic is mirrored here)
OPTIMIZERS = ("sgd", "adam")
#: settings that may differ between the members of a batch
PER_MEMBER = ("name", "seed", "magnitude_hparams", "schedule", "warmup_steps", "graft_lr")
#: settings that change nothing computed or recorded here (no norms are recorded, and the
#: flushes are taken as with ``flush_seconds=0``)
IGNORED = ("flush_seconds", "record_every")
#: the settings every member must share
SHARED = tuple(k for k in field_names() if k not in PER_MEMBER + IGNORED)
#: per optimizer, what in its hyperparameters changes the operations a step runs: the same
#: in every member
STRUCTURAL: dict[str, dict[str, Callable[[Any], Any]]] = {
    "sgd": {
        "nesterov": lambda hp: hp["nesterov"],
        "whether momentum is 0": lambda hp: hp["momentum"] == 0,
    },
    "adam": {},
}

Row = tuple[int, str, float]


@dataclass
class MemberResult:
    """One member's run, as ``Trainer`` would have reported it."""

    config: RunConfig
    #: ``finished`` or ``diverged``
    status: str
    #: ``on_end``'s step: steps trained, or the first step with a non-finite loss or weight
    step: int
    #: ``on_metrics`` rows ``(step, name, value)``: every step's ``train_loss``, ``lr`` at
    #: each flush, ``val_loss``/``val_accuracy`` at each evaluation (their step is the last
    #: one trained, as the store records it), ``optimizer_state_bytes`` at the end. No
    #: ``steps_per_second`` (a batch's pace is not one run's).
    rows: list[Row] = field(default_factory=list)
    #: the final weights, by parameter name (on the CPU)
    parameters: dict[str, Tensor] = field(default_factory=dict)

    def series(self, name: str) -> list[tuple[int, float]]:
        """``(step, value)`` of one metric, in order."""
        return [(step, value) for step, key, value in self.rows if key == name]

    @property
    def evals(self) -> list[tuple[int, float]]:
        """``(step, val_loss)`` at each evaluation."""
        return self.series("val_loss")

    @property
    def final(self) -> dict[str, float]:
        """Each metric's last value (``val_loss`` is the one a comparison reads)."""
        return {name: value for _, name, value in self.rows}


def check_batchable(configs: Sequence[RunConfig]) -> None:
    """Raise one ValueError saying why ``configs`` cannot train as one batch (if they cannot):
    a grafted or replayed run, an optimizer without a batched rule, or a setting that differs
    between them and must be shared (data set, model, steps, batch size, ...)."""
    if not configs:
        raise ValueError("train_batched needs at least one config")
    for i, cfg in enumerate(configs):
        if not isinstance(cfg, RunConfig):
            raise TypeError(f"configs[{i}] is a {type(cfg).__name__}, not a RunConfig")
        where = f"configs[{i}] ({cfg.name or cfg.label})"
        if cfg.direction:
            raise ValueError(
                f"{where}: direction={cfg.direction!r}: batched training takes plain runs only "
                "(grafted runs train through Trainer)"
            )
        for key in ("replay", "static_ratios", "custom"):
            if getattr(cfg, key):
                raise ValueError(
                    f"{where}: {key}={getattr(cfg, key)!r} is not supported by batched "
                    "training (plain runs on a registered data set only)"
                )
        if cfg.magnitude not in OPTIMIZERS:
            raise ValueError(
                f"{where}: magnitude={cfg.magnitude!r} has no batched rule "
                f"(batched optimizers: {', '.join(OPTIMIZERS)})"
            )
    first = configs[0]
    for key in SHARED:
        values = [getattr(cfg, key) for cfg in configs]
        if key == "model":  # "" means the data set's default: compare what is built
            values = [cfg.model or default_model(cfg.dataset) for cfg in configs]
        odd = next((i for i, v in enumerate(values) if v != values[0]), None)
        if odd is not None:
            raise ValueError(
                f"Cannot batch these runs: {key} differs ({values[0]!r} in configs[0], "
                f"{values[odd]!r} in configs[{odd}]); a batch shares everything but "
                f"{', '.join(PER_MEMBER)}"
            )
    resolved = [cfg.magnitude_spec().resolved for cfg in configs]
    for what, of in STRUCTURAL[first.magnitude].items():
        values = [of(hp) for hp in resolved]
        if any(v != values[0] for v in values):
            raise ValueError(
                f"Cannot batch these runs: {what} differs between them ({values}); "
                "it changes the update rule"
            )


def train_batched(configs: Sequence[RunConfig]) -> list[MemberResult]:
    """Train plain runs of one task as one vmapped model; one result per config, in order."""
    return BatchedTrainer(configs).run()


def _per_member(values: Sequence[float], like: Tensor) -> float | Tensor:
    """One number when every member has it (a Python scalar: the very kernels the native
    rules run), else one per member as an ``(N, 1)`` tensor of ``like``'s dtype."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(list(values), dtype=like.dtype, device=like.device)[:, None]


class BatchedTrainer:
    """N plain runs that share data set, model and loop settings, stepped together."""

    def __init__(self, configs: Sequence[RunConfig]) -> None:
        check_batchable(configs)
        self.configs = list(configs)
        cfg = self.configs[0]
        self.device = pick_device(cfg.device)
        self._precision: Callable[[], Any] = (
            functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext
        )
        self.hparams = [c.magnitude_spec().resolved for c in self.configs]

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        cfg = self.configs[0]
        seeds = sorted({c.seed for c in self.configs})
        self.datasets: dict[int, Dataset] = {s: load_dataset(cfg.dataset, seed=s) for s in seeds}
        sizes = {k: v for k, v in (("width", cfg.width), ("depth", cfg.depth)) if v}
        name = cfg.model or default_model(cfg.dataset)
        models = [
            build_model(name, self.datasets[c.seed], seed=c.seed, **sizes) for c in self.configs
        ]
        task = self.datasets[seeds[0]].task
        self.task = task
        self.loss_fn = loss_fn(task)
        named = list(models[0].named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        # Graft's layers: a layer with a non-finite gradient (or step) is skipped as a whole
        layers = Layers.build(self.names, cfg.granularity)
        self.layer_of = torch.tensor(layers.index, device=self.device)
        self.layer_count = len(layers)
        self.per_tensor = layers.index == tuple(range(len(self.names)))
        tensor_of = torch.arange(len(self.sizes)).repeat_interleave(torch.tensor(self.sizes))
        self.layer_of_weight = torch.tensor(layers.index)[tensor_of].to(self.device)
        # On the CPU a look at a flag costs nothing (no device to wait for): the usual step,
        # every layer finite and moving with graft_lr 1, then skips the masks' passes.
        self.cheap_sync = self.device.type == "cpu"
        self.unit_graft_lr = all(c.graft_lr == 1.0 for c in self.configs)
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture, without weights
        rows = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models]
        self.flat = torch.stack(rows).to(self.device)  # (N, P): each member's weights, a row
        buffers = [dict(m.named_buffers()) for m in models]
        self.buffers = {k: torch.stack([b[k] for b in buffers]).to(self.device) for k in buffers[0]}
        self.members = list(range(len(self.configs)))  # rows of flat -> index in configs
        self._build_optimizer()
        self._build_eval()
        self._build_schedule()

    def _build_optimizer(self) -> None:
        kind = self.configs[0].magnitude
        hp = self.hparams
        flat = self.flat
        self.weight_decay = _per_member([h["weight_decay"] for h in hp], flat)
        self.state: dict[str, Tensor] = {}
        if kind == "sgd":
            self.momentum = _per_member([h["momentum"] for h in hp], flat)
            self.dampening = _per_member([h["dampening"] for h in hp], flat)
            self.nesterov = hp[0]["nesterov"]
            self.uses_momentum = hp[0]["momentum"] != 0
            if self.uses_momentum:
                self.state["momentum_buffer"] = torch.zeros_like(flat)
        else:
            self.beta1 = [h["betas"][0] for h in hp]
            self.beta2 = [h["betas"][1] for h in hp]
            self.eps = _per_member([h["eps"] for h in hp], flat)
            self.state["exp_avg"] = torch.zeros_like(flat)
            self.state["exp_avg_sq"] = torch.zeros_like(flat)
        self.graft_lr = torch.tensor([c.graft_lr for c in self.configs], device=self.device)
        self.state_bytes = float(sum(s[0].numel() * s.element_size() for s in self.state.values()))

    def _build_eval(self) -> None:
        """Each member's fixed validation batches, stacked member by member."""
        cfg = self.configs[0]
        per_seed = {
            s: list(ds.eval_batches(256, max_examples=cfg.eval_examples))
            for s, ds in self.datasets.items()
        }
        shapes = {s: [tuple(x.shape) for x, _ in b] for s, b in per_seed.items()}
        if len({tuple(v) for v in shapes.values()}) > 1:
            raise ValueError(
                "Cannot batch these runs: their seeds' validation sets differ in size "
                f"({shapes}); they cannot be evaluated as one batch"
            )
        seeds = [c.seed for c in self.configs]
        self.eval_batches = [
            (
                torch.stack([per_seed[s][k][0] for s in seeds]).to(self.device),
                torch.stack([per_seed[s][k][1] for s in seeds]).to(self.device),
            )
            for k in range(len(per_seed[seeds[0]]))
        ]

    def _build_schedule(self) -> None:
        """Each member's lr at every step (``Trainer``'s LambdaLR: base lr · factor(step),
        in double precision, then the float32 the step multiplies by)."""
        table = [
            [h["lr"] * lr_factor(s, c.steps, c.schedule, c.warmup_steps) for s in range(c.steps)]
            for c, h in zip(self.configs, self.hparams)
        ]
        self.lrs = torch.tensor(table, dtype=torch.float64).T.to(self.flat.dtype)
        self.lrs = self.lrs.to(self.device)  # (steps, N)

    def _keep(self, rows: list[int]) -> None:
        """Go on with these rows of the batch only (the others diverged)."""
        index = torch.tensor(rows, device=self.device)
        self.members = [self.members[r] for r in rows]
        self.flat = self.flat[index]
        self.buffers = {k: v[index] for k, v in self.buffers.items()}
        self.state = {k: v[index] for k, v in self.state.items()}
        for name in ("weight_decay", "momentum", "dampening", "eps"):
            value = getattr(self, name, None)
            if isinstance(value, Tensor):
                setattr(self, name, value[index])
        for name in ("beta1", "beta2"):
            if hasattr(self, name):
                setattr(self, name, [getattr(self, name)[r] for r in rows])
        self.graft_lr = self.graft_lr[index]
        self.lrs = self.lrs[:, index]
        self.eval_batches = [(x[index], y[index]) for x, y in self.eval_batches]

    # ------------------------------------------------------------------ model
    def _params(self, row: Tensor) -> dict[str, Tensor]:
        """One member's weights (a row of ``flat``) as the model's named tensors."""
        return {
            n: t.view(shape) for n, t, shape in zip(self.names, row.split(self.sizes), self.shapes)
        }

    def _output(self, row: Tensor, buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, (self._params(row), buffers), (x,))

    def _loss(self, row: Tensor, buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(self._output(row, buffers, x), y)

    def _batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Every member's training batch at ``step`` (one per seed, shared by its members)."""
        cfg = self.configs[0]
        seeds = [self.configs[m].seed for m in self.members]
        by_seed = {
            s: self.datasets[s].batch("train", cfg.batch_size, step=step, seed=s)
            for s in dict.fromkeys(seeds)
        }
        x = torch.stack([by_seed[s][0] for s in seeds]).to(self.device, non_blocking=True)
        y = torch.stack([by_seed[s][1] for s in seeds]).to(self.device, non_blocking=True)
        return x, y

    # ------------------------------------------------------------------- step
    def _layer_norms(self, flat: Tensor) -> Tensor:
        """Per member and layer, the norm of ``flat``'s rows over the layer's tensors, in
        float32 (``(N, layers)``), as ``Graft`` reduces per-tensor norms."""
        norms = torch.stack(
            [torch.linalg.vector_norm(t, dim=1) for t in flat.split(self.sizes, dim=1)], dim=1
        ).float()
        if self.per_tensor:
            return norms
        sums = torch.zeros(len(norms), self.layer_count, dtype=norms.dtype, device=norms.device)
        sums.index_add_(1, self.layer_of, norms.square())
        return sums.sqrt()

    def _spread(self, per_layer: Tensor) -> Tensor:
        """``(N, layers)`` values onto every weight of the layer: ``(N, P)``."""
        return per_layer[:, self.layer_of_weight]

    def _train_step(self, step: int) -> Tensor:
        """One step of every member; returns the members' losses ``(N,)``."""
        x, y = self._batch(step)
        flat = self.flat.requires_grad_(True)
        with self._precision():
            losses = vmap(self._loss)(flat, self.buffers, x, y)
        (grads,) = torch.autograd.grad(losses.sum(), flat)
        flat.requires_grad_(False)
        with torch.no_grad():
            self._optimizer_step(grads, step)
        return losses.detach()

    def _optimizer_step(self, grads: Tensor, step: int) -> None:
        """``Graft``'s plain-M step on every row: the native rule's Δ, applied as
        ``w += scale · Δ`` with scale ``graft_lr`` where the layer's gradient and step are
        finite and the step is not zero, else 0 (the reference backend's skip).

        On the CPU the usual step takes a shortcut with the same numbers: when the sums of
        all gradients and of all steps are finite (no element is NaN or inf) and graft_lr
        is 1, every scale is 1 (a zero step moves nothing either way): ``w += Δ``."""
        fast = self.cheap_sync and bool(torch.isfinite(grads.sum()))
        grad_finite = None
        if not fast:
            grad_finite = torch.isfinite(self._layer_norms(grads))
            grads = torch.where(self._spread(grad_finite), grads, 0.0)  # skipped layer: zero
        lr = self.lrs[step][:, None]
        if self.configs[0].magnitude == "sgd":
            delta = self._sgd(grads, step, lr)
        else:
            delta = self._adam(grads, step, lr)
        if fast and self.unit_graft_lr and bool(torch.isfinite(delta.sum())):
            self.flat.add_(delta)  # w + 1·Δ: the same numbers as addcmul_ with scale 1
            return
        step_norm = self._layer_norms(delta)
        moves = torch.isfinite(step_norm) & (step_norm > 0)
        if grad_finite is not None:
            moves &= grad_finite
        scales = moves.to(step_norm.dtype) * self.graft_lr[:, None].to(step_norm.dtype)
        self.flat.addcmul_(delta, self._spread(scales))

    def _with_weight_decay(self, grads: Tensor) -> Tensor:
        wd = self.weight_decay
        if isinstance(wd, Tensor):
            return grads + wd * self.flat
        return grads if wd == 0 else torch.add(grads, self.flat, alpha=wd)

    def _sgd(self, grads: Tensor, step: int, lr: Tensor) -> Tensor:
        """``rules.sgd_update`` on rows: momentum, dampening, Nesterov, coupled decay."""
        grads = self._with_weight_decay(grads)
        if self.uses_momentum:
            buf = self.state["momentum_buffer"]
            momentum, dampening = self.momentum, self.dampening
            if step == 0:  # torch starts the buffer at the first gradient, undamped
                buf.copy_(grads)
            elif isinstance(momentum, Tensor) or isinstance(dampening, Tensor):
                buf.mul_(momentum).add_(grads * (1 - dampening))
            else:
                buf.mul_(momentum)
                buf.add_(grads, alpha=1 - dampening)
            if not self.nesterov:
                grads = buf
            elif isinstance(momentum, Tensor):
                grads = grads + momentum * buf
            else:
                grads = torch.add(grads, buf, alpha=momentum)
        return grads * -lr

    def _adam(self, grads: Tensor, step: int, lr: Tensor) -> Tensor:
        """``rules.adam_update`` on rows: bias-corrected m̂ / (√v̂ + eps), coupled decay."""
        grads = self._with_weight_decay(grads)
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        s = step + 1
        like = self.flat
        weight1 = _per_member([1 - b for b in self.beta1], like)
        beta2 = _per_member(self.beta2, like)
        weight2 = _per_member([1 - b for b in self.beta2], like)
        exp_avg.lerp_(grads, weight1)
        exp_avg_sq.mul_(beta2)
        if isinstance(weight2, Tensor):
            exp_avg_sq.add_(grads * grads * weight2)
        else:
            exp_avg_sq.addcmul_(grads, grads, value=weight2)
        bias_correction1 = _per_member([1 - b**s for b in self.beta1], like)
        bias_correction2_sqrt = _per_member([math.sqrt(1 - b**s) for b in self.beta2], like)
        denom = exp_avg_sq.sqrt()
        denom.div_(bias_correction2_sqrt)
        denom.add_(self.eps)
        direction = exp_avg / denom
        direction.div_(bias_correction1)
        return direction * -lr

    # -------------------------------------------------------------------- loop
    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Each member's validation loss (and accuracy), summed batch by batch as
        ``Trainer.evaluate`` does."""
        self.base.eval()
        count = 0
        totals = [0.0] * len(self.members)
        correct = [0] * len(self.members)
        classify = self.task != "regression"
        for x, y in self.eval_batches:
            out = vmap(self._output)(self.flat, self.buffers, x)
            losses = vmap(self.loss_fn)(out, y).tolist()
            n = y[0].numel() if classify else len(y[0])
            totals = [t + float(v) * n for t, v in zip(totals, losses)]
            count += n
            if classify:
                hits = (out.argmax(-1) == y).flatten(1).sum(1).tolist()
                correct = [c + int(h) for c, h in zip(correct, hits)]
        self.base.train()
        metrics = [{"val_loss": t / count} for t in totals]
        if classify:
            for m, c in zip(metrics, correct):
                m["val_accuracy"] = c / count
        return metrics

    def _weights_finite(self) -> list[bool]:
        """Per member, ``Trainer._weights_finite``: the sum of its tensors' norms is finite."""
        norms = torch.stack(
            [torch.linalg.vector_norm(t, dim=1) for t in self.flat.split(self.sizes, dim=1)]
        )
        return torch.isfinite(norms.sum(0)).tolist()

    def run(self) -> list[MemberResult]:
        """Train every member to ``steps`` (or until it diverges); flushes, divergence
        checks and evaluations come where ``Trainer`` (``flush_seconds=0``) has them."""
        cfg = self.configs[0]
        self._build()
        results = [MemberResult(c, "running", 0) for c in self.configs]
        pending: list[Tensor] = []
        step = 0
        while step < cfg.steps and self.members:
            pending.append(self._train_step(step))
            step += 1
            last = step == cfg.steps
            due = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0 and not last
            if last or due or len(pending) >= cfg.log_every:
                self._flush(pending, step, results)
                pending = []
            if self.members and (step % cfg.eval_every == 0 or last):
                for m, metrics in zip(self.members, self.evaluate()):
                    results[m].rows += [(step - 1, k, v) for k, v in metrics.items()]
        for m in self.members:
            results[m].status, results[m].step = "finished", step
            self._finish(results[m], self.members.index(m), step)
        return results

    def _flush(self, pending: list[Tensor], step: int, results: list[MemberResult]) -> None:
        """``Trainer._flush`` for every member: its losses since the last flush, its lr, and
        whether it diverged (a non-finite loss, or non-finite weights now); a member that
        diverged is finished here and leaves the batch."""
        values = torch.stack(pending).float().cpu().T.tolist()  # (members, steps)
        first = step - len(pending)
        finite = self._weights_finite()
        keep = []
        for row, (m, losses) in enumerate(zip(self.members, values)):
            result = results[m]
            bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
            result.rows += [(first + i, "train_loss", v) for i, v in enumerate(losses[:bad])]
            if bad is None:
                cfg, hp = self.configs[m], self.hparams[m]
                lr = hp["lr"] * lr_factor(step, cfg.steps, cfg.schedule, cfg.warmup_steps)
                result.rows.append((step - 1, "lr", lr))
            if bad is not None or not finite[row]:
                result.status = "diverged"
                result.step = first + bad if bad is not None else step - 1
                self._finish(result, row, step)
            else:
                keep.append(row)
        if len(keep) < len(self.members):
            self._keep(keep)

    def _finish(self, result: MemberResult, row: int, step: int) -> None:
        result.rows.append((step - 1, "optimizer_state_bytes", self.state_bytes))
        weights = self.flat[row].detach().cpu()
        result.parameters = {k: v.clone() for k, v in self._params(weights).items()}
