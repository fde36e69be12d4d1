"""Static per-layer learning-rate corrections from a grafted run.

Run M#D briefly (e.g. Adam#SGD), take the ratio r_l(t) = ‖Δ_M,l‖ / ‖Δ_D,l‖ per layer,
reduce it over a window of steps to one multiplier c_l, and train plain D (SGD) with
per-layer learning rates lr·c_l: D then takes steps of M's typical size with none of M's
optimizer state. Ratios are keyed by parameter name and carry the parameter shapes, so a
file exported here and loaded against another model fails clearly instead of silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

STATISTICS = ("median", "mean", "trimmed_mean")
FORMAT = "grafting-lab/static-ratios"


def reduce_ratios(ratios: Tensor, statistic: str = "median", *, trim: float = 0.1) -> Tensor:
    """Per-column statistic of a ``(steps, layers)`` tensor, ignoring NaN entries."""
    if statistic not in STATISTICS:
        raise ValueError(f"Invalid statistic: {statistic!r} (valid: {STATISTICS})")
    if not 0 <= trim < 0.5:
        raise ValueError(f"Invalid trim: {trim!r} (must be in [0, 0.5))")
    out = []
    for column in ratios.T:
        values = column[~torch.isnan(column)].double().sort().values
        if statistic == "median":
            out.append(values.quantile(0.5) if len(values) else torch.tensor(float("nan")))
            continue
        if statistic == "trimmed_mean":
            cut = int(len(values) * trim)
            values = values[cut : len(values) - cut]
        out.append(values.mean() if len(values) else torch.tensor(float("nan")))
    return torch.stack(out).float() if out else torch.empty(0)


def step_ratios(magnitude_norms: Tensor, direction_norms: Tensor) -> Tensor:
    """r = ‖Δ_M‖ / ‖Δ_D‖ elementwise; NaN where undefined (no step, zero direction, inf)."""
    ratio = magnitude_norms.double() / direction_norms.double()
    ok = (direction_norms > 0) & torch.isfinite(ratio)
    return torch.where(ok, ratio, torch.full_like(ratio, float("nan")))


@dataclass
class StaticRatios:
    """One learning-rate multiplier per parameter, with shapes and provenance."""

    ratios: dict[str, float]  # parameter name -> c
    shapes: dict[str, list[int]]  # parameter name -> shape in the recorded model
    base_lr: float | None = None  # D's lr in the recorded run: SGD lr for layer = base_lr · c
    info: dict[str, Any] = field(default_factory=dict)  # statistic, window, source run

    def __post_init__(self) -> None:
        bad = {n: c for n, c in self.ratios.items() if not (math.isfinite(c) and c >= 0)}
        if bad:
            raise ValueError(
                f"Invalid static ratios {bad}: each ratio must be a finite "
                "number >= 0 (a negative one would step uphill)"
            )
        if self.base_lr is not None and not (math.isfinite(self.base_lr) and self.base_lr > 0):
            raise ValueError(f"Invalid base_lr: {self.base_lr!r} (must be a finite number > 0)")
        if missing := sorted(set(self.ratios) - set(self.shapes)):
            raise ValueError(f"Static ratios without a shape: {missing}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "format": FORMAT,
            "version": 1,
            "base_lr": self.base_lr,
            "info": self.info,
            "parameters": {
                n: {"ratio": c, "shape": self.shapes[n]} for n, c in self.ratios.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StaticRatios:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != FORMAT:
            raise ValueError("Not a static-ratios file (format field missing or different)")
        params = data["parameters"]
        return cls(
            {n: float(v["ratio"]) for n, v in params.items()},
            {n: list(v["shape"]) for n, v in params.items()},
            data.get("base_lr"),
            data.get("info", {}),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON keyed by parameter name."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> StaticRatios:
        """Read a file written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def check(self, named_params: Iterable[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
        """The model's named parameters, after checking names and shapes match exactly."""
        named = list(named_params)
        names = {n for n, _ in named}
        missing = sorted(names - set(self.ratios))
        extra = sorted(set(self.ratios) - names)
        wrong = sorted(
            n for n, p in named if n in self.shapes and list(p.shape) != list(self.shapes[n])
        )
        if missing or extra or wrong:
            raise ValueError(
                "Static ratios do not fit this model: "
                f"no ratio for {missing}; not in the model {extra}; "
                f"shape differs for {[(n, self.shapes[n]) for n in wrong]}"
            )
        return named

    def param_groups(
        self, named_params: Iterable[tuple[str, Tensor]], lr: float | None = None
    ) -> list[dict[str, Any]]:
        """Groups for the plain optimizer D (e.g. ``torch.optim.SGD``): one per parameter,
        with D's learning rate ``lr · c`` (``lr`` defaults to ``base_lr``).

        The ``lr`` of these groups is D's own learning rate, so build D over them::

            sgd = torch.optim.SGD(ratios.param_groups(model.named_parameters()), momentum=0.9)

        The same line builds the optimizer of a Hugging Face ``Trainer``
        (``optimizers=(sgd, scheduler)``) or of a LightningModule's ``configure_optimizers``
        (over the named parameters of the module the ratios were recorded on, e.g.
        ``self.net``); where the stack builds the optimizer itself, use
        :meth:`optimizer_class`.

        and, to record norms, hand that ready optimizer to ``Graft(named, sgd, None)``. They
        are *not* groups for ``Graft`` itself: a Graft group's ``lr`` multiplies the step D
        already took with its own lr, which would apply the learning rate twice (lr²·c).
        Each group carries its multiplier as ``static_ratio``, and ``Graft`` refuses groups
        that do.
        """
        lr = self._base(lr)
        return [self._group(n, p, lr) for n, p in self.check(named_params)]

    def _base(self, lr: float | None) -> float:
        lr = self.base_lr if lr is None else lr
        if lr is None:
            raise ValueError("No lr given and the ratios carry no base_lr")
        return lr

    def _group(self, name: str, param: Tensor, lr: float, **keys: Any) -> dict[str, Any]:
        """One parameter's group: its lr ``lr · c`` and its multiplier as ``static_ratio``."""
        return {
            **keys,
            "params": [param],
            "param_names": [name],
            "lr": lr * self.ratios[name],
            "static_ratio": self.ratios[name],
        }

    def split_groups(
        self, params: Iterable[Any], model: torch.nn.Module, lr: float | None = None
    ) -> list[dict[str, Any]]:
        """``params`` as training stacks build them (plain tensors, or groups with their own
        keys such as ``weight_decay``) split into one group per parameter with lr ``lr · c``:
        ``lr`` is a group's own, else the argument, else ``base_lr``. Names come from
        ``model`` by identity (its parameters must fit these ratios, :meth:`check`)."""
        names = {id(p): n for n, p in self.check(model.named_parameters())}
        items = list(params)
        groups = items if items and isinstance(items[0], dict) else [{"params": items}]
        out = []
        for g, group in enumerate(groups):
            base = group["lr"] if "lr" in group else self._base(lr)
            keys = {k: v for k, v in group.items() if k not in ("params", "param_names", "lr")}
            for i, p in enumerate(group["params"]):
                if id(p) not in names:
                    raise ValueError(
                        f"Invalid params: parameter {i} of group {g} (shape "
                        f"{tuple(p.shape)}) is not a parameter of the model given"
                    )
                out.append(self._group(names[id(p)], p, base, **keys))
        return out

    def optimizer_class(
        self, optimizer: type[torch.optim.Optimizer] = torch.optim.SGD, *, names: torch.nn.Module
    ) -> type[torch.optim.Optimizer]:
        """``optimizer`` with these per-layer learning rates, for code that builds the
        optimizer itself as ``cls(params, lr=..., **kwargs)`` (Hugging Face ``Trainer``'s
        ``optimizer_cls_and_kwargs``, factories): each parameter gets ``lr · c`` and keeps its
        group's other keys (see :meth:`split_groups`); a scheduler on it scales every layer's
        lr alike. A class, not a function: ``Trainer`` calls other callables as factories of
        the whole model.
        """
        ratios = self

        class StaticRatioOptimizer(optimizer):
            def __init__(
                self, params: Iterable[Any], lr: float | None = None, **kwargs: Any
            ) -> None:
                super().__init__(ratios.split_groups(params, names, lr), **kwargs)

        StaticRatioOptimizer.__name__ = StaticRatioOptimizer.__qualname__ = (
            f"{optimizer.__name__}[static ratios]"
        )
        return StaticRatioOptimizer


def _model_norms(per_layer: Tensor) -> Tensor:
    """``(steps, 1)`` whole-model norms from ``(steps, layers)`` per-layer norms."""
    return per_layer.nan_to_num().square().sum(1, keepdim=True).sqrt()


def estimate_static_ratios(
    records: Tensor,
    fields: tuple[str, ...],
    steps: list[int],
    *,
    layer_names: tuple[str, ...],
    param_names: tuple[str, ...],
    param_layer: tuple[int, ...],
    shapes: dict[str, list[int]],
    window: tuple[int, int] | None = None,
    statistic: str = "median",
    trim: float = 0.1,
    base_lr: float | None = None,
    lr_factor: Callable[[int], float] | None = None,
    per_layer: bool = True,
) -> StaticRatios:
    """c_l = statistic over steps in ``window`` (``[start, stop)``) of ‖Δ_M,l‖/‖Δ_D,l‖.

    ``records`` is a norm recording ``(steps, layers, fields)``; each parameter gets the
    multiplier of its layer. A layer with no usable step in the window is an error.

    ``lr_factor(step)``: the global schedule M's lr followed in the recorded run (D's lr
    cancels in the graft and is usually not scheduled). Each step's ratio is divided by it, so
    that c carries M's per-layer correction without the schedule, and a run with per-layer lr
    ``base_lr · c`` takes the schedule on top (as the lab does). ``per_layer=False`` gives every
    parameter one global scalar: the statistic of ‖Δ_M‖/‖Δ_D‖ over the whole model.
    """
    start, stop = window if window is not None else (0, max(steps, default=-1) + 1)
    rows = [i for i, s in enumerate(steps) if start <= s < stop]
    if not rows:
        raise ValueError(
            f"No recorded steps in window [{start}, {stop}) "
            f"(recorded: {steps[0] if steps else '-'}..{steps[-1] if steps else '-'})"
        )
    sel = records[rows]
    magnitude = sel[:, :, fields.index("magnitude_norm")].double()
    direction = sel[:, :, fields.index("direction_norm")].double()
    skipped = sel[:, :, fields.index("skipped")] > 0
    if lr_factor is not None:
        factors = torch.tensor([lr_factor(steps[i]) for i in rows], dtype=torch.float64)
        magnitude = magnitude / torch.where(factors > 0, factors, torch.nan)[:, None]
    if not per_layer:  # one layer: the whole model's norms, from the per-layer ones
        magnitude, direction = _model_norms(magnitude), _model_norms(direction)
        skipped = skipped.any(1, keepdim=True)
    ratios = step_ratios(magnitude, direction)
    ratios[skipped] = float("nan")
    reduced = reduce_ratios(ratios, statistic, trim=trim)
    empty = [layer_names[i] for i in range(len(reduced)) if torch.isnan(reduced[i])]
    if empty:
        raise ValueError(
            f"No usable steps in the window for layers "
            f"{empty if per_layer else 'of the whole model'}"
        )
    info = {
        "statistic": statistic,
        "window": [start, stop],
        "steps_used": len(rows),
        "per_layer": per_layer,
        "schedule_divided_out": lr_factor is not None,
    }
    if statistic == "trimmed_mean":
        info["trim"] = trim
    layer_of = param_layer if per_layer else [0] * len(param_names)
    return StaticRatios(
        {n: float(reduced[layer_of[i]]) for i, n in enumerate(param_names)},
        {n: shapes[n] for n in param_names},
        base_lr,
        info,
    )


def static_ratios_from_log(
    log: Any, *, window: tuple[int, int] | None = None, statistic: str = "median", trim: float = 0.1
) -> StaticRatios:
    """Estimate from a ``NormLog`` of a grafted run (base_lr: D's lr times Graft's lr)."""
    graft = log.graft
    steps, records = log.read()
    shapes = {n: list(p.shape) for n, p in graft.named_params()}
    # The grafted step is graft.lr · ‖Δ_M‖, and Δ_D carries D's own lr: SGD needs both.
    base_lr = graft.direction.param_groups[0]["lr"] * graft.param_groups[0]["lr"]
    return estimate_static_ratios(
        records,
        log.fields,
        steps,
        layer_names=graft.layers.names,
        param_names=graft.layers.param_names,
        param_layer=graft.layers.index,
        shapes=shapes,
        window=window,
        statistic=statistic,
        trim=trim,
        base_lr=base_lr,
    )
