"""Grafting Lab's optimizer library: learning-rate grafting M#D for PyTorch.

Imports torch and the standard library only. The experiment engine lives in
``grafting_core.lab`` (it needs the ``lab`` extras).
"""

from .graft import NORM_FIELDS, Graft
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
    "GRANULARITIES", "NORM_FIELDS", "RULES", "STATISTICS", "Graft", "Layers", "MagnitudeSchedule",
    "NativeOptimizer", "NormLog", "OptimizerSpec", "Rule", "StaticRatios", "as_spec",
    "build_optimizer", "default_hparams", "describe", "estimate_static_ratios", "is_native",
    "layer_key", "optimizer_names", "state_bytes", "static_ratios_from_log", "validate_hparams",
]
