"""User-supplied tasks: load a (model, dataset) pair from a "module:function" spec.

A spec names a function that returns `(model, dataset)`, where `model` is a `torch.nn.Module`
and `dataset` is a `grafting_core.lab.tasks.data.Dataset`. It may name an importable module or a
Python file:

    from grafting_core.lab.tasks.custom import load_custom
    model, ds = load_custom("examples/custom_task.py:sine_task", n_train=512)
    model, ds = load_custom("mypackage.tasks:build")

Keyword arguments are passed to the function. See examples/custom_task.py for a template.
A file is imported as a fresh module each time it is loaded; its own folder is not added to
`sys.path`, so a file that imports sibling modules should be made a package and named by
module instead.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from grafting_core.lab.tasks.data import Dataset
from grafting_core.lab.tasks.models import loss_fn

SPEC_FORMAT = "'package.module:function' or 'path/to/file.py:function'"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (module or file path, function name); ValueError if malformed."""
    if not isinstance(spec, str):
        raise TypeError(
            f"Custom task spec must be a str like {SPEC_FORMAT}; got {type(spec).__name__}"
        )
    target, sep, func = spec.strip().rpartition(":")  # rpartition: Windows paths hold ':'
    if not sep or not target or not func:
        raise ValueError(f"Invalid custom task spec {spec!r}; expected {SPEC_FORMAT}")
    if not func.isidentifier():
        raise ValueError(f"Invalid function name {func!r} in spec {spec!r}; expected {SPEC_FORMAT}")
    return target, func


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_file(target: str) -> ModuleType:
    """Import a .py file as a uniquely named module (registered so dataclasses work in it)."""
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"Custom task file not found: {target!r} (looked at {path})")
    if path.suffix != ".py":
        raise ValueError(f"Custom task file must be a .py file; got {target!r}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"_grafting_custom_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(target: str) -> ModuleType:
    """Import a module by dotted name; only the spec's own module missing is a ValueError."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        parts = target.split(".")
        own = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if err.name in own:  # not an import failing inside the user's module
            raise ValueError(f"Custom task module not found: {target!r} ({err})") from err
        raise


def locate_custom(spec: str) -> None:
    """Check, without running the task's code, that a spec names a .py file or a module that
    exists (ValueError naming it otherwise): a run refused before it is created leaves no
    failed row behind."""
    target, _ = parse_spec(spec)
    if _is_path(target):
        path = Path(target).expanduser().resolve()
        if not path.is_file() or path.suffix != ".py":
            raise ValueError(
                f"Custom task file not found: {target!r} (looked at {path}; expected {SPEC_FORMAT})"
            )
        return
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as err:  # a parent package that is not there
        raise ValueError(f"Custom task module not found: {target!r} ({err})") from err
    if found is None:
        raise ValueError(f"Custom task module not found: {target!r}")


def load_custom(spec: str, **kwargs: Any) -> tuple[nn.Module, Dataset]:
    """Call the function a spec names with `kwargs` and check it returns (model, dataset)."""
    target, func_name = parse_spec(spec)
    module = _import_file(target) if _is_path(target) else _import_module(target)
    func = getattr(module, func_name, None)
    if func is None:
        own = sorted(  # functions defined in the module itself, not imported into it
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v) and v.__module__ == module.__name__ and n[0] != "_"
        )
        raise ValueError(
            f"Function {func_name!r} not found in {target!r}; "
            f"it defines: {', '.join(own) or 'no public functions'}"
        )
    if not callable(func):
        raise TypeError(f"{func_name!r} in {target!r} is not callable: {func!r}")
    result = func(**kwargs)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError(
            f"{spec!r} must return a (model, dataset) pair; got {type(result).__name__}"
        )
    model, dataset = result
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{spec!r} returned a {type(model).__name__} as model; expected torch.nn.Module"
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"{spec!r} returned a {type(dataset).__name__} as dataset; "
            "expected grafting_core.lab.tasks.data.Dataset"
        )
    _check_forward(spec, model, dataset)
    return model, dataset


def _check_forward(spec: str, model: nn.Module, dataset: Dataset) -> None:
    """Run the model on two validation examples so a mismatch fails here, with a clear message."""
    x, y = next(dataset.eval_batches(2))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
            loss_fn(dataset.task)(out, y)
    except Exception as err:
        raise ValueError(
            f"The model from {spec!r} fails on a batch of its dataset "
            f"(x {tuple(x.shape)}, y {tuple(y.shape)}, task {dataset.task}): {err}"
        ) from err
    finally:
        model.train(was_training)
    if dataset.task != "regression" and out.shape[-1] != dataset.output_dim:
        raise ValueError(
            f"The model from {spec!r} outputs {out.shape[-1]} scores per example, "
            f"but the dataset has output_dim {dataset.output_dim}"
        )
