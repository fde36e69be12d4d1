"""Batched training: several plain or grafted runs of one task trained as one vmapped model.

A tuned comparison's cost is mostly plain runs (the lr x warm-up search, the tuned arms'
reruns) that share a model, data set and length and differ in lr, warm-up and seed, then the
grafts M#D on the reporting seeds and the controls. Here N such runs train together: their
weights are the rows of one ``(N, P)`` tensor, the forward and backward passes are one
``torch.func.vmap`` of ``functional_call`` over the rows, and the optimizer is a functional
SGD/Adam over whole rows with one lr per row (``RowRule``).

Grafted runs M#D with M and D each SGD or Adam (adam#sgd, sgd#adam, the positive control's
sgd#sgd, ...) batch with the runs of the same pair: both children propose a step per row
from the same gradient and per member and layer ``w += graft_lr · ‖Δ_M‖ / (‖Δ_D‖ + eps) ·
Δ_D`` (``core.graft_scales``), M's lr on the schedule, D's constant, as ``Trainer`` builds
its ``Graft``. The step is a ``GraftRule`` of two rules, M's and D's, each a ``RowRule``
or itself a ``GraftRule``: the negative control's nested graft ``(X#Y)#X`` (M a ``Graft``
of X and Y built from a spec, ``GRAFT_CLASS``) is ``GraftRule(GraftRule(X, Y), X)``,
stepped as ``Graft`` steps a black-box child (M and D driven from w, their steps read back
as ``w' - w``), its inner Graft at its own lr on M's schedule. A batch shares the shape of
its optimizer (M's and D's optimizers, a nested M's) and whatever in their hyperparameters
changes the operations (``STRUCTURAL``); seeds, every child's lrs and other
hyperparameters, schedule, warm-up and ``graft_lr`` may differ per member.

Each member computes what ``Trainer`` computes for its ``RunConfig``: the same init
(``build_model(..., seed=seed)``), the same batches (``Dataset.batch(step, seed)``, on the
member's own data set: MNIST-1D is generated from the seed), the same lr schedule
(``lr_factor``), the same arithmetic as the native rules in ``grafting_core.rules`` behind
``Graft``'s plain-M and M#D steps (a layer with a non-finite gradient, or a non-finite
step or ratio, is skipped and counted in ``nonfinite_skips``, its optimizers seeing a zero
gradient; a layer whose D step is zero stays; ``graft_lr`` multiplies the step), the same
flushes, divergence checks and evaluations. Batched matmuls may round differently from one
model's, so members agree with ``Trainer`` to float32 rounding
(``tests/lab/runs/test_batched.py``, ``test_batched_graft.py`` and ``test_batched_nested.py``
measure how close). On a model of 64K parameters or more ``Trainer``'s ``Graft`` steps with
its fused kernels (``grafting_core.fused``), which round differently from the reference
arithmetic mirrored here: a grafted member then equals ``Trainer`` with ``Graft(...,
fused=False)`` bit for bit, and the fused run only to rounding that training amplifies (a
width-300 MNIST-1D MLP, adam#sgd, seed 1: 1e-7 in the loss after one step, 1e-4 after 40).
The lab's batched models (the default MLP, CNNs) are all below that size.

A member whose loss or weights turn non-finite is marked ``diverged`` at the step ``Trainer``
would report and dropped from the batch; the others go on unchanged.

Stored runs (``runner.execute_batch``): each member is built by its own ``Trainer`` (a
shell that never trains: its model gives the init, its ``resume`` loads a checkpoint), and
hands what it records to callbacks as ``Trainer`` does (``on_start``, ``on_metrics``,
``on_norms``, ``on_checkpoint``, ``on_end``, each with the member's index first): its
per-layer norms (``record_norms``: ‖Δ_M‖, ‖Δ_D‖, the applied step, ‖g‖, ‖w‖, skips),
checkpoints in ``Trainer``'s format (the shell's weights and both children's state set from
the batch's rows, a nested M's children and counters too, then ``Trainer.checkpoint``: a
paused batched graft resumes in ``Trainer`` or as a batch), a pause at ``pause_at`` shared
by the batch, and stop requests member by member.

Not batched (``check_batchable`` says why; such runs train through ``Trainer``): partial
grafts (``grafted``: D over some layers only), a nested Graft with options of its own or
without a D, replays and static ratios, custom tasks, other optimizers than SGD and Adam as
M or D (or inside a nested M).

    results = train_batched([config.replace(seed=s) for s in (0, 1, 2)])
    results[0].final["val_loss"]
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from grafting_core.lab.runs.config import RunConfig, field_names
from grafting_core.lab.runs.trainer import NORM_RING, Trainer, lr_factor, pick_device
from grafting_core.lab.tasks.data import Dataset, load_dataset
from grafting_core.lab.tasks.models import default_model, loss_fn
from grafting_core.layers import Layers
from grafting_core.registry import OptimizerSpec, as_spec
from grafting_core.rules import init_state

#: the optimizers a batch can train as M or D (native rules whose arithmetic is mirrored here)
OPTIMIZERS = ("sgd", "adam")
#: the models a batch gains on: vmap has no batching rule for CPU flash attention and loops
#: over a transformer's members (BENCHMARKS.md, "Batched plain runs")
MODELS = ("mlp", "cnn1d", "cnn")
#: the most members of one batch (the gain flattens out beyond, BENCHMARKS.md)
MAX_MEMBERS = 15
EVENTS = ("on_start", "on_metrics", "on_norms", "on_checkpoint", "on_end")
#: settings that may differ between the members of a batch
PER_MEMBER = (
    "name",
    "seed",
    "magnitude_hparams",
    "direction_hparams",
    "schedule",
    "warmup_steps",
    "graft_lr",
)
#: settings that change nothing computed: the pace of flushes (a batch flushes at its
#: fewest ``flush_seconds``) and of norm records (taken from the first member: ``batch_key``
#: groups stored runs by it)
IGNORED = ("flush_seconds", "record_every")
#: the settings every member must share
SHARED = tuple(k for k in field_names() if k not in PER_MEMBER + IGNORED)
#: per optimizer, what in its hyperparameters changes the operations a step runs: the same
#: in every member (for M, and for D in a grafted batch)
STRUCTURAL: dict[str, dict[str, Callable[[Any], Any]]] = {
    "sgd": {
        "nesterov": lambda hp: hp["nesterov"],
        "whether momentum is 0": lambda hp: hp["momentum"] == 0,
    },
    "adam": {},
}

Row = tuple[int, str, float]
#: ``Graft``'s default eps, added to ‖Δ_D‖ in the ratio (``Trainer`` leaves it as is)
GRAFT_EPS = 1e-16


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
    a partial graft or a replayed run, an optimizer without a batched rule (as M or D), or a
    setting that differs between them and must be shared (data set, model, steps, batch
    size, M's and D's optimizers, ...)."""
    if not configs:
        raise ValueError("train_batched needs at least one config")
    for i, cfg in enumerate(configs):
        if not isinstance(cfg, RunConfig):
            raise TypeError(f"configs[{i}] is a {type(cfg).__name__}, not a RunConfig")
        where = f"configs[{i}] ({cfg.name or cfg.label})"
        for key in ("replay", "static_ratios", "custom"):
            if getattr(cfg, key):
                raise ValueError(
                    f"{where}: {key}={getattr(cfg, key)!r} is not supported by batched "
                    "training (plain runs and whole M#D grafts on a registered data set only)"
                )
        if cfg.grafted:
            raise ValueError(
                f"{where}: grafted={cfg.grafted!r}: partial grafts train through Trainer "
                "(batched training takes plain runs and grafts of every layer)"
            )
        if cfg.magnitude == GRAFT_CLASS and not cfg.direction:
            raise ValueError(
                f"{where}: a nested Graft as a plain run (no direction) has no batched rule "
                "(it trains through Trainer)"
            )
        for role in ("magnitude", "direction"):
            name = getattr(cfg, role)
            if name or role == "magnitude":
                _tree(name, getattr(cfg, f"{role}_hparams"), f"{where}: {role}")
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
    shapes = [_shape(cfg) for cfg in configs]
    odd = next((i for i, shape in enumerate(shapes) if shape != shapes[0]), None)
    if odd is not None:
        raise ValueError(
            f"Cannot batch these runs: the nested graft differs ({shapes[0]!r} in configs[0], "
            f"{shapes[odd]!r} in configs[{odd}]); it changes the update rule"
        )
    leaves = [_leaves(cfg) for cfg in configs]
    for k, (path, name, _) in enumerate(leaves[0]):
        for what, of in STRUCTURAL[name].items():
            values = [of(member[k][2]) for member in leaves]
            if any(v != values[0] for v in values):
                raise ValueError(
                    f"Cannot batch these runs: {_whose(path)}{what} differs between them "
                    f"({values}); it changes the update rule"
                )


#: the import path of ``Graft``: an M or D that is itself a Graft (the negative control's
#: ``(X#Y)#X``, ``compare.NESTED_GRAFT``), built from a spec ``{"magnitude": ..., "direction":
#: ...}`` with Graft's other options at their defaults
GRAFT_CLASS = "grafting_core.graft:Graft"
#: the learning rate of a Graft built from such a spec (Graft's default ``lr``): the one
#: ``Trainer``'s schedule multiplies when that Graft is M
NESTED_LR = 1.0
#: the granularity of a Graft built from such a spec (Graft's default), whatever the run's
NESTED_GRANULARITY = "tensor"

#: An optimizer's shape: an optimizer's name (``"adam"``), or ``(M's shape, D's shape)`` for
#: a Graft. Its hyperparameters (``_tree``) have the same shape: a leaf's resolved ones, or
#: a pair.
Shape = Any


def _tree(name: str, hparams: dict[str, Any], where: str) -> tuple[Shape, Any]:
    """``(shape, hyperparameters)`` of one optimizer: SGD or Adam, or a Graft of two such
    (nested as deep as they come). Raises a ValueError naming ``where`` for anything
    without a batched rule."""
    if name == GRAFT_CLASS:
        extra = sorted(set(hparams) - {"magnitude", "direction"})
        if extra or not hparams.get("magnitude") or not hparams.get("direction"):
            raise ValueError(
                f"{where}: a nested Graft with {sorted(hparams)} has no batched rule (batched: "
                "magnitude and direction only, Graft's other options at their defaults; "
                "others train through Trainer)"
            )
        children = [as_spec(hparams[role]) for role in ("magnitude", "direction")]
        (m, m_hp), (d, d_hp) = (
            _tree(spec.name, spec.hparams, f"{where}'s {role}")
            for spec, role in zip(children, ("magnitude", "direction"))
        )
        return (m, d), (m_hp, d_hp)
    if name not in OPTIMIZERS:
        raise ValueError(
            f"{where}={name!r} has no batched rule "
            f"(batched optimizers: {', '.join(OPTIMIZERS)}; others train through Trainer)"
        )
    return name, OptimizerSpec(name, hparams).resolved


def _config_tree(config: RunConfig) -> tuple[Shape, Any]:
    """``_tree`` of a run's optimizer: M's, or ``(M, D)``'s for a graft."""
    m = _tree(config.magnitude, config.magnitude_hparams, "magnitude")
    if not config.direction:
        return m
    d = _tree(config.direction, config.direction_hparams, "direction")
    return (m[0], d[0]), (m[1], d[1])


def _shape(config: RunConfig) -> Shape:
    return _config_tree(config)[0]


def _leaves(config: RunConfig) -> list[tuple[tuple[str, ...], str, dict[str, Any]]]:
    """``(path, name, resolved hyperparameters)`` of each SGD or Adam in a run's optimizer,
    depth first, M before D; ``path``: the roles leading to it (``("magnitude",)`` for a
    plain run's optimizer)."""
    shape, hparams = _config_tree(config)
    if isinstance(shape, str):
        return [(("magnitude",), shape, hparams)]
    out = []

    def walk(shape: Shape, hparams: Any, path: tuple[str, ...]) -> None:
        if isinstance(shape, str):
            out.append((path, shape, hparams))
            return
        for role, sub, hp in zip(("magnitude", "direction"), shape, hparams):
            walk(sub, hp, (*path, role))

    walk(shape, hparams, ())
    return out


def _whose(path: tuple[str, ...]) -> str:
    """``"D's "`` for a graft's D, ``"M's D's "`` for the D of a nested M, ``""`` for M
    (a plain run's or a flat graft's)."""
    if len(path) == 1 and path[0] == "magnitude":
        return ""
    return "".join("M's " if role == "magnitude" else "D's " for role in path)


def batch_key(config: RunConfig) -> tuple | None:
    """What runs that may train in one batch share (equal keys: ``check_batchable`` accepts
    them together, on a model where batching gains); None for a run that trains alone."""
    try:
        check_batchable([config])
    except (ValueError, TypeError):
        return None
    model = config.model or default_model(config.dataset)
    if model not in MODELS:
        return None
    shared = tuple((key, repr(model if key == "model" else getattr(config, key))) for key in SHARED)
    structural = tuple(
        (path, tuple(of(hp) for of in STRUCTURAL[name].values()))
        for path, name, hp in _leaves(config)
    )
    return shared, repr(_shape(config)), structural, config.record_every


def train_batched(configs: Sequence[RunConfig]) -> list[MemberResult]:
    """Train plain or grafted runs of one task as one vmapped model; one result per config,
    in order."""
    return BatchedTrainer(configs).run()


def _per_member(values: Sequence[float], like: Tensor) -> float | Tensor:
    """One number when every member has it (a Python scalar: the very kernels the native
    rules run), else one per member as an ``(N, 1)`` tensor of ``like``'s dtype."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(list(values), dtype=like.dtype, device=like.device)[:, None]


class RowLayers:
    """``Graft``'s layers over the columns of a batch (``Layers.build`` of the parameter
    names at a granularity): per member and layer norms of an ``(N, P)`` tensor, and
    per-layer values spread back onto the weights."""

    def __init__(self, names: list[str], sizes: list[int], granularity: Any, device: Any) -> None:
        layers = Layers.build(names, granularity)
        self.sizes = sizes
        self.count = len(layers)
        self.layer_of = torch.tensor(layers.index, device=device)
        self.per_tensor = layers.index == tuple(range(len(names)))
        tensor_of = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
        self.layer_of_weight = torch.tensor(layers.index)[tensor_of].to(device)

    def norms(self, flat: Tensor) -> Tensor:
        """Per member and layer, the norm of ``flat``'s rows over the layer's tensors, in
        float32 (``(N, layers)``), as ``Graft`` reduces per-tensor norms."""
        norms = torch.stack(
            [torch.linalg.vector_norm(t, dim=1) for t in flat.split(self.sizes, dim=1)], dim=1
        ).float()
        if self.per_tensor:
            return norms
        sums = torch.zeros(len(norms), self.count, dtype=norms.dtype, device=norms.device)
        sums.index_add_(1, self.layer_of, norms.square())
        return sums.sqrt()

    def spread(self, per_layer: Tensor) -> Tensor:
        """``(N, layers)`` values onto every weight of the layer: ``(N, P)``."""
        return per_layer[:, self.layer_of_weight]


class RowRule:
    """One child optimizer (SGD or Adam: ``rules.sgd_update``/``rules.adam_update``) over
    the rows of a batch: its state ``(N, P)`` per buffer, its hyperparameters one Python
    number when every member has it (the very kernels the native rules run), else one per
    member. ``delta`` advances the state and returns the proposed step Δ, as a native child
    of ``Graft`` does; nothing touches the weights. ``stepped``: the weights after its
    ``step()`` (``w + Δ``), as a Graft with a black-box sibling drives it."""

    #: a native child: ``Graft`` asks it for Δ without stepping the weights
    native = True

    def __init__(self, kind: str, hparams: Sequence[dict[str, Any]], flat: Tensor) -> None:
        self.kind = kind
        self.weight_decay = _per_member([h["weight_decay"] for h in hparams], flat)
        self.state: dict[str, Tensor] = {}
        if kind == "sgd":
            self.momentum = _per_member([h["momentum"] for h in hparams], flat)
            self.dampening = _per_member([h["dampening"] for h in hparams], flat)
            self.nesterov = hparams[0]["nesterov"]
            self.uses_momentum = hparams[0]["momentum"] != 0
            if self.uses_momentum:
                self.state["momentum_buffer"] = torch.zeros_like(flat)
        else:
            self.beta1 = [h["betas"][0] for h in hparams]
            self.beta2 = [h["betas"][1] for h in hparams]
            self.eps = _per_member([h["eps"] for h in hparams], flat)
            self.state["exp_avg"] = torch.zeros_like(flat)
            self.state["exp_avg_sq"] = torch.zeros_like(flat)

    @property
    def state_bytes(self) -> int:
        """One member's state, in bytes."""
        return sum(s[0].numel() * s.element_size() for s in self.state.values())

    def keep(self, index: Tensor, rows: list[int]) -> None:
        """Go on with these rows only."""
        self.state = {k: v[index] for k, v in self.state.items()}
        for name in ("weight_decay", "momentum", "dampening", "eps"):
            value = getattr(self, name, None)
            if isinstance(value, Tensor):
                setattr(self, name, value[index])
        for name in ("beta1", "beta2"):
            if hasattr(self, name):
                setattr(self, name, [getattr(self, name)[r] for r in rows])

    def load(self, row: int, child: torch.optim.Optimizer, params: list[Tensor]) -> None:
        """Row ``row``'s state from a ``Trainer``'s child optimizer (a resume)."""
        for name, rows in self.state.items():
            parts = [child.state[p].get(name) for p in params]
            if any(part is None for part in parts):
                continue  # never stepped: zeros, as a fresh state
            rows[row] = torch.cat([part.detach().reshape(-1) for part in parts])

    def write(
        self, row: int, child: Any, params: list[Tensor], sizes: list[int], step: int
    ) -> None:
        """Row ``row``'s state into a ``Trainer``'s child optimizer, ``step`` steps taken."""
        group = child.param_groups[0]
        hp = {k: group[k] for k in child.rule.defaults}
        for name, rows in self.state.items():
            for p, part in zip(params, rows[row].split(sizes)):
                state = child.state[p]
                if not state:
                    state.update(init_state(child.rule, p, hp))
                state[name].copy_(part.view_as(p))
        for p in params:
            state = child.state[p]
            if not state:
                state.update(init_state(child.rule, p, hp))
            state["step"] = step

    def delta(self, grads: Tensor, flat: Tensor, step: int, lr: float | Tensor) -> Tensor:
        """The proposed step at ``step`` (0-based) on the weights ``flat``."""
        grads = self._with_weight_decay(grads, flat)
        if self.kind == "sgd":
            return self._sgd(grads, step) * -lr
        return self._adam(grads, step, flat) * -lr

    def stepped(self, grads: Tensor, flat: Tensor, step: int, lr: float | Tensor) -> Tensor:
        """The weights after ``NativeOptimizer.step()`` from ``flat`` (a new tensor)."""
        return flat + self.delta(grads, flat, step, lr)

    def _with_weight_decay(self, grads: Tensor, flat: Tensor) -> Tensor:
        wd = self.weight_decay
        if isinstance(wd, Tensor):
            return grads + wd * flat
        return grads if wd == 0 else torch.add(grads, flat, alpha=wd)

    def _sgd(self, grads: Tensor, step: int) -> Tensor:
        """``rules.sgd_update`` on rows: momentum, dampening, Nesterov (before the lr)."""
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
        return grads

    def _adam(self, grads: Tensor, step: int, like: Tensor) -> Tensor:
        """``rules.adam_update`` on rows: bias-corrected m̂ / (√v̂ + eps) (before the lr)."""
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        s = step + 1
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
        return direction


Rule = Any  # a RowRule or a GraftRule


class GraftRule:
    """``Graft(M, D)`` over the rows of a batch, M and D each a ``RowRule`` or a
    ``GraftRule`` (M#D is ``GraftRule(M, D)``, the negative control's ``(X#Y)#X``
    ``GraftRule(GraftRule(X, Y), X)``): the arithmetic of ``Graft``'s reference backend.

    Both children propose a step from the same gradient. Native children (SGD, Adam) return
    Δ without touching the weights; when either child is a Graft (a black box to ``Graft``),
    both are driven through ``step()`` from w and their Δ read back as ``w' - w``. Per member
    and layer the scale is ``lr · ‖Δ_M‖ / (‖Δ_D‖ + eps)`` (``core.graft_scales``), zero on
    a layer whose ratio or ‖Δ_D‖ is not finite (a skip) or whose Δ_D is zero; the weights
    move to ``w + scale · Δ_D`` (``addcmul``, native) or ``scale · Δ_D + w`` (black box).

    The batch's own Graft is the top rule (its lrs: M's scheduled, D's, ``graft_lr``; its
    skips counted in ``BatchedTrainer.skips``). A Graft that is a child steps as ``Trainer``
    builds it from a spec: its children at their own constant lrs, its ``lr`` the one handed
    to it (M's schedule when it is M), its layers tensor by tensor, its skips in ``skips``;
    the gradient it sees is finite (its parent zeroed every layer that was not)."""

    #: to a parent Graft a Graft is a black box, driven through ``step()``
    native = False

    def __init__(
        self,
        magnitude: Rule,
        direction: Rule,
        layers: RowLayers,
        lrs: tuple[Tensor | None, Tensor],
        members: int,
    ) -> None:
        """``lrs``: M's and D's, ``(N, 1)``, the lrs its children step at when this Graft is
        a child (the batch's own Graft hands M its scheduled lr: None here)."""
        self.magnitude, self.direction = magnitude, direction
        self.layers = layers
        self.magnitude_lr, self.direction_lr = lrs
        #: whether both children are native (``Graft.native``): else both are black boxes
        self.children_native = magnitude.native and direction.native
        #: ``nonfinite_skips`` of this Graft as a child, per member and layer
        self.skips = torch.zeros(
            members, layers.count, dtype=torch.int64, device=layers.layer_of.device
        )

    @property
    def state_bytes(self) -> int:
        """One member's state as ``memory.state_bytes`` counts a child Graft's: its
        children's and its own counters (``graft.step`` per parameter, ``nonfinite_skips``)."""
        own = 8 * (len(self.layers.sizes) + self.layers.count)
        return self.magnitude.state_bytes + self.direction.state_bytes + own

    def keep(self, index: Tensor, rows: list[int]) -> None:
        """Go on with these rows only."""
        self.magnitude.keep(index, rows)
        self.direction.keep(index, rows)
        self.skips = self.skips[index]
        if isinstance(self.magnitude_lr, Tensor):
            self.magnitude_lr = self.magnitude_lr[index]
        if isinstance(self.direction_lr, Tensor):
            self.direction_lr = self.direction_lr[index]

    def load(self, row: int, child: Any, params: list[Tensor]) -> None:
        """Row ``row``'s state from a ``Trainer``'s child Graft (a resume)."""
        self.magnitude.load(row, child.magnitude, params)
        self.direction.load(row, child.direction, params)
        self.skips[row] = child.nonfinite_skips.to(self.skips.device)

    def write(
        self, row: int, child: Any, params: list[Tensor], sizes: list[int], step: int
    ) -> None:
        """Row ``row``'s state into a ``Trainer``'s child Graft, ``step`` steps taken."""
        self.magnitude.write(row, child.magnitude, params, sizes, step)
        self.direction.write(row, child.direction, params, sizes, step)
        child.nonfinite_skips.copy_(self.skips[row])
        child.graft_step = step

    # ------------------------------------------------------------------ step
    def propose(
        self,
        grads: Tensor,
        flat: Tensor,
        step: int,
        magnitude_lr: float | Tensor,
        direction_lr: float | Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Both children's steps from ``grads`` at ``flat`` and their per-layer norms:
        ``(Δ_M, Δ_D, ‖Δ_M‖, ‖Δ_D‖)``."""
        steps = []
        for child, lr in ((self.magnitude, magnitude_lr), (self.direction, direction_lr)):
            if self.children_native:
                steps.append(child.delta(grads, flat, step, lr))
            else:  # black boxes: step from w, read the step back, w restored
                steps.append(child.stepped(grads, flat, step, lr).sub_(flat))
        magnitude, direction = steps
        return magnitude, direction, self.layers.norms(magnitude), self.layers.norms(direction)

    @staticmethod
    def scales(
        magnitude_norm: Tensor, direction_norm: Tensor, lr: Tensor, finite: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``core.graft_scales`` per member and layer: ``(finite, scales)``; ``lr`` one per
        member ``(N, 1)``; ``finite``: where the gradient was (None: everywhere)."""
        ratio = magnitude_norm / (direction_norm + GRAFT_EPS)
        ok = torch.isfinite(ratio) & torch.isfinite(direction_norm)
        if finite is not None:
            ok &= finite
        moves = (direction_norm > 0) & ok
        ratio = torch.where(moves, ratio, 0.0)
        return ok, ratio * lr.to(ratio.dtype)

    def moved(self, flat: Tensor, direction: Tensor, scales: Tensor, inplace: bool) -> Tensor:
        """The weights after the grafted step: ``flat + scale · Δ_D`` (native children:
        in ``flat`` itself when ``inplace``) or ``scale · Δ_D + flat`` (black boxes: the
        weights hold Δ_D, scaled, then w added back; ``direction`` is overwritten)."""
        spread = self.layers.spread(scales)
        if not self.children_native:
            return direction.mul_(spread).add_(flat)
        if inplace:
            return flat.addcmul_(direction, spread)
        return torch.addcmul(flat, direction, spread)

    def stepped(self, grads: Tensor, flat: Tensor, step: int, lr: float | Tensor) -> Tensor:
        """The weights after this Graft's ``step()`` as a child, at its ``lr`` (a new
        tensor; its skips counted)."""
        magnitude, direction, m_norm, d_norm = self.propose(
            grads, flat, step, self.magnitude_lr, self.direction_lr
        )
        lr = lr if isinstance(lr, Tensor) else torch.tensor(lr, device=flat.device)
        finite, scales = self.scales(m_norm, d_norm, lr)
        self.skips += ~finite
        return self.moved(flat, direction, scales, inplace=False)

    def delta(self, grads: Tensor, flat: Tensor, step: int, lr: float | Tensor) -> Tensor:
        """The step this Graft takes as a child, read back as ``w' - w``."""
        return self.stepped(grads, flat, step, lr).sub_(flat)


class BatchedTrainer:
    """N runs (plain, or grafts of one pair M#D) that share data set, model and loop
    settings, stepped together."""

    def __init__(
        self,
        configs: Sequence[RunConfig],
        *,
        resume: Sequence[bytes | None] | None = None,
        pause_at: int = 0,
        should_stop: Callable[[list[int]], list[bool]] | None = None,
        record_norms: bool = False,
    ) -> None:
        """``resume``: per member, a ``Trainer`` checkpoint to start from (all at one step)
        or None; ``pause_at``: train to this step only (0 or >= steps: to the end), every
        member then ``stopped`` resumably; ``should_stop(members)``: asked at each flush
        with the members still training (indices into ``configs``), True for each to stop
        now; ``record_norms``: per-layer norms every ``record_every`` steps, as ``Trainer``."""
        check_batchable(configs)
        self.configs = list(configs)
        cfg = self.configs[0]
        self.resume = list(resume) if resume is not None else [None] * len(self.configs)
        if len(self.resume) != len(self.configs):
            raise ValueError(f"resume has {len(self.resume)} entries for {len(configs)} configs")
        self.end = pause_at if 0 < pause_at < cfg.steps else cfg.steps
        self.should_stop = should_stop
        self.record_norms = record_norms
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        self.stop_soon = False  # set (a signal handler, any thread): every member stops soon
        self.start = 0  # the step the members start from (a resume's)
        self.device = pick_device(cfg.device)
        self._precision: Callable[[], Any] = (
            functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext
        )

    def add_callback(self, event: str, callback: Callable) -> None:
        """Call ``callback(trainer, member, **payload)`` on ``event`` (as ``Trainer``'s, with
        the member's index into ``configs``)."""
        if event not in EVENTS:
            raise ValueError(f"Unknown event {event!r} (valid: {EVENTS})")
        self.callbacks[event].append(callback)

    def _fire(self, event: str, member: int, **payload: Any) -> None:
        for callback in self.callbacks[event]:
            callback(self, member, **payload)

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        cfg = self.configs[0]
        seeds = sorted({c.seed for c in self.configs})
        self.datasets: dict[int, Dataset] = {s: load_dataset(cfg.dataset, seed=s) for s in seeds}
        # each member's own Trainer, never trained: its init, its resume, its checkpoints
        self.shells = [Trainer(c, resume=blob) for c, blob in zip(self.configs, self.resume)]
        for shell in self.shells:
            shell._build()
            shell.norm_log.close()
        starts = {shell.step for shell in self.shells}
        if len(starts) > 1:
            raise ValueError(
                f"Cannot batch these runs: their checkpoints are at different steps ({starts})"
            )
        self.start = starts.pop()
        models = [shell.model for shell in self.shells]
        task = self.datasets[seeds[0]].task
        self.task = task
        self.loss_fn = loss_fn(task)
        named = list(models[0].named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        # Graft's layers: a layer with a non-finite gradient (or step) is skipped as a whole
        self.layers = RowLayers(self.names, self.sizes, cfg.granularity, self.device)
        self.layer_count = self.layers.count
        #: the lr Trainer's schedule multiplies, per member: M's (a nested M's own ``lr``)
        self.base_lrs = [shell.scheduler.base_lrs[0] for shell in self.shells]
        # On the CPU a look at a flag costs nothing (no device to wait for): the usual step,
        # every layer finite and moving with graft_lr 1, then skips the masks' passes.
        self.cheap_sync = self.device.type == "cpu"
        self.unit_graft_lr = all(c.graft_lr == 1.0 for c in self.configs)
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture, without weights
        rows = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models]
        self.flat = torch.stack(rows).to(self.device)  # (N, P): each member's weights, a row
        buffers = [{k: b.detach() for k, b in m.named_buffers()} for m in models]
        self.buffers = {k: torch.stack([b[k] for b in buffers]).to(self.device) for k in buffers[0]}
        self.members = list(range(len(self.configs)))  # rows of flat -> index in configs
        self._build_optimizer()
        self._build_eval()
        self._build_schedule()

    def _build_optimizer(self) -> None:
        """M (and D for a graft) as rules (``RowRule``, or ``GraftRule`` for a nested
        Graft), the batch's own ``GraftRule`` for a graft, Graft's ``lr`` and skip counters,
        and, for a resume, each member's state from its checkpoint (loaded by its shell)."""
        cfg = self.configs[0]
        shape, hparams = zip(*(_config_tree(c) for c in self.configs))
        shape = shape[0]
        if cfg.direction:
            # D's lr is not scheduled (Trainer's LambdaLR is on M): ``_train_step`` hands
            # M its scheduled lr
            m = self._rule(shape[0], [h[0] for h in hparams])
            d = self._rule(shape[1], [h[1] for h in hparams])
            self.children = {"magnitude": m, "direction": d}
            lrs = (None, self._lrs(shape[1], [h[1] for h in hparams]))
            self.graft: GraftRule | None = GraftRule(m, d, self.layers, lrs, len(self.configs))
        else:
            self.children = {"magnitude": self._rule(shape, list(hparams))}
            self.graft = None
        self.grafted = self.graft is not None
        self.graft_lr = torch.tensor([c.graft_lr for c in self.configs], device=self.device)
        state = sum(c.state_bytes for c in self.children.values())
        if self.graft is not None and not self.graft.children_native:  # Graft's scratch
            state += self.flat[0].numel() * self.flat.element_size()
        self.state_bytes = float(state)
        #: Graft's ``nonfinite_skips``: per member and layer, the steps it skipped
        self.skips = torch.zeros(len(self.configs), self.layer_count, dtype=torch.int64)
        self.skips = self.skips.to(self.device)
        for row, shell in enumerate(self.shells):
            self.skips[row] = shell.optimizer.nonfinite_skips.to(self.device)
            if self.start:  # resumed: each member's optimizer state from its checkpoint
                params = list(shell.model.parameters())
                for role, child in self.children.items():
                    child.load(row, getattr(shell.optimizer, role), params)

    def _rule(self, shape: Shape, hparams: list[Any]) -> Rule:
        """The rule of one optimizer of the run (``_tree``'s shape and each member's
        hyperparameters): a ``RowRule``, or a ``GraftRule`` for a Graft built from a spec."""
        if isinstance(shape, str):
            return RowRule(shape, hparams, self.flat)
        m_hp, d_hp = [h[0] for h in hparams], [h[1] for h in hparams]
        lrs = (self._lrs(shape[0], m_hp), self._lrs(shape[1], d_hp))
        layers = RowLayers(self.names, self.sizes, NESTED_GRANULARITY, self.device)
        m, d = self._rule(shape[0], m_hp), self._rule(shape[1], d_hp)
        return GraftRule(m, d, layers, lrs, len(hparams))

    def _lrs(self, shape: Shape, hparams: list[Any]) -> Tensor:
        """Each member's constant lr of one optimizer (a Graft's: ``NESTED_LR``),
        ``(N, 1)`` in the weights' dtype (from double, as torch's float lr)."""
        lrs = [h["lr"] if isinstance(shape, str) else NESTED_LR for h in hparams]
        lrs = torch.tensor(lrs, dtype=torch.float64)[:, None]
        return lrs.to(self.flat.dtype).to(self.device)

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
            [lr * lr_factor(s, c.steps, c.schedule, c.warmup_steps) for s in range(c.steps)]
            for c, lr in zip(self.configs, self.base_lrs)
        ]
        self.lrs = torch.tensor(table, dtype=torch.float64).T.to(self.flat.dtype)
        self.lrs = self.lrs.to(self.device)  # (steps, N)

    def _keep(self, rows: list[int]) -> None:
        """Go on with these rows of the batch only (the others diverged)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.members = [self.members[r] for r in rows]
        self.flat = self.flat[index]
        self.buffers = {k: v[index] for k, v in self.buffers.items()}
        for child in [self.graft] if self.graft is not None else self.children.values():
            child.keep(index, rows)  # a graft keeps its children
        self.graft_lr = self.graft_lr[index]
        self.skips = self.skips[index]
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
        """Per member and layer of the run's Graft, the norm of ``flat``'s rows."""
        return self.layers.norms(flat)

    def _spread(self, per_layer: Tensor) -> Tensor:
        """``(N, layers)`` values onto every weight of the layer: ``(N, P)``."""
        return self.layers.spread(per_layer)

    def _train_step(self, step: int) -> Tensor:
        """One step of every member; returns the members' losses ``(N,)``."""
        x, y = self._batch(step)
        flat = self.flat.requires_grad_(True)
        with self._precision():
            losses = vmap(self._loss)(flat, self.buffers, x, y)
        (grads,) = torch.autograd.grad(losses.sum(), flat)
        flat.requires_grad_(False)
        record = self.record_norms and step % self.configs[0].record_every == 0
        with torch.no_grad():
            if self.grafted:
                self._graft_step(grads, step, record)
            elif record:
                self._recorded_step(grads, step)
            else:
                self._optimizer_step(grads, step)
        return losses.detach()

    def _magnitude_delta(self, grads: Tensor, step: int) -> Tensor:
        """M's proposed step, at M's scheduled lr."""
        return self.children["magnitude"].delta(grads, self.flat, step, self.lrs[step][:, None])

    def _recorded_step(self, grads: Tensor, step: int) -> None:
        """``_optimizer_step`` through the masks, keeping what ``Graft`` leaves in
        ``last_norms`` for a plain run (``NORM_FIELDS``): ‖Δ‖ (as M's and as D's), the
        applied step's norm, ‖g‖, ‖w‖ before the step and whether the layer was skipped."""
        grad_norm = self._layer_norms(grads)
        weight_norm = self._layer_norms(self.flat)
        grad_finite = torch.isfinite(grad_norm)
        grads = torch.where(self._spread(grad_finite), grads, 0.0)
        delta = self._magnitude_delta(grads, step)
        proposed = self._layer_norms(delta)
        finite = grad_finite & torch.isfinite(proposed)
        moves = finite & (proposed > 0)
        scales = moves.to(proposed.dtype) * self.graft_lr[:, None].to(proposed.dtype)
        self.flat.addcmul_(delta, self._spread(scales))
        self.skips += ~finite
        skipped = (~finite).to(proposed.dtype)
        record = torch.stack(
            [proposed, proposed, scales.abs() * proposed, grad_norm, weight_norm, skipped], dim=2
        )
        self.norm_records.append((step, record))

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
        delta = self._magnitude_delta(grads, step)
        if fast and self.unit_graft_lr and bool(torch.isfinite(delta.sum())):
            self.flat.add_(delta)  # w + 1·Δ: the same numbers as addcmul_ with scale 1
            return
        step_norm = self._layer_norms(delta)
        finite = torch.isfinite(step_norm)
        if grad_finite is not None:
            finite &= grad_finite
        moves = finite & (step_norm > 0)
        scales = moves.to(step_norm.dtype) * self.graft_lr[:, None].to(step_norm.dtype)
        self.flat.addcmul_(delta, self._spread(scales))
        self.skips += ~finite

    def _graft_step(self, grads: Tensor, step: int, record: bool) -> None:
        """``Graft``'s M#D step on every row (``GraftRule``, the reference backend): both
        children propose a step from the same gradient (zero on a layer whose gradient is
        not finite), and per layer ``w += graft_lr · ‖Δ_M‖ / (‖Δ_D‖ + eps) · Δ_D``; a layer
        whose gradient, ratio or ‖Δ_D‖ is not finite is skipped (counted), one whose Δ_D is
        zero stays. ``record``: keep ``last_norms`` (``NORM_FIELDS``) for the step.

        On the CPU a step whose gradients sum to a finite number (none is NaN or inf) skips
        the gradient's norms and mask (every layer's gradient is finite), unless recorded."""
        graft = self.graft
        assert graft is not None
        fast = self.cheap_sync and not record and bool(torch.isfinite(grads.sum()))
        grad_finite = grad_norm = weight_norm = None
        if not fast:
            grad_norm = self._layer_norms(grads)
            grad_finite = torch.isfinite(grad_norm)
            grads = torch.where(self._spread(grad_finite), grads, 0.0)  # skipped layer: zero
        if record:
            weight_norm = self._layer_norms(self.flat)
        magnitude_lr = self.lrs[step][:, None]  # M's, on the schedule
        _, direction, magnitude_norm, direction_norm = graft.propose(
            grads, self.flat, step, magnitude_lr, graft.direction_lr
        )
        finite, scales = graft.scales(
            magnitude_norm, direction_norm, self.graft_lr[:, None], grad_finite
        )
        self.flat = graft.moved(self.flat, direction, scales, inplace=True)
        self.skips += ~finite
        if record:
            skipped = (~finite).to(scales.dtype)
            fields = [magnitude_norm, direction_norm, scales.abs() * direction_norm]
            fields += [grad_norm, weight_norm, skipped]
            self.norm_records.append((step, torch.stack(fields, dim=2)))

    # -------------------------------------------------------------------- loop
    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Each member's validation loss (and accuracy), summed batch by batch as
        ``Trainer.evaluate`` does: the outputs of one vmapped forward, each member's loss
        reduced on its own (a vmapped loss sums in another order: one ulp off ``Trainer``'s,
        enough to change a comparison's numbers in their last digit)."""
        self.base.eval()
        count = 0
        totals = [0.0] * len(self.members)
        correct = [0] * len(self.members)
        classify = self.task != "regression"
        for x, y in self.eval_batches:
            out = vmap(self._output)(self.flat, self.buffers, x)
            losses = [float(self.loss_fn(o, t)) for o, t in zip(out, y)]  # as Trainer sums
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
        """Train every member to ``steps`` or the pause (or until it diverges or is asked to
        stop); flushes, divergence checks, evaluations, checkpoints and stops come where
        ``Trainer`` has them (a flush every ``log_every`` steps, at most every
        ``flush_seconds``: the batch's fewest)."""
        cfg = self.configs[0]
        self._build()
        self.results = results = [MemberResult(c, "running", self.start) for c in self.configs]
        for m in self.members:
            self._fire("on_start", m, shell=self.shells[m])
        self.norm_records: list[tuple[int, Tensor]] = []
        pending: list[Tensor] = []
        step = self.start
        self.flush_seconds = min(c.flush_seconds for c in self.configs)
        self.flush_started = time.perf_counter()
        while step < self.end and self.members:
            pending.append(self._train_step(step))
            step += 1
            last = step == self.end
            due = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0 and not last
            flushed = (
                last
                or due
                or self.stop_soon
                or len(pending) >= cfg.log_every
                and (
                    time.perf_counter() - self.flush_started >= self.flush_seconds
                    or len(pending) >= NORM_RING // 2 * cfg.record_every
                )
            )
            if flushed:
                self._flush(pending, step, results)
                pending = []
            if self.members and (step % cfg.eval_every == 0 or last):
                for m, metrics in zip(self.members, self.evaluate()):
                    self._rows(m, [(step - 1, k, v) for k, v in metrics.items()], step)
            if due:
                for row, m in enumerate(self.members):
                    self._fire("on_checkpoint", m, blob=self.checkpoint(row, step))
            if flushed and self.members and not last:
                self._stop_asked(step)
            if flushed:
                self.flush_started = time.perf_counter()
        status = "finished" if step >= cfg.steps else "stopped"  # stopped: paused
        for row, m in list(enumerate(self.members)):
            self._close(m, row, status, step)
        return results

    def _stop_asked(self, step: int) -> None:
        """Close the members asked to stop (every one after ``stop_soon``): ``stopped`` at
        ``step`` with a checkpoint, as ``Trainer`` stops; the others go on."""
        if self.stop_soon:
            stops = [True] * len(self.members)
        elif self.should_stop is not None:
            stops = list(self.should_stop(list(self.members)))
        else:
            return
        if not any(stops):
            return
        for row, (m, stop) in enumerate(zip(self.members, stops)):
            if stop:
                self._close(m, row, "stopped", step)
        self._keep([row for row, stop in enumerate(stops) if not stop])

    def _rows(self, m: int, rows: list[Row], step: int) -> None:
        """Metric rows of member ``m``: kept in its result and handed to ``on_metrics``."""
        self.results[m].rows += [r for r in rows if r[1] != "steps_per_second"]
        self._fire("on_metrics", m, rows=rows, step=step)

    def _close(self, m: int, row: int, status: str, step: int, at: int | None = None) -> None:
        """Member ``m`` (row ``row``) ends: ``Trainer``'s last rows, its final checkpoint
        (but for a diverged run) and ``on_end`` with ``at`` (default ``step``)."""
        result = self.results[m]
        result.status, result.step = status, step if at is None else at
        self._rows(m, [(step - 1, "optimizer_state_bytes", self.state_bytes)], step)
        weights = self.flat[row].detach().cpu()
        result.parameters = {k: v.clone() for k, v in self._params(weights).items()}
        if status != "diverged":
            self._fire("on_checkpoint", m, blob=self.checkpoint(row, step))
        self._fire("on_end", m, status=status, step=result.step)

    # -------------------------------------------------------------- checkpoint
    def checkpoint(self, row: int, step: int) -> bytes:
        """Row ``row``'s member after ``step`` steps as ``Trainer.checkpoint`` bytes: its
        shell's model and optimizer state set from the batch, its scheduler advanced."""
        m = self.members[row]
        shell = self.shells[m]
        with torch.no_grad():
            for p, w in zip(shell.model.parameters(), self._params(self.flat[row]).values()):
                p.copy_(w)
            for name, b in shell.model.named_buffers():
                b.copy_(self.buffers[name][row])
            params = list(shell.model.parameters())
            for role, child in self.children.items():
                child.write(row, getattr(shell.optimizer, role), params, self.sizes, step)
            shell.optimizer.nonfinite_skips.copy_(self.skips[row])
        shell.optimizer.graft_step = step
        shell.step = step
        if shell._scheduled:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                while shell.scheduler.last_epoch < step:
                    shell.scheduler.step()
        return shell.checkpoint()

    def _flush(self, pending: list[Tensor], step: int, results: list[MemberResult]) -> None:
        """``Trainer._flush`` for every member: its losses since the last flush, its lr, its
        norms, and whether it diverged (a non-finite loss, or non-finite weights now); a
        member that diverged is finished here and leaves the batch."""
        values = torch.stack(pending).float().cpu().T.tolist()  # (members, steps)
        first = step - len(pending)
        finite = self._weights_finite()
        elapsed = max(time.perf_counter() - self.flush_started, 1e-9)
        norm_steps = [s for s, _ in self.norm_records]
        norms = torch.stack([r for _, r in self.norm_records], 1).cpu() if norm_steps else None
        self.norm_records = []
        keep = []
        for row, (m, losses) in enumerate(zip(self.members, values)):
            bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
            rows = [(first + i, "train_loss", v) for i, v in enumerate(losses[:bad])]
            if bad is None:
                cfg = self.configs[m]
                lr = self.base_lrs[m] * lr_factor(step, cfg.steps, cfg.schedule, cfg.warmup_steps)
                rows.append((step - 1, "steps_per_second", len(losses) / elapsed))
                rows.append((step - 1, "lr", lr))
            self._rows(m, rows, step)
            if norms is not None:
                self._fire("on_norms", m, steps=norm_steps, values=norms[row])
            if bad is not None or not finite[row]:
                self._close(
                    m, row, "diverged", step, at=first + bad if bad is not None else step - 1
                )
            else:
                keep.append(row)
        if len(keep) < len(self.members):
            self._keep(keep)
