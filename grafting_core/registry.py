"""Optimizer specs and the registry that turns a spec into a torch optimizer.

A spec is a registry name plus hyperparameters, e.g. ``("adam", {"lr": 1e-3})``.
Native names (see ``grafting_core.rules``) build a :class:`NativeOptimizer`, whose steps
``Graft`` can compute without touching the weights. Black-box names build one of torch's
own optimizers, or Shampoo and SOAP from the optional ``pytorch-optimizer`` package
(imported only when one is built); any ``"module:Class"`` name builds that class
(third-party optimizers), and ``Graft`` drives those by snapshot, step, difference and restore.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from .native import NativeOptimizer
from .rules import RULES, resolve_hparams


class BlackBoxEntry(NamedTuple):
    """A registry optimizer available only through the black-box path."""

    factory: Callable[..., torch.optim.Optimizer]
    defaults: dict[str, Any]
    summary: str


#: The pinned optional package behind ``shampoo`` and ``soap`` (requirements.txt, extra ``lab``).
PYTORCH_OPTIMIZER = "pytorch-optimizer==4.1.0"


@functools.cache
def _keeps_gradients(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``cls`` whose ``step()`` works on copies of the gradients and leaves ``p.grad`` as it was.

    pytorch-optimizer's Shampoo changes ``p.grad`` in place (its momentum, coupled weight decay
    and ``maximize``); ``Graft`` hands M and D the same gradient, so a child must not change it.
    """

    class KeepsGradients(cls):
        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            try:
                super().step()
            finally:
                for p, grad in zip(params, grads):
                    p.grad = grad
            return loss

    KeepsGradients.__name__ = KeepsGradients.__qualname__ = cls.__name__
    KeepsGradients.__doc__ = cls.__doc__
    return KeepsGradients


def _pytorch_optimizer(class_name: str) -> Callable[..., torch.optim.Optimizer]:
    """A factory for ``pytorch_optimizer.<class_name>``, imported when first built."""

    def build(params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
        try:
            module = importlib.import_module("pytorch_optimizer")
        except ImportError as error:
            raise ImportError(
                f"Optimizer {class_name} needs the optional package {PYTORCH_OPTIMIZER}: "
                f"pip install torch==2.13.0 {PYTORCH_OPTIMIZER} (the torch pin in the same "
                "command keeps pip from pulling a CUDA build)"
            ) from error
        return _keeps_gradients(getattr(module, class_name))(params, **hparams)

    build.__name__ = f"pytorch_optimizer.{class_name}"
    return build


BLACK_BOX: dict[str, BlackBoxEntry] = {
    "muon": BlackBoxEntry(
        torch.optim.Muon,
        {"lr": 1e-3, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True},
        "Muon (torch.optim.Muon): orthogonalised momentum; 2-D parameters only.",
    ),
    "adafactor": BlackBoxEntry(
        torch.optim.Adafactor,
        {"lr": 1e-2, "beta2_decay": -0.8, "d": 1.0, "weight_decay": 0.0},
        "Adafactor (torch.optim.Adafactor): factored second moments, little memory.",
    ),
    # Gupta, Koren, Singer 2018: per tensor dimension i a preconditioner (Σ_t G_i G_iᵀ)^(-1/2k),
    # recomputed every step; matrix_eps, momentum and weight decay: the package's defaults.
    # lr: the half-decade sweep on the lab's MNIST-1D MLP and character transformer
    # (plain Shampoo, 200 steps; BENCHMARKS.md): best on chars, 3% off the best on MNIST-1D.
    "shampoo": BlackBoxEntry(
        _pytorch_optimizer("Shampoo"),
        {
            "lr": 0.3,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "preconditioning_compute_steps": 1,
            "matrix_eps": 1e-6,
        },
        "Shampoo (pytorch-optimizer): Kronecker-factored full-matrix AdaGrad per tensor.",
    ),
    # Vyas et al. 2024 ("SOAP: Improving and Stabilizing Shampoo using Adam"): the reference
    # implementation's defaults, which pytorch-optimizer keeps, except weight_decay 0 (as the
    # lab's Adam: SOAP and Adam then differ only in their preconditioner) and lr 1e-2, the
    # best of the same sweep on both tasks (BENCHMARKS.md).
    "soap": BlackBoxEntry(
        _pytorch_optimizer("SOAP"),
        {
            "lr": 1e-2,
            "betas": (0.95, 0.95),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "precondition_frequency": 10,
        },
        "SOAP (pytorch-optimizer): Adam in the eigenbasis of Shampoo's preconditioner.",
    ),
}


def optimizer_names() -> list[str]:
    """Every registry name, native first."""
    return list(RULES) + list(BLACK_BOX)


def is_native(name: str) -> bool:
    """Whether ``name`` has a native rule (the fast, no-weight-touching path)."""
    return name in RULES


def describe(name: str) -> str:
    """One line on what the named optimizer does."""
    if name in RULES:
        return RULES[name].summary
    if name in BLACK_BOX:
        return BLACK_BOX[name].summary
    return f"{name}: imported optimizer class (black-box path)."


def default_hparams(name: str) -> dict[str, Any]:
    """The named optimizer's hyperparameters with their defaults."""
    if name in RULES:
        return dict(RULES[name].defaults)
    if name in BLACK_BOX:
        return dict(BLACK_BOX[name].defaults)
    if ":" in name:
        return {}
    raise _unknown_name(name)


def _unknown_name(name: str) -> ValueError:
    return ValueError(
        f"Unknown optimizer {name!r}. Valid names: {', '.join(optimizer_names())}; "
        "or 'module:Class' for any torch.optim.Optimizer subclass."
    )


def validate_hparams(name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``hparams``; a ``ValueError`` names any bad key or value."""
    if name in RULES:
        return resolve_hparams(RULES[name], hparams)
    return {**default_hparams(name), **hparams}  # the optimizer class validates its own arguments


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer by registry name and hyperparameter overrides (defaults fill the rest)."""

    name: str
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"Optimizer name must be a string, got {type(self.name).__name__}")
        if ":" not in self.name and self.name not in RULES and self.name not in BLACK_BOX:
            raise _unknown_name(self.name)
        object.__setattr__(self, "hparams", dict(self.hparams))
        validate_hparams(self.name, self.hparams)

    @property
    def resolved(self) -> dict[str, Any]:
        """All hyperparameters, defaults included."""
        return validate_hparams(self.name, self.hparams)

    @property
    def label(self) -> str:
        """A short human label, e.g. ``adam(lr=0.001)``."""
        args = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"{self.name}({args})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, inverse of :func:`as_spec` on a dict."""
        return {"name": self.name, "hparams": dict(self.hparams)}


def as_spec(spec: Any) -> OptimizerSpec:
    """Accept ``"adam"``, ``("adam", {...})``, ``{"name": "adam", "hparams": {...}}`` or a spec."""
    if isinstance(spec, OptimizerSpec):
        return spec
    if isinstance(spec, str):
        return OptimizerSpec(spec)
    if isinstance(spec, tuple | list) and len(spec) == 2 and isinstance(spec[1], Mapping):
        return OptimizerSpec(spec[0], spec[1])
    if isinstance(spec, Mapping) and "name" in spec:
        return OptimizerSpec(spec["name"], spec.get("hparams", {}))
    raise TypeError(
        "An optimizer spec is a name, a (name, hparams) pair, a {'name', 'hparams'} dict "
        f"or an OptimizerSpec; got {spec!r}"
    )


def _import_class(path: str) -> type[torch.optim.Optimizer]:
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import optimizer class {path!r}: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"{path!r} is not a torch.optim.Optimizer subclass")
    return cls


def build_optimizer(spec: Any, params: Iterable[Any]) -> torch.optim.Optimizer:
    """A ready optimizer for ``spec`` over ``params`` (tensors, named pairs or groups)."""
    spec = as_spec(spec)
    hparams = spec.resolved
    if spec.name in RULES:
        return NativeOptimizer(params, RULES[spec.name], **hparams)
    factory = BLACK_BOX[spec.name].factory if spec.name in BLACK_BOX else _import_class(spec.name)
    return factory(params, **hparams)
