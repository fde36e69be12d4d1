"""Fused CPU kernels, a backend of ``Graft.step``: the reference semantics in fewer passes.

``Graft`` takes this backend by default (``fused=None``) for every step :func:`refusal`
has no objection to and that is big enough for it to pay (:func:`pays`), and the reference
foreach backend (:mod:`grafting_core.reference`) otherwise; both give the same result to
float rounding (``tests/test_fused.py``). Like every backend it only runs the children and
returns a :class:`~grafting_core.core.Proposal`: the grafting formula itself is
:func:`grafting_core.core.graft_scales`. The kernels are the C file beside this one,
compiled with the system C compiler on first use (about 5 s of CPU) and cached in
``~/.cache/grafting_core`` (or ``$GRAFTING_FUSED_CACHE``); without a compiler every step
takes the reference path.

Used when: every stepped parameter and gradient is a dense, contiguous float32 or float64
CPU tensor of one dtype, ``direction`` is not ``None``, and either both children are
native rules with kernels (:data:`KERNEL_RULES`: SGD/Nesterov, Adam/AdamW, AdaGrad, RMSprop
not centred, signSGD/Signum, Lion, LARS, LAMB; partial grafting too, unless Lion is the
magnitude) or every layer is grafted and the step is black-box (any optimizers, a replayed
schedule as magnitude included). Black-box children that are torch's own SGD, Adam, AdamW,
Adagrad or RMSprop (each, or one of them with a native rule) are run like native ones, on
their own state and groups (:mod:`grafting_core.torch_children` says when that is exact);
:func:`runs_children` tells which way a step goes. A native replayed schedule, a centred
RMSprop and partial grafting with black-box children take the reference path, and so do
DTensor (FSDP2) shards, through ``grafting_core.sharded``.
Each kernel rule is checked against its definition in :mod:`grafting_core.rules` for every
one of its hyperparameters (``tests/test_fused.py``).

Native step, two passes instead of ~20: (1) layer by layer (a segment of whole layers at a
time), ‖g‖² of the layer's gradients, then, with the gradients still in the core's cache,
the gradients of a non-finite layer are zeroed and both rules advance their states and sum
‖Δ_M‖², ‖Δ_D‖² without storing either step (one pass for pairs of SGD, Adam, LARS, LAMB;
for the other rules M's pass is the guarded one and D's follows); (2) w += scale · Δ_D,
recomputing Δ_D from D's updated state (Lion as D: from its old state, which advances
here), and ‖w‖ (the weights before the step) on the way. Partial grafting: M's pass over
every tensor, D's over the grafted ones, and two apply passes (D's step on the grafted
tensors, M's own on the others).
LARS and LAMB are SGD-momentum's and Adam's kernels with a per-tensor trust ratio τ
(:func:`grafting_core.rules.trust_ratios`) taken between passes, in torch on per-tensor
norms: a read-only pass first sums ‖w‖² (and, for LARS, ‖g‖²) per tensor. LARS's τ, from
‖w‖ and ‖g‖ (‖g‖ taken as 0 in a layer skipped as non-finite), joins its coefficients
(buf = m·buf + lr·τ·g'); LAMB's kernels step its unscaled u = m̂/(√v̂+eps) + wd·w, its
τ = ‖w‖/‖u‖ comes from the propose pass's sums, and lr·τ scales ‖u‖ and the apply pass's
per-tensor scale.
Black-box step: ‖g‖ while copying w to the scratch with ‖w‖; M.step(); ‖w − scratch‖
while restoring w; D.step(); ‖w − scratch‖; blend.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import rules, torch_children
from .backend import Plan, StepContext
from .core import Proposal
from .native import NativeOptimizer
from .schedule import MagnitudeSchedule

# The passes, guard modes and rule kinds, numbered as the enums of fused_kernels.c number
# them (tests/test_fused_codes.py reads both sources and compares).
(
    SUMSQ_COPY,
    DIFF_SUMSQ_RESTORE,
    DIFF_SUMSQ,
    BLEND,
    PROPOSE,
    APPLY,
    ZERO_IF,
    PROPOSE_M,
    PROPOSE_D,
    SUMSQ,
) = range(10)
UNGUARDED, GRAD_SUMS, SKIP_NONFINITE = range(3)  # how PROPOSE(_M) treats g (Task.guard)
# Rule kinds the kernels know (fused_kernels.c), and the state buffers in their two slots.
(PLAIN, MOMENTUM, ADAM, ADAGRAD, RMSPROP, RMSPROP_MOMENTUM, SIGN, SIGN_MOMENTUM, LION) = range(9)
SLOTS = {
    PLAIN: (None, None),
    MOMENTUM: ("momentum_buffer", None),
    ADAM: ("exp_avg", "exp_avg_sq"),
    ADAGRAD: ("sum", None),
    RMSPROP: ("square_avg", None),
    RMSPROP_MOMENTUM: ("square_avg", "momentum_buffer"),
    SIGN: (None, None),
    SIGN_MOMENTUM: ("momentum_buffer", None),
    LION: ("exp_avg", None),
}
PAIR_KINDS = (PLAIN, MOMENTUM, ADAM)  # both children in one pass; other pairs: one each
APPLY_READS_G = (PLAIN, ADAGRAD, RMSPROP, SIGN, LION)  # D's step needs g again (and Nesterov)
IN_APPLY_KINDS = (LION,)  # the apply pass advances the state (IN_APPLY in the C file)
#: Elements a step needs before the kernels beat the reference path when Graft chooses by
#: itself (below, a kernel pass's fixed cost outweighs the foreach ops it replaces; measured
#: on a 2-core Xeon, 1 thread, BENCHMARKS.md): native children, black-box children.
MIN_ELEMENTS_NATIVE, MIN_ELEMENTS_BLACK_BOX = 1 << 16, 1 << 19
#: Native rules with kernels: all of rules.RULES.
KERNEL_RULES = ("sgd", "adam", "adamw", "adagrad", "rmsprop", "sign_sgd", "lion", "lars", "lamb")
#: Rules whose step is rescaled per tensor by a trust ratio (rules.py), computed between passes.
TRUST_RULES = ("lars", "lamb")
NCOEF = 10  # coefficients per tensor and rule, see _row
WD, TAKE_G, TRUST = 1, 5, 9  # columns of a row: decay, SGD's take_g, the trust ratio's input
CHUNK = 16384  # elements per work item (64 KiB of float32)
_SOURCE = Path(__file__).with_name("fused_kernels.c")
_FLAGS = [
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-shared",
    "-fPIC",
    f"-DCHUNK={CHUNK}",
]
_THREADING = ["-fopenmp", "-fopenmp-simd"]  # the first that builds and loads is used
_WRAPPER = "".join(
    f'#define REAL {real}\n#define SUFFIX _{tag}\n#define SQRT {sqrt}\n#include "{_SOURCE}"\n'
    "#undef REAL\n#undef SUFFIX\n#undef SQRT\n"
    for real, tag, sqrt in (("float", "f32", "sqrtf"), ("double", "f64", "sqrt"))
)
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


class _Task(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_int),
        ("kind_m", ctypes.c_int),
        ("kind_d", ctypes.c_int),
        ("use_w", ctypes.c_int),
        ("guard", ctypes.c_int),
        ("n", ctypes.c_int64),
        ("numel", ctypes.c_void_p),
        ("first", ctypes.c_void_p),
        ("ptr", ctypes.c_void_p * 6),
        ("coef_m", ctypes.c_void_p),
        ("coef_d", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("segments", ctypes.c_int64),
        ("segment", ctypes.c_void_p),
        ("layer", ctypes.c_void_p),
        ("norms", ctypes.c_void_p),
        ("partial", ctypes.c_void_p),  # the kernels' own
        ("grad_sums", ctypes.c_void_p),
    ]


_library: ctypes.CDLL | None = None
unavailable_reason: str | None = None  # why the kernels could not be built, once tried


def _cpu() -> str:
    """This CPU's model and features (a cache shared by machines keeps one build per CPU)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(
            next((x for x in info if x.startswith(k)), "") for k in ("model name", "flags")
        )
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _build() -> ctypes.CDLL | None:
    """Compile (or reuse) the kernels; ``None`` with :data:`unavailable_reason` on failure."""
    global _library, unavailable_reason
    if _library is not None or unavailable_reason is not None:
        return _library
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    errors = []
    for parallel in _THREADING:  # torch's OpenMP team, else one thread (no libgomp here)
        try:
            library = ctypes.CDLL(str(_compiled(compiler, [*_FLAGS, parallel])))
        except (OSError, subprocess.SubprocessError) as error:
            errors.append(f"{error} {getattr(error, 'stderr', '') or ''}".strip())
            continue
        for tag in _DTYPES.values():
            getattr(library, f"graft_pass_{tag}").argtypes = [ctypes.POINTER(_Task), ctypes.c_int]
        _library = library
        return _library
    unavailable_reason = "; ".join(errors)
    return None


def _compiled(compiler: str | None, flags: list[str]) -> Path:
    """The kernels built with ``flags`` (cached by source, flags, compiler and CPU)."""
    if compiler is None:
        raise OSError("no C compiler (cc/gcc) on PATH")
    key = [_SOURCE.read_text(), *flags, compiler, _cpu()]  # -march=native: this CPU's
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GRAFTING_FUSED_CACHE", Path.home() / ".cache" / "grafting_core"))
    target = cache / f"fused_{digest}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            wrapper = Path(tmp) / "fused.c"
            wrapper.write_text(_WRAPPER)
            built = Path(tmp) / target.name
            subprocess.run(
                [compiler, *flags, "-o", str(built), str(wrapper)],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
            os.replace(built, target)  # atomic: concurrent builders never see half a file
    return target


def available() -> bool:
    """Whether the fused kernels are built (building them on first call)."""
    return _build() is not None


def _dense(tensors: list[Tensor], dtype: torch.dtype) -> bool:
    return all(
        t.dtype is dtype and t.is_cpu and t.layout is torch.strided and t.is_contiguous()
        for t in tensors
    )


#: The kernel kind of each rule whose kind does not depend on its flags (LARS: SGD-momentum's
#: kind even at momentum 0, its buffer kept as rules.py keeps it; LAMB: Adam's).
_FIXED_KINDS = {
    "adam": ADAM,
    "adamw": ADAM,
    "adagrad": ADAGRAD,
    "lion": LION,
    "lars": MOMENTUM,
    "lamb": ADAM,
}


def _kind(name: str, hp: dict[str, Any]) -> int | None:
    """The kernel kind of rule ``name`` with hyperparameters ``hp`` (None: no kernel)."""
    if name == "sgd":
        return MOMENTUM if hp["momentum"] != 0 else PLAIN
    if name == "rmsprop":
        return None if hp["centered"] else RMSPROP_MOMENTUM if hp["momentum"] > 0 else RMSPROP
    if name == "sign_sgd":
        return SIGN_MOMENTUM if hp["momentum"] != 0 else SIGN
    return _FIXED_KINDS.get(name)


def _rule_name(child: Any, group: dict[str, Any]) -> str | None:
    """The rule a child applies to ``group``: a native rule's, or that of one of torch's
    optimizers (:mod:`grafting_core.torch_children`); None for any other optimizer."""
    if isinstance(child, NativeOptimizer):
        return child.rule.name
    return torch_children.rule_name(child, group) if type(child) in torch_children.CLASSES else None


def _rule_kind(child: Any, params: list[Tensor]) -> int | None:
    """The kernel kind of a child over ``params``, or None if it has no kernel (or its
    groups over ``params`` need different kinds)."""
    if not isinstance(child, torch.optim.Optimizer):  # a replayed schedule
        return None
    groups = child.param_groups
    if len(groups) > 1:  # the groups over ``params``
        wanted = {id(p) for p in params}
        groups = [g for g in groups if any(id(p) in wanted for p in g["params"])]
    names = [_rule_name(child, g) for g in groups]
    if not all(name in KERNEL_RULES for name in names):
        return None
    kinds = {_kind(name, g) for name, g in zip(names, groups)}
    return kinds.pop() if len(kinds) == 1 else None


def _steps_children(context: StepContext) -> bool:
    """Whether the kernels may run both children on their own states (native rules, torch's
    optimizers of :mod:`grafting_core.torch_children`) rather than drive them through
    ``step()`` (not with path='blackbox')."""
    if context.native:
        return True
    if context.path == "blackbox" or context.direction is None:
        return False
    return all(
        isinstance(c, NativeOptimizer) or torch_children.why_not(c) is None
        for c in (context.magnitude, context.direction)
    )


def pays(context: StepContext) -> bool:
    """Whether the step is over enough numbers for the kernels to be faster."""
    native_like = _steps_children(context)
    return context.plan.elements >= (MIN_ELEMENTS_NATIVE if native_like else MIN_ELEMENTS_BLACK_BOX)


def unsupported(graft: Any, params: list[Tensor]) -> str | None:
    """Why the kernels cannot take a step of the ``Graft`` ``graft`` over ``params`` (which
    have gradients); None if they can (:func:`refusal` of its
    :meth:`~grafting_core.Graft.step_context`)."""
    return refusal(graft.step_context(params))


def runs_children(graft: Any, params: list[Tensor]) -> bool:
    """Whether the kernels take a step of the ``Graft`` ``graft`` over ``params`` running
    both children on their own states (native rules, :mod:`grafting_core.torch_children`),
    not through ``step()``."""
    context = graft.step_context(params)
    return refusal(context) is None and context.memo[_CHECKED][1]


#: The key of :func:`refusal`'s verdict in ``StepContext.memo``: ``(key, in_kernels)`` for
#: the step it last found the kernels could take, ``(None,)`` after a refusal.
_CHECKED = "fused_checked"


def refusal(context: StepContext) -> str | None:
    """Why the kernels cannot take this step; None if they can.

    Where they can, :func:`propose` runs the children in the kernels themselves when they
    are native rules or torch optimizers the kernels can step
    (:mod:`grafting_core.torch_children`), else drives them through ``step()``.
    """
    if context.direction is None:
        return "direction=None"
    if context.partial and not context.native:
        return "partial grafting (grafted=) with black-box children"
    params = context.plan.params
    dtype = params[0].dtype
    if dtype not in _DTYPES or not _dense([p.grad for p in params], dtype):
        return "gradients not all dense contiguous float32/float64 CPU tensors of one dtype"
    children = (context.magnitude, context.direction)
    in_kernels = _steps_children(context)  # hooks or options of torch children may change
    # Parameters and states change only with the plan, a dtype or a loaded state_dict.
    key = (
        tuple(map(id, params)),
        dtype,
        in_kernels,
        *(id(getattr(c, "state", None)) for c in children),
    )
    if context.memo.get(_CHECKED, (None,))[0] == key:
        return None
    why_not = None if _dense(params, dtype) else "parameters not like their gradients"
    if why_not is None and in_kernels:
        why_not = _native_unsupported(context, dtype)
        if why_not is not None and not context.native:  # torch children: step() them instead
            in_kernels, why_not = False, None
    if why_not is None and _build() is None:  # built only for a step the kernels could take
        why_not = f"the kernels could not be built: {unavailable_reason}"
    context.memo[_CHECKED] = (key, in_kernels) if why_not is None else (None,)
    return why_not


def _native_unsupported(context: StepContext, dtype: torch.dtype) -> str | None:
    magnitude, direction = context.magnitude, context.direction
    if magnitude is direction:
        return "one optimizer as both magnitude and direction"
    params = context.plan.params
    chosen = [p for p, grafted in zip(params, context.plan.grafted) if grafted]
    for role, child, mine in (("magnitude", magnitude, params), ("direction", direction, chosen)):
        if mine and _rule_kind(child, mine) is None:
            name = child.rule.name if isinstance(child, NativeOptimizer) else type(child).__name__
            return (
                f"no kernel for the {role} {name!r} (kernels: {', '.join(KERNEL_RULES)}; "
                "RMSprop not centred; one momentum setting per child)"
            )
    if len(chosen) < len(params) and _rule_kind(magnitude, params) in IN_APPLY_KINDS:
        return "partial grafting with Lion as magnitude (its step reads its old moment)"
    states = [
        v
        for c in (magnitude, direction)
        for p in params
        for k, v in c.state.get(p, {}).items()
        if torch.is_tensor(v) and k != "step"  # torch's step counts are scalar tensors
    ]
    return None if _dense(states, dtype) else "optimizer states not like the parameters"


class _Layout:
    """Chunk bookkeeping for one list of tensor sizes (cached between steps)."""

    def __init__(self, numels: list[int]) -> None:
        chunks = [max(1, -(-n // CHUNK)) for n in numels]
        self.numels = numels
        self.chunks = sum(chunks)
        self.total = sum(numels)
        self.numel = torch.tensor(numels, dtype=torch.int64)
        self.first = torch.tensor([0, *chunks], dtype=torch.int64).cumsum(0)


_layouts: dict[tuple[int, ...], _Layout] = {}


def _layout(tensors: list[Tensor]) -> _Layout:
    key = tuple(t.numel() for t in tensors)
    if key not in _layouts:
        if len(_layouts) > 64:
            _layouts.clear()
        _layouts[key] = _Layout(list(key))
    return _layouts[key]


def _table(tensors: list[Tensor | None] | None) -> array | None:
    """The data pointers of ``tensors`` (0 for None), as the C array a pass reads."""
    if tensors is None:
        return None
    return array("q", [0 if t is None else t.data_ptr() for t in tensors])


def _address(values: array | None) -> int:
    return 0 if values is None else values.buffer_info()[0]


class _Pass:
    """One kernel pass with its pointer tables built, run by calling it (with per-tensor
    ``scale`` where the op reads one): building them touches every tensor, cheaper before a
    streaming pass, while their objects are in cache, than after it (BENCHMARKS.md)."""

    def __init__(
        self,
        op: int,
        layout: _Layout,
        dtype: torch.dtype,
        tables: list[list | None],
        *,
        kinds: tuple[int, int] = (0, 0),
        coefs: tuple[array | None, array | None] = (None, None),
        use_w: bool = False,
        guard: tuple[int, _Guard] | None = None,
    ) -> None:
        self.layout, self.dtype = layout, dtype
        self.kernel = getattr(_library, f"graft_pass_{_DTYPES[dtype]}")
        mode, segments = (UNGUARDED, None) if guard is None else guard
        task = _Task(
            op,
            kinds[0],
            kinds[1],
            int(use_w),
            mode,
            len(layout.numels),
            layout.numel.data_ptr(),
            layout.first.data_ptr(),
        )
        self.arrays = [_table(t) for t in tables]  # alive until the kernel has read them
        for i, table in enumerate(self.arrays):
            task.ptr[i] = _address(table)
        task.coef_m, task.coef_d = map(_address, coefs)
        self.coefs = coefs
        if segments is not None:
            task.segments = len(segments.bounds) - 1
            task.segment, task.layer = map(_address, (segments.bounds, segments.layers))
        self.task = task

    def __call__(self, scale: Tensor | None = None, threads: int | None = None) -> Tensor:
        """Run the pass; per-tensor norms, shape ``(3, n)`` (see :func:`_run`)."""
        norms = torch.empty(3, len(self.layout.numels), dtype=self.dtype)
        if scale is not None and (scale.dtype is not self.dtype or not scale.is_contiguous()):
            scale = scale.to(self.dtype).contiguous()
        self.task.scale = 0 if scale is None else scale.data_ptr()
        self.task.norms = norms.data_ptr()
        if threads is None:  # torch's threads, one per 64K elements at most (~5 µs to wake one)
            threads = min(torch.get_num_threads(), max(1, self.layout.total >> 16))
        if self.kernel(ctypes.byref(self.task), threads):
            raise MemoryError("the fused kernels could not allocate their bookkeeping")
        return norms


def _run(
    op: int,
    layout: _Layout,
    dtype: torch.dtype,
    tables: list[list | None],
    *,
    scale: Tensor | None = None,
    threads: int | None = None,
    **setup: Any,
) -> Tensor:
    """One kernel pass; returns per-tensor norms, shape ``(3, n)``, in the tensors' dtype (the
    reference path's norm dtype; summed in double): a rule's (or two rules') steps, then ‖g‖
    in a ``guard``-ed PROPOSE or PROPOSE_M, which scans the gradients of each segment of
    ``guard[1]`` before proposing them (``guard[0]``: GRAD_SUMS, or SKIP_NONFINITE to zero
    the gradients of non-finite layers first), else 0. ``scale``: one number per tensor;
    ``setup``: :class:`_Pass`'s ``kinds``, ``coefs``, ``use_w`` and ``guard``."""
    return _Pass(op, layout, dtype, tables, **setup)(scale, threads)


class _Guard:
    """A plan's tensors cut into segments of whole layers (a layer's gradient is known to
    be finite or not before any of its states change), for a guarded pass."""

    def __init__(self, plan: Plan) -> None:
        layer_of = plan.index.tolist()
        last = {layer: i for i, layer in enumerate(layer_of)}
        bounds, end = [0], 0
        for i, layer in enumerate(layer_of):
            end = max(end, last[layer])
            if end == i:  # every layer seen so far ends here
                bounds.append(i + 1)
        self.bounds = array("q", bounds)
        number = {layer: k for k, layer in enumerate(dict.fromkeys(layer_of))}
        # One tensor a layer in order: flags per tensor norm, as Plan.reduce leaves them
        self.layers = None if plan.is_identity else array("q", [number[x] for x in layer_of])


def _guard(context: StepContext, plan: Plan) -> tuple[int, _Guard]:
    """How the step's first pass guards the gradients, with the plan's segments (cached)."""
    segments = plan.fused_guard
    if segments is None:
        segments = plan.fused_guard = _Guard(plan)
    return (SKIP_NONFINITE if context.skip_nonfinite else GRAD_SUMS), segments


class _Coefficients:
    """A native child's kernel coefficients, one row of NCOEF numbers per tensor."""

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = rows

    def pick(self, index: list[int] | None) -> array:
        """The rows of the tensors ``index`` (None: all) as the C array a pass reads."""
        rows = self.rows if index is None else [self.rows[i] for i in index]
        if all(row is rows[0] for row in rows):  # one group at one step: one row repeated
            return array("d", rows[0]) * len(rows)
        return array("d", [x for row in rows for x in row])


def _coefficients(advanced: list[tuple[str, Any, dict[str, Any], int]]) -> _Coefficients:
    """The kernel coefficients of a child's tensors from their ``(rule, state, group, step)``."""
    rows, cache = [], {}
    for name, _, group, step in advanced:
        key = (id(group), step)
        if key not in cache:
            cache[key] = _row(name, group, step)
        rows.append(cache[key])
    return _Coefficients(rows)


def _advance(child: Any, params: list[Tensor]) -> list[tuple[str, Any, dict[str, Any], int]]:
    """Count a step of ``child`` over ``params``: per tensor ``(rule, state, group, step)``."""
    if isinstance(child, NativeOptimizer):
        return [(child.rule.name, s, g, s["step"]) for s, g in child.advance(params)]
    return torch_children.advance(child, params)


def _row(name: str, hp: dict[str, Any], step: int) -> list[float]:
    """Kernel coefficients of one rule at one step (field meanings: ``Coef`` in the C file)."""
    decay, lr = hp["weight_decay"], hp["lr"]
    if name == "sgd":
        momentum, first, nesterov = hp["momentum"], step == 1, hp["nesterov"]
        keep_buf, take_g = (0.0, 1.0) if first else (1.0, 1 - hp["dampening"])
        nes_g, nes_buf = (1.0, momentum) if nesterov else (0.0, 1.0)
        return [lr, decay, 0.0, momentum, keep_buf, take_g, nes_g, nes_buf, 0.0, 0.0]
    if name == "adagrad":
        decayed_lr = lr / (1 + (step - 1) * hp["lr_decay"])
        return [decayed_lr, decay, 0.0, 0.0, 0.0, 0.0, hp["eps"], 0.0, 0.0, 0.0]
    if name == "rmsprop":
        alpha = hp["alpha"]
        return [lr, decay, 0.0, hp["momentum"], alpha, 1 - alpha, hp["eps"], 0.0, 0.0, 0.0]
    if name == "sign_sgd":
        return [lr, decay, 0.0, 1 - hp["momentum"], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    if name == "lars":  # buf = m·buf + lr·τ·(g + wd·w) from zero, Δ = −buf (τ: _Child.trust_lars)
        return [1.0, decay, 0.0, hp["momentum"], 1.0, lr, 0.0, 1.0, 0.0, hp["trust_coefficient"]]
    beta1, beta2 = hp["betas"]
    if name == "lion":
        return [lr, 0.0, decay, 1 - beta1, 1 - beta2, 0.0, 0.0, 0.0, 0.0, 0.0]
    coupled, decoupled = (decay, 0.0) if name == "adam" else (0.0, decay)
    row = [
        lr,
        coupled,
        decoupled,
        1 - beta1,
        beta2,
        1 - beta2,
        hp["eps"],
        1 / (1 - beta1**step),
        1 / math.sqrt(1 - beta2**step),
        0.0,
    ]
    if name == "lamb":  # the kernels' step is −u = −(m̂/(√v̂+eps) + wd·w); Δ = lr·τ·(−u)
        row[0], row[TRUST] = 1.0, lr  # (_Child.rescale)
    return row


def propose(context: StepContext) -> Proposal:
    """Run both children over ``context.plan.params`` in kernel passes (checked by
    :func:`refusal`)."""
    plan = context.plan
    params = plan.params
    grads = [p.grad for p in params]
    dtype = params[0].dtype
    layout = _layout(params)
    if context.memo[_CHECKED][1]:  # the children in the kernels: ‖g‖ in the first propose pass
        magnitude_norm, per_tensor, grad_per_tensor, apply = _native(context, layout, grads)
        grad_norm = plan.reduce(grad_per_tensor)
    else:  # ‖g‖ in the pass that copies w to the scratch
        scratch = context.scratch_for(params, None)
        grad_per_tensor, weight_per_tensor, _ = _run(
            SUMSQ_COPY, layout, dtype, [grads, params, scratch]
        )
        grad_norm = plan.reduce(grad_per_tensor)
        if context.skip_nonfinite:  # zero the gradients of non-finite layers (no host sync)
            skip = (~torch.isfinite(grad_norm))[plan.index].to(dtype)
            _run(ZERO_IF, layout, dtype, [grads], scale=skip, threads=1)
        weight_norm = plan.reduce(weight_per_tensor)
        if isinstance(context.magnitude, MagnitudeSchedule):
            magnitude_norm = context.magnitude.norms_at(context.graft_step, plan.index.device)
        else:
            context.magnitude.step()
            norms = _run(DIFF_SUMSQ_RESTORE, layout, dtype, [params, scratch])
            magnitude_norm = plan.reduce(norms[0])
        context.direction.step()
        per_tensor = _run(DIFF_SUMSQ, layout, dtype, [params, scratch])[0]

        def apply(scales: Tensor) -> Tensor:  # w = scratch + scale · (w_after_D − scratch)
            _run(BLEND, layout, dtype, [params, scratch], scale=scales)
            return weight_norm

    return Proposal(grad_norm, magnitude_norm, plan.reduce(per_tensor), per_tensor, apply)


class _Child:
    """A child's kernel inputs over some of the step's tensors (``index``): a native rule,
    or a torch optimizer on its own state (:mod:`grafting_core.torch_children`)."""

    def __init__(self, child: Any, params: list[Tensor], index: list[int]) -> None:
        mine = params if len(index) == len(params) else [params[i] for i in index]
        self.index = index
        self.kind = _rule_kind(child, mine)
        advanced = _advance(child, mine)  # the step counts
        self.coefs = _coefficients(advanced)
        self.proposing = self.coefs.pick(None)  # the propose pass's (LARS: τ joins them)
        self.trust = advanced[0][0] if advanced[0][0] in TRUST_RULES else None
        self.factor: Tensor | None = None  # LAMB: lr·τ per tensor, times the kernels' step
        self.states = [  # None: a slot the rule has no buffer for
            None if name is None else [state[name] for _, state, _, _ in advanced]
            for name in SLOTS[self.kind]
        ]
        self.reads_g = self.kind in APPLY_READS_G or any(
            g.get("nesterov") for g in child.param_groups
        )

    def pick(self, tensors: list[Any]) -> list[Any]:
        return [tensors[i] for i in self.index]

    def mine(self, per_tensor: Tensor) -> Tensor:
        """The child's entries of a tensor with one entry per tensor of the step."""
        return per_tensor if len(self.index) == len(per_tensor) else per_tensor[self.index]

    def _column(self, column: int) -> Tensor:
        """One coefficient per tensor: a view of the propose pass's rows (no copy)."""
        return torch.frombuffer(self.proposing, dtype=torch.float64).view(-1, NCOEF)[:, column]

    def trust_lars(self, weight_norms: Tensor, grad_norms: Tensor) -> None:
        """LARS: τ per tensor from ‖w‖ and ‖g‖ before the step, into the share of the
        gradient its buffer takes (lr·τ; the apply pass does not read it)."""
        eta, decay = (self._column(k).to(weight_norms.dtype) for k in (TRUST, WD))
        self._column(TAKE_G).mul_(rules.lars_trust_ratios(weight_norms, grad_norms, eta, decay))

    def rescale(self, norms: Tensor, weight_norms: Tensor) -> Tensor:
        """‖Δ‖ per tensor of the child's from the kernels' ‖step‖ (``weight_norms``: ‖w‖
        per tensor of the step). LAMB: the kernels' step is −u and Δ = −lr·τ·u, τ from ‖w‖
        and ‖u‖; the factor lr·τ is kept for the apply pass."""
        if self.trust != "lamb":
            return norms
        lr = self._column(TRUST).to(norms.dtype)
        self.factor = lr * rules.trust_ratios(self.mine(weight_norms), norms)
        return self.factor * norms


def _native(
    context: StepContext, layout: _Layout, grads: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Any]:
    """‖Δ_M‖ per layer, ‖step‖ per tensor (Δ_D, or Δ_M where not grafted), ‖g‖ per tensor
    and the apply pass(es): w += scale · step, the step recomputed from the child's new
    state. The first pass is guarded: it sums ‖g‖² and (``skip_nonfinite``) zeroes the
    gradients of non-finite layers, layer by layer, before it proposes them."""
    plan = context.plan
    guard = _guard(context, plan)
    params, dtype = plan.params, plan.params[0].dtype
    everything = list(range(len(params)))
    chosen = [i for i in everything if plan.grafted[i]]  # D's tensors (all unless partial)
    others = [i for i in everything if not plan.grafted[i]]  # M's own step
    magnitude = _Child(context.magnitude, params, everything)
    direction = _Child(context.direction, params, chosen) if chosen else None
    trusting = [c for c in (magnitude, direction) if c is not None and c.trust]
    weight_t = _trust_pass(context, layout, grads, trusting) if trusting else None
    if not others:
        appliers = [(chosen, _applier(direction, chosen, params, grads, layout))]
    else:  # D's step on the grafted tensors, M's own on the others
        appliers = [
            (index, _applier(child, index, params, grads))
            for child, index in ((direction, chosen), (magnitude, others))
            if index
        ]
    use_w = any(
        g["weight_decay"] != 0
        for c in (context.magnitude, context.direction)
        for g in c.param_groups
    )
    read = [grads, params if use_w else None]
    if not others and magnitude.kind in PAIR_KINDS and direction.kind in PAIR_KINDS:
        norms = _run(
            PROPOSE,
            layout,
            dtype,
            [*read, *magnitude.states, *direction.states],
            kinds=(magnitude.kind, direction.kind),
            coefs=(magnitude.proposing, direction.proposing),
            use_w=use_w,
            guard=guard,
        )
        magnitude_t = magnitude.rescale(norms[0], weight_t)  # the kernels' ‖Δ_M‖, ‖Δ_D‖
        per_tensor = direction.rescale(norms[1], weight_t)
        grad_t = norms[2]
    else:  # one pass each (only the pair kinds are specialised together)
        norms = _propose_one(PROPOSE_M, magnitude, read, dtype, use_w, guard)
        magnitude_t, grad_t = magnitude.rescale(norms[0], weight_t), norms[2]
        per_tensor = magnitude_t.clone()  # Δ_M where not grafted
        if chosen:
            proposed = _propose_one(PROPOSE_D, direction, read, dtype, use_w)[0]
            per_tensor[chosen] = direction.rescale(proposed, weight_t)

    def apply(scales: Tensor) -> Tensor:
        if not others:  # every tensor takes D's step
            weight_norms = appliers[0][1](scales)
        else:
            weight_norms = torch.zeros(len(params), dtype=dtype)
            for index, applier in appliers:
                weight_norms[index] = applier(scales)
        return plan.reduce(weight_norms)

    return plan.reduce(magnitude_t), per_tensor, grad_t, apply


def _trust_pass(
    context: StepContext, layout: _Layout, grads: list[Tensor], children: list[_Child]
) -> Tensor:
    """‖w‖ per tensor of the step, read before it for the trust ratios of its LARS and
    LAMB ``children``; with ‖g‖ for LARS, whose τ then joins its coefficients (‖g‖ as 0 in
    a layer skipped as non-finite: its children see a zero gradient, as on the reference
    path)."""
    plan = context.plan
    params, dtype = plan.params, plan.params[0].dtype
    lars = [c for c in children if c.trust == "lars"]
    grad_t, weight_t, _ = _run(SUMSQ, layout, dtype, [grads if lars else None, params])
    if lars and context.skip_nonfinite:
        grad_t = grad_t.masked_fill(~torch.isfinite(plan.reduce(grad_t))[plan.index], 0)
    for child in lars:
        child.trust_lars(child.mine(weight_t), child.mine(grad_t))
    return weight_t


def _applier(
    child: _Child,
    index: list[int],
    params: list[Tensor],
    grads: list[Tensor],
    layout: _Layout | None = None,
) -> Callable[[Tensor], Tensor]:
    """The apply pass on the step's tensors ``index`` (some of ``child``'s), set up before
    the propose pass: a function of the step's scales that moves w by scale · Δ, Δ
    recomputed from the child's new state, and returns ‖w‖ per tensor before the move.
    ``layout``: given when ``index`` is every tensor of the step."""
    within = None
    if index != child.index:
        position = {i: k for k, i in enumerate(child.index)}  # in the child's lists
        within = [position[i] for i in index]

    def part(tensors: list[Any] | None) -> list[Any] | None:
        return tensors if within is None or tensors is None else [tensors[i] for i in within]

    some = layout is None  # of the step's tensors
    if some:
        params, grads = ([x[i] for i in index] for x in (params, grads))
        layout = _layout(params)
    run = _Pass(
        APPLY,
        layout,
        params[0].dtype,
        [grads if child.reads_g else None, params, None, None, *map(part, child.states)],
        kinds=(0, child.kind),
        coefs=(None, child.coefs.pick(within)),
    )

    def apply(scales: Tensor) -> Tensor:
        if some:
            scales = scales[index]
        if child.factor is not None:  # LAMB: Δ = lr·τ · the kernels' step (after proposing)
            scales = scales * (child.factor if within is None else child.factor[within])
        return run(scales)[0]

    return apply


def _propose_one(
    op: int,
    child: _Child,
    read: list[Any],
    dtype: torch.dtype,
    use_w: bool,
    guard: tuple[int, _Guard] | None = None,
) -> Tensor:
    """One child's propose pass over its tensors: its ``_run`` norms, ‖Δ‖ in row 0
    (``guard``: M's pass over every tensor, which also guards the gradients)."""
    tables = [None if t is None else child.pick(t) for t in read] + child.states
    return _run(
        op,
        _layout(child.pick(read[0])),
        dtype,
        tables,
        kinds=(child.kind, 0),
        coefs=(child.proposing, None),
        use_w=use_w,
        guard=guard,
    )
