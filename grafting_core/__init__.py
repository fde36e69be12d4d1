"""Grafting Lab's optimizer library: learning-rate grafting M#D for PyTorch.

Imports torch and the standard library only. The experiment engine lives in
``grafting_core.lab`` (it needs the ``lab`` extras).
"""

from .core import graft_scales
from .graft import NORM_FIELDS, Graft
from .layer_kinds import LAYER_KINDS, layer_kind, layer_kinds, select_kinds
from .layers import GRANULARITIES, Layers, layer_key
from .memory import state_bytes
from .native import NativeOptimizer
from .recording import NormLog
from .registry import (
    OptimizerSpec,
    as_spec,
    build_optimizer,
    default_hparams,
    describe,
    is_native,
    optimizer_names,
    validate_hparams,
)
from .rules import RULES, Rule
from .schedule import MagnitudeSchedule
from .static_ratios import (
    STATISTICS,
    StaticRatios,
    estimate_static_ratios,
    static_ratios_from_log,
)

__all__ = [
    "GRANULARITIES",
    "LAYER_KINDS",
    "NORM_FIELDS",
    "RULES",
    "STATISTICS",
    "Graft",
    "Layers",
    "MagnitudeSchedule",
    "NativeOptimizer",
    "NormLog",
    "OptimizerSpec",
    "Rule",
    "StaticRatios",
    "as_spec",
    "build_optimizer",
    "default_hparams",
    "describe",
    "estimate_static_ratios",
    "graft_scales",
    "is_native",
    "layer_key",
    "layer_kind",
    "layer_kinds",
    "optimizer_names",
    "select_kinds",
    "state_bytes",
    "static_ratios_from_log",
    "validate_hparams",
]
