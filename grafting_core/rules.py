"""Native update rules: each optimizer as a pure step computation over lists of tensors.

A rule never touches the weights. ``update`` reads the gradients, advances its own
state in place and returns the proposed step Δ (a new tensor per parameter), so that
``Graft`` can compute two optimizers' steps from one gradient and apply only the graft.
All arithmetic uses ``torch._foreach_*`` ops and host scalars only: no ``.item()``.

Each rule follows the reference definition it is named after; where torch has the
optimizer (SGD, Adam, AdamW, Adagrad, RMSprop) the arithmetic mirrors torch's own
foreach implementation so that stepping with the rule reproduces torch's trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

Tensors = list[Tensor]
States = dict[str, Tensors]
UpdateFn = Callable[[Tensors, Tensors, States, list[int], dict[str, Any]], Tensors]


class Rule(NamedTuple):
    """A native optimizer: its hyperparameter defaults, its state buffers and its update."""

    name: str
    defaults: dict[str, Any]  # every accepted hyperparameter with its default
    buffers: tuple[str, ...]  # weights-sized state buffers, created as zeros
    update: UpdateFn  # (params, grads, states, steps, hp) -> steps Δ
    summary: str  # one line for users (registry listings, the app)
    elementwise: bool = True  # False: the step uses whole-tensor norms (LARS/LAMB trust ratios)


def _with_weight_decay(grads: Tensors, params: Tensors, weight_decay: float) -> Tensors:
    """L2 regularisation folded into the gradient (g + wd·w), as torch's coupled decay."""
    if weight_decay == 0:
        return grads
    return torch._foreach_add(grads, params, alpha=weight_decay)


def trust_ratios(numerators: Tensor, denominators: Tensor) -> Tensor:
    """Per-tensor ‖a‖/‖b‖ from the norms ‖a‖, ‖b‖ (1-D), defined as 1 where either norm is
    zero (LARS/LAMB convention)."""
    positive = (numerators > 0) & (denominators > 0)
    ratio = numerators / denominators.clamp_min(1e-38)
    return torch.where(positive, ratio, torch.ones_like(numerators))


def lars_trust_ratios(
    weight_norms: Tensor,
    grad_norms: Tensor,
    trust_coefficient: float | Tensor,
    weight_decay: float | Tensor,
) -> Tensor:
    """LARS's per-tensor trust ratio η·‖w‖/(‖g‖ + wd·‖w‖) (1-D norms; the hyperparameters
    one number, or one per tensor where the tensors come from several groups)."""
    return trust_ratios(trust_coefficient * weight_norms, grad_norms + weight_decay * weight_norms)


def tensor_norms(tensors: Tensors) -> Tensors:
    """Euclidean norm of each tensor, accumulated in float32 (float64 for float64 tensors)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return list(torch._foreach_norm(tensors, 2, dtype=dtype))


def sgd_update(params, grads, states, steps, hp):
    """SGD with optional momentum, dampening and Nesterov, as ``torch.optim.SGD``."""
    grads = _with_weight_decay(grads, params, hp["weight_decay"])
    momentum = hp["momentum"]
    if momentum != 0:
        bufs = states["momentum_buffer"]
        first = [i for i, s in enumerate(steps) if s == 1]
        later = [i for i, s in enumerate(steps) if s > 1]
        if first:  # torch starts the buffer at the first gradient, undamped
            torch._foreach_copy_([bufs[i] for i in first], [grads[i] for i in first])
        if later:
            later_bufs = [bufs[i] for i in later]
            torch._foreach_mul_(later_bufs, momentum)
            torch._foreach_add_(later_bufs, [grads[i] for i in later], alpha=1 - hp["dampening"])
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if hp["nesterov"] else bufs
    return torch._foreach_mul(grads, -hp["lr"])


def _adam_direction(grads, states, steps, hp) -> Tensors:
    """Bias-corrected m̂ / (√v̂ + eps), advancing the moments in place (torch's arithmetic)."""
    beta1, beta2 = hp["betas"]
    exp_avg, exp_avg_sq = states["exp_avg"], states["exp_avg_sq"]
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
    bias_correction1 = [1 - beta1**s for s in steps]
    bias_correction2_sqrt = [math.sqrt(1 - beta2**s) for s in steps]
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, hp["eps"])
    direction = torch._foreach_div(exp_avg, denom)
    torch._foreach_div_(direction, bias_correction1)
    return direction


def adam_update(params, grads, states, steps, hp):
    """Adam (Kingma & Ba 2015) with coupled L2 weight decay, as ``torch.optim.Adam``."""
    grads = _with_weight_decay(grads, params, hp["weight_decay"])
    direction = _adam_direction(grads, states, steps, hp)
    return torch._foreach_mul(direction, -hp["lr"])


def adamw_update(params, grads, states, steps, hp):
    """AdamW (Loshchilov & Hutter 2019): decoupled decay −lr·wd·w, as ``torch.optim.AdamW``."""
    direction = _adam_direction(grads, states, steps, hp)
    if hp["weight_decay"] != 0:
        torch._foreach_add_(direction, params, alpha=hp["weight_decay"])
    return torch._foreach_mul(direction, -hp["lr"])


def adagrad_update(params, grads, states, steps, hp):
    """AdaGrad (Duchi et al. 2011) with lr decay, as ``torch.optim.Adagrad``."""
    grads = _with_weight_decay(grads, params, hp["weight_decay"])
    state_sum = states["sum"]
    torch._foreach_addcmul_(state_sum, grads, grads, 1)
    std = torch._foreach_sqrt(state_sum)
    torch._foreach_add_(std, hp["eps"])
    step = torch._foreach_div(grads, std)
    clr = [-hp["lr"] / (1 + (s - 1) * hp["lr_decay"]) for s in steps]
    torch._foreach_mul_(step, clr)
    return step


def rmsprop_update(params, grads, states, steps, hp):
    """RMSprop (Hinton 2012), optionally centred and with momentum, as ``torch.optim.RMSprop``."""
    grads = _with_weight_decay(grads, params, hp["weight_decay"])
    alpha = hp["alpha"]
    square_avg = states["square_avg"]
    torch._foreach_mul_(square_avg, alpha)
    torch._foreach_addcmul_(square_avg, grads, grads, 1 - alpha)
    if hp["centered"]:
        grad_avg = states["grad_avg"]
        torch._foreach_lerp_(grad_avg, grads, 1 - alpha)
        avg = torch._foreach_addcmul(square_avg, grad_avg, grad_avg, -1)
        torch._foreach_sqrt_(avg)
    else:
        avg = torch._foreach_sqrt(square_avg)
    torch._foreach_add_(avg, hp["eps"])
    if hp["momentum"] > 0:
        buf = states["momentum_buffer"]
        torch._foreach_mul_(buf, hp["momentum"])
        torch._foreach_addcdiv_(buf, grads, avg)
        return torch._foreach_mul(buf, -hp["lr"])
    step = torch._foreach_div(grads, avg)
    torch._foreach_mul_(step, -hp["lr"])
    return step


def lion_update(params, grads, states, steps, hp):
    """Lion (Chen et al. 2023): Δ = −lr·(sign(β1·m + (1−β1)·g) + wd·w); m ← β2·m + (1−β2)·g."""
    beta1, beta2 = hp["betas"]
    exp_avg = states["exp_avg"]
    interpolated = torch._foreach_lerp(exp_avg, grads, 1 - beta1)
    step = torch._foreach_sign(interpolated)
    if hp["weight_decay"] != 0:
        torch._foreach_add_(step, params, alpha=hp["weight_decay"])
    torch._foreach_mul_(step, -hp["lr"])
    torch._foreach_lerp_(exp_avg, grads, 1 - beta2)
    return step


def sign_sgd_update(params, grads, states, steps, hp):
    """signSGD / Signum (Bernstein et al. 2018): Δ = −lr·sign(m), m the (optional) EMA of g."""
    grads = _with_weight_decay(grads, params, hp["weight_decay"])
    if hp["momentum"] != 0:
        buf = states["momentum_buffer"]
        torch._foreach_lerp_(buf, grads, 1 - hp["momentum"])
        grads = buf
    step = torch._foreach_sign(grads)
    torch._foreach_mul_(step, -hp["lr"])
    return step


def lars_update(params, grads, states, steps, hp):
    """LARS (You et al. 2017): momentum on lr·η·‖w‖/(‖g‖ + wd·‖w‖) · (g + wd·w), per tensor."""
    weight_decay = hp["weight_decay"]
    weight_norms, grad_norms = (torch.stack(tensor_norms(x)) for x in (params, grads))
    trust = lars_trust_ratios(weight_norms, grad_norms, hp["trust_coefficient"], weight_decay)
    scaled = _with_weight_decay(grads, params, weight_decay)
    scaled = torch._foreach_mul(scaled, list(trust.unbind()))
    buf = states["momentum_buffer"]
    torch._foreach_mul_(buf, hp["momentum"])
    torch._foreach_add_(buf, scaled, alpha=hp["lr"])
    return torch._foreach_neg(buf)


def lamb_update(params, grads, states, steps, hp):
    """LAMB (You et al. 2020): Adam's m̂/(√v̂+eps) + wd·w, rescaled per tensor by ‖w‖/‖·‖."""
    direction = _adam_direction(grads, states, steps, hp)
    if hp["weight_decay"] != 0:
        torch._foreach_add_(direction, params, alpha=hp["weight_decay"])
    weight_norms, direction_norms = (torch.stack(tensor_norms(x)) for x in (params, direction))
    torch._foreach_mul_(direction, list(trust_ratios(weight_norms, direction_norms).unbind()))
    torch._foreach_mul_(direction, -hp["lr"])
    return direction


_SGD_DEFAULTS = {
    "lr": 0.1,
    "momentum": 0.0,
    "dampening": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
}
_ADAM_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}

RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in [
        Rule(
            "sgd",
            _SGD_DEFAULTS,
            ("momentum_buffer",),
            sgd_update,
            "Stochastic gradient descent; momentum/Nesterov optional (torch.optim.SGD).",
        ),
        Rule(
            "adam",
            _ADAM_DEFAULTS,
            ("exp_avg", "exp_avg_sq"),
            adam_update,
            "Adam: per-coordinate steps from first and second moment estimates.",
        ),
        Rule(
            "adamw",
            {**_ADAM_DEFAULTS, "weight_decay": 1e-2},
            ("exp_avg", "exp_avg_sq"),
            adamw_update,
            "Adam with decoupled weight decay.",
        ),
        Rule(
            "adagrad",
            {
                "lr": 1e-2,
                "lr_decay": 0.0,
                "weight_decay": 0.0,
                "initial_accumulator_value": 0.0,
                "eps": 1e-10,
            },
            ("sum",),
            adagrad_update,
            "AdaGrad: steps shrink with the accumulated squared gradients.",
        ),
        Rule(
            "rmsprop",
            {
                "lr": 1e-2,
                "alpha": 0.99,
                "eps": 1e-8,
                "weight_decay": 0.0,
                "momentum": 0.0,
                "centered": False,
            },
            ("square_avg", "grad_avg", "momentum_buffer"),
            rmsprop_update,
            "RMSprop: gradients divided by a running RMS.",
        ),
        Rule(
            "lion",
            {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
            ("exp_avg",),
            lion_update,
            "Lion: the sign of an interpolated momentum (Chen et al. 2023).",
        ),
        Rule(
            "sign_sgd",
            {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0},
            ("momentum_buffer",),
            sign_sgd_update,
            "signSGD / Signum: every coordinate moves by lr in the sign of its (momentum) "
            "gradient.",
        ),
        Rule(
            "lars",
            {"lr": 1.0, "momentum": 0.9, "weight_decay": 0.0, "trust_coefficient": 1e-3},
            ("momentum_buffer",),
            lars_update,
            "LARS: momentum SGD with a per-tensor trust ratio ‖w‖/‖g‖.",
            elementwise=False,
        ),
        Rule(
            "lamb",
            {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0},
            ("exp_avg", "exp_avg_sq"),
            lamb_update,
            "LAMB: Adam's step rescaled per tensor by ‖w‖/‖step‖.",
            elementwise=False,
        ),
    ]
}


def _nonnegative(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return None if ok and math.isfinite(value) and value >= 0 else "a finite number >= 0"


def _fraction(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return None if ok and 0 <= value < 1 else "a number in [0, 1)"


def _betas(value: Any) -> str | None:
    ok = isinstance(value, tuple | list) and len(value) == 2
    ok = ok and all(_fraction(b) is None for b in value)
    return None if ok else "a pair of numbers in [0, 1)"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


#: What each hyperparameter must be (any other: a finite number >= 0), for every rule.
_CHECKS = {
    "betas": _betas,
    "momentum": _fraction,
    "alpha": _fraction,
    "dampening": _fraction,
    "nesterov": _boolean,
    "centered": _boolean,
}


def resolve_hparams(rule: Rule, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The rule's defaults merged with ``hparams``; a ``ValueError`` names a bad key or value.

    Every entry point checks here: specs (the registry), ``NativeOptimizer(...)`` and its
    ``add_param_group`` (a group's own options).
    """
    unknown = sorted(set(hparams) - set(rule.defaults))
    if unknown:
        raise ValueError(
            f"Unknown hyperparameter(s) {unknown} for optimizer {rule.name!r}. "
            f"Valid: {sorted(rule.defaults)}"
        )
    resolved = {**rule.defaults, **hparams}
    for key, value in resolved.items():
        problem = _CHECKS.get(key, _nonnegative)(value)
        if problem:
            raise ValueError(
                f"Invalid {rule.name} hyperparameter {key!r}: {value!r} (must be {problem})"
            )
    if resolved.get("nesterov") and (resolved["momentum"] <= 0 or resolved["dampening"] != 0):
        raise ValueError(
            f"Invalid {rule.name} hyperparameters: nesterov needs momentum > 0 "
            f"and dampening 0 (got momentum {resolved['momentum']!r}, "
            f"dampening {resolved['dampening']!r})"
        )
    if "betas" in resolved:
        resolved["betas"] = tuple(resolved["betas"])
    return resolved


def needed_buffers(rule: Rule, hp: dict[str, Any]) -> tuple[str, ...]:
    """The state buffers this rule needs with these hyperparameters (no unused memory)."""
    if rule.name in ("sgd", "sign_sgd") and hp["momentum"] == 0:
        return ()
    if rule.name == "rmsprop":
        return (
            ("square_avg",)
            + (("grad_avg",) if hp["centered"] else ())
            + (("momentum_buffer",) if hp["momentum"] > 0 else ())
        )
    return rule.buffers


def init_state(rule: Rule, param: Tensor, hp: dict[str, Any]) -> dict[str, Any]:
    """Fresh per-parameter state: the step count and zero buffers (AdaGrad's start value)."""
    state: dict[str, Any] = {"step": 0}
    for name in needed_buffers(rule, hp):
        state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
    if rule.name == "adagrad":
        state["sum"].fill_(hp["initial_accumulator_value"])
    return state
