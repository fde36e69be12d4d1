"""Widgets that choose optimizers and run settings; they return values ready for RunConfig.

Keys: ``<page>.<role>`` holds the optimizer name and ``<page>.<role>.<name>.<hparam>`` its
hyperparameters (so each optimizer remembers its own values); ``betas`` is two widgets,
``...betas.0`` and ``...betas.1``. Nothing here validates: ``RunConfig`` does, and the page
shows its ValueError.
"""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from grafting_core import describe, optimizer_names
from grafting_core.lab.experiments.common import LAB_OPTIMIZERS, OptimizerChoice
from grafting_core.lab.runs.config import MAX_SEED, RunConfig
from grafting_core.lab.tasks.data import DATASETS, dataset_names, describe_dataset
from grafting_core.lab.tasks.models import MODELS, compatible_models, default_model, describe_model
from grafting_core.registry import default_hparams

from .state import keep_valid

ROLE_TITLES = {
    "magnitude": "Magnitude optimizer M: gives each layer its step size ‖Δ_M‖",
    "direction": "Direction optimizer D: gives each layer its step direction Δ_D/‖Δ_D‖",
}
HPARAM_HELP = {
    "lr": "learning rate: the optimizer's base step size",
    "momentum": "fraction of the previous step kept (0 = none)",
    "betas": "decay rates of the first and second moment averages",
    "eps": "added to the denominator to avoid division by zero",
    "weight_decay": "shrinks weights toward zero each step",
}


def lab_hparams(name: str) -> dict[str, Any]:
    """Defaults shown for an optimizer: the registry's, with the lab's starting points."""
    hparams = default_hparams(name)
    if name in LAB_OPTIMIZERS:
        hparams.update(LAB_OPTIMIZERS[name][1])
    return hparams


def optimizer_defaults(prefix: str, roles: dict[str, str]) -> dict[str, Any]:
    """Session defaults for ``roles`` (role → initial optimizer) and every hyperparameter."""
    defaults: dict[str, Any] = {}
    for role, initial in roles.items():
        defaults[f"{prefix}.{role}"] = initial
        for name in optimizer_names():
            for key, value in lab_hparams(name).items():
                base = f"{prefix}.{role}.{name}.{key}"
                if isinstance(value, tuple | list):
                    defaults.update({f"{base}.{i}": float(v) for i, v in enumerate(value)})
                else:
                    defaults[base] = value
    return defaults


def increment(value: float) -> float:
    """A +/- increment one digit below the value's leading digit (0.01 for zero)."""
    if not value or not math.isfinite(value):
        return 0.01
    return 10.0 ** (math.floor(math.log10(abs(value))) - 1)


def _number(label: str, key: str, default: Any, help: str | None = None) -> Any:
    if isinstance(default, int):
        return st.number_input(label, key=key, step=1, help=help)
    return st.number_input(label, key=key, step=increment(float(default)), format="%g", help=help)


def _hparam_widget(base: str, key: str, default: Any) -> Any:
    help_text = HPARAM_HELP.get(key)
    if isinstance(default, bool):
        return st.checkbox(key, key=f"{base}.{key}", help=help_text)
    if isinstance(default, tuple | list):
        columns = st.columns(len(default))
        values = []
        for i, column in enumerate(columns):
            with column:
                values.append(_number(f"{key}[{i}]", f"{base}.{key}.{i}", default[i], help_text))
        return values
    return _number(key, f"{base}.{key}", default, help_text)


def optimizer_picker(
    prefix: str, role: str, names: list[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """Optimizer name and its hyperparameters for ``role`` (lr first, the rest folded)."""
    names = names or optimizer_names()
    st.markdown(f"**{ROLE_TITLES.get(role, role)}**")
    name = st.selectbox("optimizer", names, key=f"{prefix}.{role}", label_visibility="collapsed")
    st.caption(describe(name))
    defaults = lab_hparams(name)
    base = f"{prefix}.{role}.{name}"
    hparams: dict[str, Any] = {}
    if "lr" in defaults:
        hparams["lr"] = _hparam_widget(base, "lr", defaults["lr"])
    rest = [k for k in defaults if k != "lr"]
    if rest:
        with st.expander(f"More {name} hyperparameters"):
            for key in rest:
                hparams[key] = _hparam_widget(base, key, defaults[key])
    return name, hparams


def data_model_defaults(prefix: str) -> dict[str, Any]:
    """Session defaults for the dataset, per-dataset model and per-model size widgets."""
    defaults: dict[str, Any] = {f"{prefix}.dataset": "mnist1d"}
    defaults |= {f"{prefix}.model.{d}": default_model(d) for d in dataset_names()}
    defaults |= {f"{prefix}.width.{m}": spec.width for m, spec in MODELS.items()}
    defaults |= {f"{prefix}.depth.{m}": spec.depth for m, spec in MODELS.items()}
    return defaults


def data_model_picker(prefix: str) -> dict[str, Any]:
    """Dataset, a model that fits it, and the model's width and depth (RunConfig keys)."""
    dataset = st.selectbox(
        "Dataset",
        dataset_names(),
        key=f"{prefix}.dataset",
        help="Every dataset is generated or shipped: nothing downloads.",
    )
    st.caption(describe_dataset(dataset))
    models = compatible_models(dataset)
    keep_valid(f"{prefix}.model.{dataset}", models, default_model(dataset))
    model = st.selectbox("Model", models, key=f"{prefix}.model.{dataset}")
    st.caption(describe_model(model))
    left, right = st.columns(2)
    with left:
        width = st.number_input(
            "Width",
            step=1,
            key=f"{prefix}.width.{model}",
            help="hidden units, channels or embedding size",
        )
    with right:
        depth = st.number_input(
            "Depth",
            step=1,
            key=f"{prefix}.depth.{model}",
            help="hidden layers, conv layers or transformer blocks",
        )
    return {"dataset": dataset, "model": model, "width": int(width), "depth": int(depth)}


def check_sizes(data: dict[str, Any]) -> None:
    """Width and depth as shown must be >= 1 (RunConfig reads 0 as "the model's default").

    The inputs have no ``min_value``: with one, a browser shows an out-of-range entry in red
    but never sends it, and Start would train the previous value instead of refusing.
    """
    for key in ("width", "depth"):
        if data[key] < 1:
            raise ValueError(f"Invalid {key}: {data[key]} (must be >= 1)")


def seed_input(key: str, label: str = "Seed") -> str:
    """A seed typed as text, at most as many characters as the largest seed has digits (the
    browser refuses one more). Not a number input: its bounds stop at ±(2^53 - 1), past which a
    browser shows the value in red but never sends it (Start would train the previous seed)
    and rounds what it does send. :func:`parse_seed` reads it."""
    return st.text_input(
        label,
        key=key,
        max_chars=len(str(MAX_SEED)),
        help=f"model initialisation and batch order: a whole number from 0 to {MAX_SEED}",
    )


def parse_seed(text: str) -> int:
    """The seed ``text`` shows, exactly; ValueError naming it unless it is a whole number in
    [0, MAX_SEED]."""
    shown = str(text).strip()
    if not shown.isdigit() or not shown.isascii():
        raise ValueError(f"Invalid seed: {shown!r} (a whole number from 0 to {MAX_SEED})")
    if int(shown) > MAX_SEED:
        raise ValueError(f"Invalid seed: {shown} (at most {MAX_SEED})")
    return int(shown)


def task_of(dataset: str) -> str:
    """The dataset's task (classification | regression | language), for axis titles."""
    return DATASETS[dataset].task if dataset in DATASETS else "classification"


def lab_configs(
    base: RunConfig, magnitude: OptimizerChoice, direction: OptimizerChoice, *, reverse: bool
) -> list[RunConfig]:
    """M alone, D alone, M#D (and D#M): same data, order and seed; ValueError if invalid."""
    (m_name, m_hp), (d_name, d_hp) = magnitude, direction

    def one(first: OptimizerChoice, second: OptimizerChoice | None) -> RunConfig:
        name = first[0] if second is None else f"{first[0]}#{second[0]}"
        return base.replace(
            name=name,
            magnitude=first[0],
            magnitude_hparams=dict(first[1]),
            direction=second[0] if second else "",
            direction_hparams=dict(second[1]) if second else {},
        )

    m, d = (m_name, m_hp), (d_name, d_hp)  # RunConfig refuses an lr of 0 (what 1e400 becomes)
    configs = [one(m, None), one(d, None), one(m, d)]
    return configs + [one(d, m)] if reverse else configs


def parse_numbers(text: str, *, field: str, integer: bool = False) -> list:
    """Numbers typed as ``0, 1, 2`` (commas or spaces); ValueError naming ``field``.

    Integers must be >= 0 (seeds), other numbers finite and > 0 (learning rates).
    """
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise ValueError(f"Invalid {field}: empty (type numbers separated by commas)")
    values = []
    for part in parts:
        try:
            value = int(part) if integer else float(part)
        except ValueError:
            kind = "whole numbers" if integer else "numbers"
            raise ValueError(
                f"Invalid {field}: {part!r} is not a number (type {kind} separated by commas)"
            ) from None
        if (integer and value < 0) or (not integer and not (math.isfinite(value) and value > 0)):
            raise ValueError(
                f"Invalid {field}: {part!r} (must be "
                f"{'>= 0' if integer else 'a finite number > 0'})"
            )
        values.append(value)
    if len(set(values)) != len(values):
        raise ValueError(f"Invalid {field}: {text.strip()!r} repeats a value")
    return values
