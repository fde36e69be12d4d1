"""Grafting layers: which parameter tensors share one step-norm.

The paper's layer-wise grafting uses one norm per parameter tensor ("tensor"). We also
offer "module" (a module's weight and bias together), "global" (one norm over every
parameter) and any callable mapping a parameter name to a layer key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

GRANULARITIES = ("tensor", "module", "global")
Granularity = str | Callable[[str], str]


def layer_key(name: str, granularity: Granularity) -> str:
    """The layer a parameter named ``name`` belongs to."""
    if callable(granularity):
        key = granularity(name)
        if not isinstance(key, str):
            raise TypeError(f"granularity callable must return a str, got {key!r} for {name!r}")
        return key
    if granularity == "tensor":
        return name
    if granularity == "module":
        return name.rpartition(".")[0] or name
    if granularity == "global":
        return "global"
    raise ValueError(f"Invalid granularity: {granularity!r} (valid: {GRANULARITIES} or a callable)")


@dataclass(frozen=True)
class Layers:
    """Parameters (in a fixed order) and the layer each one belongs to."""

    names: tuple[str, ...]  # one per layer, in first-seen order
    param_names: tuple[str, ...]  # one per parameter
    index: tuple[int, ...]  # layer index of each parameter

    @classmethod
    def build(cls, param_names: list[str], granularity: Granularity) -> Layers:
        """Group ``param_names`` into layers; duplicate parameter names are an error."""
        if len(set(param_names)) != len(param_names):
            seen, dupes = set(), set()
            for name in param_names:
                (dupes if name in seen else seen).add(name)
            raise ValueError(f"Duplicate parameter names: {sorted(dupes)}")
        keys = [layer_key(n, granularity) for n in param_names]
        names = tuple(dict.fromkeys(keys))
        position = {k: i for i, k in enumerate(names)}
        return cls(names, tuple(param_names), tuple(position[k] for k in keys))

    def __len__(self) -> int:
        return len(self.names)
