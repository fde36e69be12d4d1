"""``Graft``: learning-rate grafting M#D as a drop-in ``torch.optim.Optimizer``.

Read top to bottom: the per-layer norm fields, the class with its set-up (groups, layers,
children), then ``step``: pick a backend, hand it the step's
:class:`~grafting_core.backend.StepContext` and let it run the children (a
:class:`~grafting_core.core.Proposal`), apply :func:`~grafting_core.core.graft_scales`,
record the norms; then the state dict.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from . import fused as fused_kernels
from . import partial, reference, routing, sharded, state_format
from .backend import Plan, StepContext
from .core import Proposal, graft_scales
from .layers import Granularity, Layers
from .native import NativeOptimizer
from .partial import Grafted
from .registry import build_optimizer
from .schedule import MagnitudeSchedule

#: Per-layer quantities ``Graft`` leaves in ``last_norms`` after every step (columns, in order).
NORM_FIELDS = (
    "magnitude_norm",  # ‖Δ_M‖: the step M proposed (or the replayed schedule's value)
    "direction_norm",  # ‖Δ_D‖: the step D proposed (‖Δ_M‖ on a layer that is not grafted)
    "step_norm",  # ‖applied step‖ = lr · ‖Δ_M‖ for a layer that moved
    "grad_norm",  # ‖g‖ before the step (inf/nan when the layer was skipped)
    "weight_norm",  # ‖w‖ before the step
    "skipped",  # 1 where the gradient or a proposed step was non-finite: no step taken
)
_WEIGHT_COLUMN = NORM_FIELDS.index("weight_norm")
PATHS = ("auto", "native", "blackbox")


def _check_nonnegative(name: str, value: Any, where: str = "") -> None:
    """Refuse anything but a finite number >= 0, naming it (as torch.optim's checks do)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid {name}{where}: {value!r} (must be a finite number >= 0)")


class Graft(torch.optim.Optimizer):
    r"""Layer-wise grafting: the step *direction* of ``direction`` with the *size* of ``magnitude``.

    Both child optimizers see the same gradient at the same weights and each proposes a
    step; per layer :math:`l` the applied update is

    .. math::
        w_{t+1,l} = w_{t,l} + \mathrm{lr} \cdot
            \frac{\lVert \Delta_{M,l} \rVert}{\lVert \Delta_{D,l} \rVert + \epsilon}\,\Delta_{D,l}

    (a layer whose direction step is exactly zero does not move). ``Graft(A, A)`` is A.
    With ``grafted=`` only the chosen layers are grafted; the others take M's own step,
    :math:`w_{t+1,l} = w_{t,l} + \mathrm{lr}\,\Delta_{M,l}` (partial grafting).
    Native children (registry specs) are computed without touching the weights; any other
    ``torch.optim.Optimizer`` is driven as a black box: snapshot, step, difference, restore,
    with a single weights-sized scratch buffer. (On the fused CPU backend torch's own SGD,
    Adam, AdamW, Adagrad and RMSprop are stepped on their own state instead, as fast as
    native children and with the state their ``step()`` would leave:
    :mod:`grafting_core.torch_children`.)

    Each step is computed by a backend that runs both children and hands the per-layer norms
    to :func:`~grafting_core.core.graft_scales`, the formula above: by default the fused CPU
    kernels (:mod:`grafting_core.fused`) wherever they support the step, FSDP2 shards
    (:mod:`grafting_core.sharded`), else the reference foreach path
    (:mod:`grafting_core.reference`; GPUs, other rules and dtypes). All give the same result
    to rounding.

    Args:
        params: tensors, ``(name, tensor)`` pairs (``model.named_parameters()``, which gives
            the layers readable names) or param-group dicts. A group's ``lr`` multiplies the
            grafted step of its parameters (default: ``lr`` below); it is never handed to the
            children, whose own learning rates shape their proposals. So a per-layer learning
            rate for D belongs in D's groups, not Graft's: groups from
            :meth:`StaticRatios.param_groups <grafting_core.StaticRatios.param_groups>` are
            refused here (they would apply the learning rate twice). A group's other keys
            go to the children Graft builds from specs: ``weight_decay``, ``betas``, ... to
            each child that takes it, ``magnitude.lr`` or ``direction.momentum`` to one; a key
            no one takes is an error (:mod:`grafting_core.routing`).
        magnitude: spec (``"adam"``, ``("adam", {"lr": 1e-3})``), a ready optimizer over the
            same parameters, or a :class:`MagnitudeSchedule` to replay a recorded schedule.
        direction: spec or ready optimizer over the same parameters, or ``None``: then
            M's own steps are applied unchanged (plain M, with per-layer norm recording).
        granularity: ``"tensor"`` (default, the paper's layer-wise), ``"module"``,
            ``"global"``, or a callable from parameter name to layer key.
        grafted: which layers are grafted (default ``None``: all). Layer kinds, one or a
            collection of ``"embedding"``, ``"head"``, ``"norm"``, ``"bias"``, ``"hidden"``
            (read from names and shapes, see :mod:`grafting_core.layer_kinds`; with the model
            at hand :func:`~grafting_core.select_kinds` reads them from module types), or a
            callable from parameter name to bool. A layer is grafted as a whole (mixing
            within one layer is an error). The other layers take M's step unchanged and D
            never sees them: built from a spec, D is built over the grafted parameters only;
            a ready D may cover all parameters or exactly the grafted ones. Selecting no
            layer is plain M. Not with ``direction=None`` or a replayed schedule (it has no
            step of M to take). The fused kernels take it with native children.
        lr: global multiplier of the grafted step (default: 1.0; the schedule lives in M).
        eps: added to ‖Δ_D‖ in the ratio (default: 1e-16).
        path: ``"auto"`` (native when both children are native), ``"native"`` (error if not
            possible) or ``"blackbox"`` (drive every child through its ``step()``, torch's
            SGD/Adam/AdamW/Adagrad/RMSprop too).
        skip_nonfinite: skip the step of a layer whose gradient has a NaN/inf; its children
            see a zero gradient for it instead (their moments decay, they are never
            poisoned), the gradient is zeroed in place and the skip is counted in
            ``nonfinite_skips`` and ``last_norms`` (default: True).
        fused: ``None`` (default): the fastest correct backend for each step, the fused
            CPU kernels of :mod:`grafting_core.fused` (same result to rounding, a few passes
            over memory instead of ~20) wherever they support it and the step is big enough
            for them to pay (64K numbers with native children, 512K with black-box ones),
            else the reference foreach path (:mod:`grafting_core.reference`; CUDA, bf16,
            a centred RMSprop, small models...). ``True``: the kernels at every size where they can,
            with one ``RuntimeWarning`` the first time they cannot take a step (no C
            compiler, an unsupported rule or dtype). ``False``: always the reference path.
        names: a model whose ``named_parameters()`` name plain tensors by identity, for
            groups built from tensors (HF ``Trainer``, factories): readable layers,
            ``granularity="module"`` and layer kinds then work.

    Example:
        >>> import torch
        >>> from grafting_core import Graft
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Graft(model.named_parameters(), ("adam", {"lr": 1e-3}), ("sgd", {"lr": 0.1}))
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()

        Adam#SGD on the hidden matrices only, Adam's own step on embeddings, head, norms
        and biases (Zhao et al. 2024, arXiv 2407.07972):

        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 2))
        >>> opt = Graft(model.named_parameters(), ("adam", {"lr": 3e-3}), ("sgd", {"lr": 0.1}),
        ...             grafted="hidden")  # or grafted=select_kinds(model, "hidden")
        >>> opt.grafted_layers  # per layer of opt.layers.names: 0.weight, 0.bias, 2.weight, ...
        (True, False, False, False)

    References:
        Agarwal, Anil, Hazan, Koren, Zhang. "Disentangling Adaptive Gradient Methods from
        Learning Rates" / "Learning Rate Grafting: Transferability of Optimizer Tuning",
        https://arxiv.org/abs/2002.11803 (2020).

    Distributed training (``torch.distributed``; see ``examples/ddp_fsdp_graft.py``):

    - **DDP** (``DistributedDataParallel``): gradients arrive averaged and parameters are
      replicated, so every rank takes the identical grafted step with no communication of
      its own, for every kind of child, path and granularity.
    - **FSDP2** (``fully_shard``: parameters and gradients are ``DTensor`` shards; build
      Graft *after* sharding, over ``model.named_parameters()``): the norms are those of the
      *whole* layer. Each rank computes ‖g‖, ‖w‖, ‖Δ_M‖, ‖Δ_D‖ of its shards
      and a single ``all_reduce`` per step sums their squares for all layers together
      (:mod:`grafting_core.sharded`); HSDP meshes sum over the shard dimension only. Native
      rules run on the local shards. Black-box children step the DTensors themselves: torch's
      element-wise optimizers (SGD, Adam, AdamW, Adagrad, RMSprop, NAdam, RAdam, Adamax,
      Adadelta, ASGD), or any class or instance that sets ``supports_dtensor = True``.
      Replayed schedules, every granularity and partial grafting work. Refused at
      construction, with the reason: native LARS/LAMB (their trust ratios would be shard
      norms), Muon, Adafactor, Rprop and unknown optimizers without ``supports_dtensor``,
      plain tensors mixed with DTensors. The fused CPU kernels are not used. A NaN/inf
      gradient on any shard skips that layer on every rank (see the warning in
      :mod:`grafting_core.sharded`).
    - Recording: after the reduction ``last_norms`` holds whole-layer norms, identical on
      every rank, so a :class:`~grafting_core.NormLog` on rank 0 records the run.
    """

    def __init__(
        self,
        params: Iterable[Any],
        magnitude: Any,
        direction: Any,
        *,
        granularity: Granularity = "tensor",
        grafted: Grafted = None,
        lr: float = 1.0,
        eps: float = 1e-16,
        path: str = "auto",
        skip_nonfinite: bool = True,
        fused: bool | None = None,
        names: torch.nn.Module | None = None,
    ) -> None:
        _check_nonnegative("lr", lr)
        _check_nonnegative("eps", eps)
        if path not in PATHS:
            raise ValueError(f"Invalid path: {path!r} (valid: {PATHS})")
        if fused not in (None, True, False):
            raise ValueError(f"Invalid fused: {fused!r} (valid: None, True, False)")
        if isinstance(direction, MagnitudeSchedule):
            raise TypeError("A MagnitudeSchedule can only be the magnitude, not the direction")
        self._ready = False
        self._routes: list[dict[str, dict[str, Any]]] = []  # per group: keys for each child
        self._child_keys = {
            "magnitude": routing.accepted_keys(magnitude),
            "direction": routing.accepted_keys(direction),
        }
        if names is not None:
            params = routing.named(params, names)
        super().__init__(params, {"lr": lr})
        for group in self.param_groups:  # refused here, not at the first step
            for param in group["params"]:
                if torch.is_complex(param):
                    raise ValueError(
                        f"Graft does not support complex parameters (got {param.dtype} of "
                        f"shape {tuple(param.shape)}): optimize torch.view_as_real of it, or "
                        "leave it to a plain optimizer"
                    )
        self.eps = float(eps)
        self.path = path
        self.skip_nonfinite = skip_nonfinite
        self.fused = fused
        self._fused_warned = False  # fused=True that cannot be honoured warns once
        self._backend_memo: dict[str, Any] = {}  # the backends' cache (StepContext.memo)
        self.granularity = granularity
        self.grafted = grafted
        if direction is None and isinstance(magnitude, MagnitudeSchedule):
            raise ValueError("A replayed schedule needs a direction optimizer (direction=None)")
        if direction is None and grafted is not None:
            raise ValueError(
                f"Invalid grafted: {grafted!r} with direction=None (plain M has "
                "nothing to graft); give a direction or leave grafted=None"
            )
        self._reset_layers()
        if isinstance(magnitude, MagnitudeSchedule) and self.partial:
            raise ValueError(
                "Invalid grafted: a replayed MagnitudeSchedule has no step of M "
                "for the layers that are not grafted; graft every layer "
                "(grafted=None) or record a run of M and replay it whole"
            )
        self.magnitude = self._child(magnitude, "magnitude")
        self.direction = (
            None if direction is None else self._child(direction, "direction", grafted=True)
        )
        self.native = self._is_native(self.magnitude) and (
            direction is None or self._is_native(self.direction)
        )
        if path == "native" and not self.native:
            raise ValueError(
                "path='native' needs native children (registry specs); got "
                f"{type(self.magnitude).__name__}, {type(self.direction).__name__}"
            )
        self._ready = True
        self._check_children()
        self.graft_step = 0

    @classmethod
    def factory(cls, magnitude: Any, direction: Any, **options: Any) -> type[Graft]:
        """A Graft class to hand to code that builds optimizers itself, calling
        ``cls(params, lr=..., weight_decay=..., betas=..., **hparams)`` (HF ``Trainer``'s
        ``optimizer_cls_and_kwargs``, timm-style factories, training scripts).

        ``lr`` (the keyword or a group's) becomes M's learning rate, so a scheduler belongs
        on ``graft.magnitude``; every other keyword reaches each child that takes it (as a
        group key would, :mod:`grafting_core.routing`). ``options`` are Graft's own
        (``names=model``, ``granularity=``, ``grafted=``, ...).

        Example:
            >>> import torch
            >>> from grafting_core import Graft
            >>> model = torch.nn.Linear(4, 2)
            >>> AdamWSGD = Graft.factory("adamw", ("sgd", {"momentum": 0.9}), names=model)
            >>> opt = AdamWSGD(model.parameters(), lr=3e-4, weight_decay=0.1)
            >>> opt.magnitude.param_groups[0]["lr"], opt.direction.param_groups[0]["weight_decay"]
            (0.0003, 0.1)
        """
        return routing.factory_class(cls, magnitude, direction, options)

    # ----------------------------------------------------------------- set-up
    def named_params(self) -> list[tuple[str, Tensor]]:
        """``(name, parameter)`` in group order; unnamed parameters are ``param<i>``."""
        named, position = [], 0
        for group in self.param_groups:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                named.append((names[i] if names else f"param{position}", p))
                position += 1
        return named

    @property
    def partial(self) -> bool:
        """Whether some layer is not grafted (takes M's own step)."""
        return not all(self.grafted_layers)

    def __repr__(self) -> str:
        """``Graft(M=adam(lr=0.001, ...), D=sgd(lr=0.1, momentum=0.9, ...), granularity=
        'tensor', grafted=all 4 layers, lr=1.0)``: what is grafted, not torch's group dump."""

        def child(opt: Any) -> str:
            if opt is None:
                return "None (plain M)"
            if isinstance(opt, MagnitudeSchedule):
                return f"replayed {type(opt).__name__}"
            name = getattr(getattr(opt, "rule", None), "name", None) or type(opt).__name__
            group = opt.param_groups[0] if opt.param_groups else {}
            hp = ", ".join(
                f"{k}={v!r}" for k, v in group.items() if k not in ("params", "param_names")
            )
            return f"{name}({hp})"

        n, chosen = len(self.grafted_layers), sum(self.grafted_layers)
        which = f"all {n} layers" if not self.partial else f"{chosen} of {n} layers"
        if self.grafted is not None and not callable(self.grafted):
            which += f" ({self.grafted!r})"
        lrs = sorted({g["lr"] for g in self.param_groups}, key=float)
        return (
            f"Graft(M={child(self.magnitude)}, D={child(self.direction)}, "
            f"granularity={self.granularity!r}, grafted={which}, "
            f"lr={lrs[0] if len(lrs) == 1 else lrs})"
        )

    def _child(self, child: Any, role: str, grafted: bool = False) -> Any:
        """The child optimizer; ``grafted``: over the grafted parameters only (D from a spec)."""
        if isinstance(child, MagnitudeSchedule):
            return child
        if isinstance(child, torch.optim.Optimizer):
            self._check_coverage(child, grafted)
            return child
        return build_optimizer(
            child, [self._child_group(i, role, grafted) for i in range(len(self.param_groups))]
        )

    def _check_coverage(self, child: torch.optim.Optimizer, grafted: bool) -> None:
        """A ready child must cover Graft's parameters (D: all of them or the grafted ones)."""
        theirs = {id(p) for g in child.param_groups for p in g["params"]}
        ours = {id(p) for g in self.param_groups for p in g["params"]}
        chosen = {id(p) for g in self.param_groups for p in g["params"] if self._is_grafted(p)}
        if theirs == ours or (grafted and theirs == chosen):
            return
        wanted = "Graft's or its grafted ones" if grafted and self.partial else "Graft's"
        raise ValueError(
            f"{type(child).__name__} was built over other parameters than "
            f"{wanted}: {len(theirs - ours)} extra, {len(ours - theirs)} missing"
        )

    def _is_grafted(self, param: Tensor) -> bool:
        return self._param_grafted[self._position[id(param)]]

    def _child_group(self, index: int, role: str, grafted: bool = False) -> dict[str, Any]:
        """``role``'s group over group ``index``'s parameters (``grafted``: only the grafted
        ones), with the hyperparameters that group routed to it (:mod:`.routing`)."""
        group = self.param_groups[index]
        names = group.get("param_names") or [None] * len(group["params"])
        kept = [
            (n, p) for n, p in zip(names, group["params"]) if not grafted or self._is_grafted(p)
        ]
        return {
            "params": [p if n is None else (n, p) for n, p in kept],
            **self._routes[index][role],
        }

    def _is_native(self, child: Any) -> bool:
        return self.path != "blackbox" and isinstance(child, NativeOptimizer | MagnitudeSchedule)

    def _reset_layers(self) -> None:
        """Layers, grafted flags and per-layer buffers for the current parameters."""
        named = self.named_params()
        has_names = all(g.get("param_names") is not None for g in self.param_groups)
        if self.granularity == "module" and not has_names:
            raise ValueError(
                "granularity='module' needs parameter names: pass "
                "model.named_parameters() instead of model.parameters()"
            )
        self.layers = Layers.build([n for n, _ in named], self.granularity)
        self._position = {id(p): i for i, (_, p) in enumerate(named)}
        self._param_grafted = partial.grafted_params(self.grafted, named, has_names=has_names)
        #: Per layer of ``layers.names``: grafted (M#D) or not (M's own step).
        self.grafted_layers = partial.grafted_layers(self._param_grafted, self.layers)
        self._plan: Plan | None = None
        self._scratch: dict[int, Tensor] = {}
        device = named[0][1].device if named else torch.device("cpu")
        self._layer_grafted = torch.tensor(self.grafted_layers, dtype=torch.bool, device=device)
        self._nothing_grafted = torch.zeros_like(self._layer_grafted)  # plain M: M's own step
        self.last_norms = torch.full((len(self.layers), len(NORM_FIELDS)), math.nan, device=device)
        self.nonfinite_skips = torch.zeros(len(self.layers), dtype=torch.int64, device=device)

    def _check_children(self) -> None:
        """Checks that need the children: schedule layers, DTensor support."""
        # None unless the parameters are DTensors
        self._sharding = sharded.detect(self.named_params(), self.magnitude, self.direction)
        if isinstance(self.magnitude, MagnitudeSchedule):
            self.magnitude.check_layers(
                self.layers.names, {n: list(p.shape) for n, p in self.named_params()}
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to Graft and to both children (built from specs or not).

        D gets the group's grafted parameters only, unless it already covers ungrafted ones.
        """
        if "static_ratio" in param_group:
            raise ValueError(
                "These are StaticRatios.param_groups: their lr (base lr · c) is the plain "
                "optimizer's own learning rate, and a Graft group's lr would multiply the step "
                "that optimizer already took with it (lr² · c). Build the optimizer over them "
                "(e.g. torch.optim.SGD(groups) or build_optimizer(spec, groups)) and pass it "
                "to Graft as the magnitude, over model.named_parameters()"
            )
        if "lr" in param_group:  # Graft's own multiplier; the children check their keys
            _check_nonnegative("lr", param_group["lr"], where=" of a param group")
        param_group = dict(param_group)
        routed = routing.route(param_group, self.defaults, self._child_keys)
        if not self._ready:
            self._add_unique_group(param_group)
            self._routes.append(routed)
            return
        before = self._param_grafted
        direction_all = isinstance(self.direction, torch.optim.Optimizer) and sum(
            len(g["params"]) for g in self.direction.param_groups
        ) > sum(before)
        self._add_unique_group(param_group)
        self._reset_layers()
        if self._param_grafted[: len(before)] != before:  # e.g. a new last matrix: a new head
            self.param_groups.pop()
            self._reset_layers()
            raise ValueError(
                "Invalid grafted: adding this group changes which existing "
                "parameters are grafted; pass grafted= as a predicate on names"
            )
        self._routes.append(routed)
        for role in ("magnitude", "direction"):
            child = getattr(self, role)
            if isinstance(child, torch.optim.Optimizer):
                grafted = child is self.direction and not direction_all
                child.add_param_group(self._child_group(len(self.param_groups) - 1, role, grafted))
        self._check_children()

    def _add_unique_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, refusing a tensor listed twice in the group (torch only
        warns, and the children would step it twice)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*duplicate parameters.*")
            super().add_param_group(param_group)
        group, seen = self.param_groups[-1], set()
        for i, p in enumerate(group["params"]):
            if id(p) in seen:
                self.param_groups.pop()
                name = group["param_names"][i] if group.get("param_names") else f"#{i}"
                raise ValueError(
                    f"Invalid params: parameter {name} of a group appears in it "
                    "more than once (it would be stepped twice)"
                )
            seen.add(id(p))

    # ------------------------------------------------------------------- step
    # torch.compile of a training step runs this eagerly (a graph break): the children's
    # Python-int step counts would otherwise recompile it on every step (BENCHMARKS.md).
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure=None):
        """One grafted step on the current gradients; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._with_grads()
        if not params:
            return loss
        for p in params:
            if p.grad.is_sparse:
                name = self.layers.param_names[self._position[id(p)]]
                raise RuntimeError(
                    f"Graft does not support sparse gradients (parameter {name!r}); "
                    "use a dense embedding (sparse=False)"
                )
        plan = self._plan_for(params)
        context = self._context(plan)
        proposal = self._backend(plan, context).propose(context)  # both children, layer norms
        grafted = self._layer_grafted if self.direction is not None else self._nothing_grafted
        finite, scales = graft_scales(
            proposal.magnitude_norm,
            proposal.direction_norm,
            torch.isfinite(proposal.grad_norm),
            layer_of=plan.index,
            lr=self._lr_of(plan),
            grafted=grafted,
            eps=self.eps,
            skip_nonfinite=self.skip_nonfinite,
        )
        record = self._record(plan, finite, scales, proposal)
        record(proposal.apply(scales))
        self.graft_step += 1
        self._mark_stepped(self.magnitude)
        self._mark_stepped(self.direction)
        return loss

    def _with_grads(self) -> list[Tensor]:
        """The parameters a step moves: those with a gradient, in group order."""
        return [
            p
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None and p.requires_grad
        ]

    def step_context(self, params: list[Tensor] | None = None) -> StepContext:
        """What a backend is handed for a step over ``params`` (default: the parameters
        that have a gradient now), for asking a backend about a step as tests and benchmarks
        do (:func:`grafting_core.fused.unsupported`); nothing is stepped."""
        params = self._with_grads() if params is None else list(params)
        if not params:
            raise ValueError("No parameter to step: none has a gradient")
        return self._context(self._plan_for(params))

    def _context(self, plan: Plan) -> StepContext:
        """The backends' view of this step (:mod:`grafting_core.backend`)."""
        return StepContext(
            plan=plan,
            magnitude=self.magnitude,
            direction=self.direction,
            native=self.native,
            path=self.path,
            partial=self.partial,
            skip_nonfinite=self.skip_nonfinite,
            graft_step=self.graft_step,
            sharding=self._sharding,
            scratch_for=self._scratch_for,
            memo=self._backend_memo,
        )

    def _plan_for(self, params: list[Tensor]) -> Plan:
        key = tuple(self._position[id(p)] for p in params)
        if self._plan is None or self._plan.key != key:
            layer_of = [self.layers.index[i] for i in key]
            device = params[0].device
            active = torch.zeros(len(self.layers), dtype=torch.bool)
            active[layer_of] = True
            identity = layer_of == list(range(len(self.layers)))
            grafted = tuple(self._param_grafted[i] for i in key)
            self._plan = Plan(
                key,
                params,
                torch.tensor(layer_of, device=device),
                identity,
                active.to(device),
                grafted,
                not all(grafted),
                sum(p.numel() for p in params),
            )
        return self._plan

    def _backend(self, plan: Plan, context: StepContext | None = None) -> Any:
        """The backend for this step (a module with ``propose(context)``): FSDP2 shards,
        else the fused CPU kernels where they can take it (``fused`` not False; by default
        only where they pay), else the reference. ``context``: the step's (built if not
        given, for callers that ask with a plan alone)."""
        context = self._context(plan) if context is None else context
        if context.sharding is not None:
            backend, why_not = sharded, "the parameters are DTensor (FSDP2) shards"
        elif self.fused is False or (self.fused is None and not fused_kernels.pays(context)):
            return reference
        else:
            why_not = fused_kernels.refusal(context)
            backend = reference if why_not else fused_kernels
        # getattr: a Graft pickled before this flag existed has none (__setstate__ untouched)
        if self.fused and why_not and not getattr(self, "_fused_warned", False):
            self._fused_warned = True  # stacklevel 6: step()'s caller, past torch's wrappers
            warnings.warn(
                f"Graft(fused=True): the fused CPU kernels cannot take this step "
                f"({why_not}); it takes the {backend.__name__.rpartition('.')[2]} "
                "path instead (same result, slower). This warning is shown once.",
                RuntimeWarning,
                stacklevel=6,
            )
        return backend

    def _lr_of(self, plan: Plan) -> float | Tensor:
        """Graft's group lr: one number, or one per stepped parameter when groups differ,
        filled in on the parameters' device group by group (no copy from the host, which
        waits on a GPU), at least in float32 and in float64 for float64 parameters."""
        lrs = [g["lr"] for g in self.param_groups]
        if all(lr == lrs[0] for lr in lrs):
            return lrs[0]
        group_of = [k for k, g in enumerate(self.param_groups) for _ in g["params"]]
        like = plan.params[0]
        dtype = torch.promote_types(like.dtype, torch.float32)
        runs = itertools.groupby(group_of[i] for i in plan.key)  # stepped params, in order
        return torch.cat(
            [
                torch.full((len(list(run)),), float(lrs[k]), dtype=dtype, device=like.device)
                for k, run in runs
            ]
        )

    def _record(
        self, plan: Plan, finite: Tensor, scales: Tensor, proposal: Proposal
    ) -> Callable[[Tensor], None]:
        """Count ``nonfinite_skips`` and put together ``last_norms`` (see NORM_FIELDS) but for
        ‖w‖, which the returned function fills in from the apply pass. The small ops run
        before that pass: after a pass over every weight each one costs several times more
        (cold caches, BENCHMARKS.md)."""
        step_norm = plan.reduce(scales.abs() * proposal.direction_per_tensor)
        skipped = ~finite
        self.nonfinite_skips += skipped if plan.is_identity else skipped & plan.active_layers
        skipped = skipped.to(step_norm.dtype)
        norms = torch.stack(
            [
                proposal.magnitude_norm,
                proposal.direction_norm,
                step_norm,
                proposal.grad_norm,
                skipped,  # ‖w‖'s column, filled in by finish()
                skipped,
            ],
            dim=1,
        )
        if not plan.is_identity:  # every layer is active otherwise
            norms.masked_fill_(~plan.active_layers[:, None], math.nan)

        def finish(weight_norm: Tensor) -> None:
            if not plan.is_identity:
                weight_norm = weight_norm.masked_fill(~plan.active_layers, math.nan)
            norms[:, _WEIGHT_COLUMN] = weight_norm
            self.last_norms = norms

        return finish

    @staticmethod
    def _mark_stepped(child: Any) -> None:
        # LR schedulers warn unless the optimizer they wrap was stepped; Graft steps it.
        if isinstance(child, torch.optim.Optimizer):
            child._opt_called = True

    # ------------------------------------------ kept for the backends (StepContext)
    def _scratch_for(self, params: list[Tensor], like: list[Tensor] | None = None) -> list[Tensor]:
        """The black-box path's one weights-sized scratch buffer per parameter, shaped like
        ``like`` (default: the parameters; FSDP2: their local shards)."""
        scratch = []
        for p, shape in zip(params, params if like is None else like):
            buf = self._scratch.get(id(p))
            if buf is None:
                buf = self._scratch[id(p)] = torch.empty_like(shape)
            scratch.append(buf)
        return scratch

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> state_format.GraftState:
        """Per parameter: the children's state under ``magnitude.``/``direction.`` keys and
        Graft's own ``graft.`` entries, a live view (:mod:`grafting_core.state_format`)."""
        return state_format.GraftState(self)

    @state.setter
    def state(self, value: Any) -> None:
        state_format.assign(self, value)

    def state_dict(self) -> dict[str, Any]:
        """The standard ``{state, param_groups}``: the children's per-parameter state under
        prefixed keys, keyed by Graft's parameter indices (what DCP and FSDP2 keep)."""
        return state_format.standard(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore Graft and both children (today's format or the nested one saved before)."""
        own, children, extras = state_format.split(self, state_dict)
        super().load_state_dict(own)
        for role, child_state in children.items():
            getattr(self, role).load_state_dict(child_state)
        state_format.restore_own(self, extras)

    #: What is keyed by tensors' identities (rebuilt when a copy is loaded).
    _BY_IDENTITY = ("_position", "_plan", "_scratch", "_backend_memo")

    def __getstate__(self) -> dict[str, Any]:
        """All of Graft for ``pickle`` and ``copy.deepcopy`` (torch's optimizers keep
        ``defaults``, ``state`` and ``param_groups`` only), less what is keyed by identity."""
        return {k: v for k, v in self.__dict__.items() if k not in self._BY_IDENTITY}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.pop("state", None)  # a copy of the view: the property reads the children
        self.__dict__.setdefault("skip_nonfinite", True)
        self.__dict__.setdefault("fused", False)
        self.__dict__.setdefault("_sharding", None)
        if "layers" not in self.__dict__:
            raise ValueError(
                "This Graft was pickled by a version that kept only defaults, state and "
                "param_groups, and cannot be restored; save and load its state_dict() instead"
            )
        self._position = {id(p): i for i, (_, p) in enumerate(self.named_params())}
        self._plan, self._scratch, self._backend_memo = None, {}, {}
