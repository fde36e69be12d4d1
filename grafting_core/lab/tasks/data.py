"""Offline datasets for the experiment engine: one `Dataset` record, a registry, a loader.

Every dataset is generated or read from installed packages (nothing downloads), is
deterministic given its seed, and comes with train/val splits. MNIST-1D takes about 2 s to
generate in a fresh process (1 s to import its generator, 1.2 s per seed), which each worker
process paid for every seed it trained: the arrays are kept on disk after the first time
(``data_cache_dir``: ``$GRAFTING_DATA_CACHE``, else ``$XDG_CACHE_HOME/grafting-lab``, else
``~/.cache/grafting-lab``; ``GRAFTING_DATA_CACHE=`` with an empty value turns it off) and read
back bit for bit; a damaged or unreadable file is generated again.

    from grafting_core.lab.tasks.data import load_dataset
    ds = load_dataset("mnist1d", seed=0)
    x, y = ds.batch("train", 64, step=0, seed=0)   # same (step, seed) -> same batch

Registered datasets (see `dataset_names()` / `describe_dataset(name)`):
  mnist1d  MNIST-1D sequences, (40,) -> 10 classes
  digits   scikit-learn 8x8 digits, (1, 8, 8) -> 10 classes
  chars    character-level text of Python's own docs, next-character prediction
  teacher  ill-conditioned teacher-student regression, where Adam clearly beats SGD
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import math
import os
import random
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

TASKS = ("classification", "regression", "language")
SPLITS = ("train", "val")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/val dataset held in memory, with batches that are pure functions of the step.

    For "language", `x_train`/`x_val` are 1-D int64 token streams and `y_train`/`y_val` are
    the same tensors (targets are the stream shifted by one; `batch` builds them).
    """

    name: str
    task: str  # "classification" | "regression" | "language"
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    input_shape: tuple[int, ...]  # shape of one example (language: (block_size,))
    output_dim: int  # classes, regression outputs, or vocabulary size
    block_size: int | None = None  # language only: context length
    vocab: str | None = None  # language only: the characters, index = token id
    seed: int = 0  # the seed the data were generated with
    options: Mapping[str, Any] = field(default_factory=dict)  # resolved builder options

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))  # accept a list too
        if self.task not in TASKS:
            raise ValueError(f"Invalid task: {self.task!r}; expected one of {list(TASKS)}")
        if self.output_dim < 1:
            raise ValueError(f"Invalid output_dim: {self.output_dim}; must be >= 1")
        if self.task == "language":
            if self.block_size is None or self.block_size < 1:
                raise ValueError("A language dataset needs block_size >= 1")
            for split, xs in (("train", self.x_train), ("val", self.x_val)):
                if xs.dim() != 1 or len(xs) <= self.block_size or xs.dtype != torch.int64:
                    raise ValueError(
                        f"x_{split} must be a 1-D int64 token stream longer than block_size "
                        f"({self.block_size}); got {xs.dtype} of shape {tuple(xs.shape)}"
                    )
            return
        for split, xs, ys in (
            ("train", self.x_train, self.y_train),
            ("val", self.x_val, self.y_val),
        ):
            if len(xs) != len(ys) or len(xs) == 0:
                raise ValueError(
                    f"x_{split} and y_{split} must be non-empty with equal lengths; "
                    f"got {len(xs)} and {len(ys)}"
                )
            if tuple(xs.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"x_{split} examples have shape {tuple(xs.shape[1:])}, "
                    f"but input_shape is {self.input_shape}"
                )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, task={self.task!r}, train={len(self.x_train)}, "
            f"val={len(self.x_val)}, input_shape={self.input_shape}, output_dim={self.output_dim}, "
            f"seed={self.seed}, options={dict(self.options)})"
        )

    def num_examples(self, split: str) -> int:
        """Examples in a split (language: tokens in the stream)."""
        return len(self._split(split)[0])

    def batch(self, split: str, batch_size: int, *, step: int, seed: int) -> tuple[Tensor, Tensor]:
        """The batch for training step `step`: a pure function of (split, batch_size, step, seed).

        Runs with the same seed see the same data order and a resumed run continues exactly.
        Classification/regression walk through shuffled epochs (each example once per epoch);
        language samples `batch_size` random windows of `block_size` tokens.
        """
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}; must be >= 1")
        if step < 0 or seed < 0:
            raise ValueError(f"Invalid step or seed: {step}, {seed}; both must be >= 0")
        xs, ys = self._split(split)
        if self.task == "language":
            t = self.block_size
            gen = _generator(seed, step, split)
            starts = torch.randint(len(xs) - t, (batch_size,), generator=gen)
            offsets = starts[:, None] + torch.arange(t)
            return xs[offsets], xs[offsets + 1]
        n, first, last = len(xs), step * batch_size, (step + 1) * batch_size
        epochs = range(first // n, (last - 1) // n + 1)  # usually one, two at a boundary
        order = torch.cat([_epoch_order(n, seed, epoch, split) for epoch in epochs])
        idx = order[first - epochs[0] * n : last - epochs[0] * n]
        return xs[idx], ys[idx]

    def eval_batches(
        self, batch_size: int, *, max_examples: int | None = None, split: str = "val"
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Fixed, deterministic batches over a split, in order.

        For language, the examples are non-overlapping windows of `block_size` tokens, and
        `max_examples` counts windows.
        """
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}; must be >= 1")
        xs, ys = self._split(split)
        if self.task == "language":
            t = self.block_size
            starts = torch.arange(0, len(xs) - t, t)
            if max_examples is not None:
                starts = starts[:max_examples]
            for chunk in starts.split(batch_size):
                offsets = chunk[:, None] + torch.arange(t)
                yield xs[offsets], xs[offsets + 1]
            return
        n = len(xs) if max_examples is None else min(len(xs), max_examples)
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            yield xs[i:j], ys[i:j]

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "val":
            return self.x_val, self.y_val
        raise ValueError(f"Invalid split: {split!r}; expected one of {list(SPLITS)}")


def _generator(seed: int, step: int, split: str) -> torch.Generator:
    """A torch.Generator seeded from (seed, step, split) with no collisions between them."""
    state = np.random.SeedSequence([seed, step, SPLITS.index(split)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@functools.lru_cache(maxsize=16)  # consecutive steps share an epoch: don't reshuffle per step
def _epoch_order(n: int, seed: int, epoch: int, split: str) -> Tensor:
    """The shuffled order of `n` examples in one epoch (callers must not modify it)."""
    return torch.randperm(n, generator=_generator(seed, epoch, split))


# -- builders -----------------------------------------------------------------------------


def data_cache_dir() -> Path | None:
    """Where generated data sets are kept between processes (None: nowhere)."""
    if "GRAFTING_DATA_CACHE" in os.environ:
        chosen = os.environ["GRAFTING_DATA_CACHE"]
        return Path(chosen).expanduser() if chosen else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "grafting-lab"


def _cached_arrays(name: str, make: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """``make()``'s arrays, read from the data cache's file ``name`` when it holds them, else
    made and written there (atomically: a reader never sees half a file). A damaged file is
    made again; a cache that cannot be written is skipped: it only saves time."""
    folder = data_cache_dir()
    path = folder / name if folder else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return tuple(stored[f"a{i}"] for i in range(len(stored.files)))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # damaged: made again below, and replaced
    arrays = make()
    if path is not None:
        partial = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as f:
                np.savez(f, **{f"a{i}": a for i, a in enumerate(arrays)})
            os.replace(partial, path)
        except OSError:
            if partial is not None:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
    return arrays


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(seed: int, num_samples: int) -> tuple[np.ndarray, ...]:
    """MNIST-1D's arrays (train x, y, test x, y), kept per process and in the data cache
    (keyed by the generator's version, seed and size); never downloaded."""
    version = importlib.metadata.version("mnist1d")
    return _cached_arrays(
        f"mnist1d-{version}-seed{seed}-n{num_samples}.npz",
        lambda: _generate_mnist1d(seed, num_samples),
    )


def _generate_mnist1d(seed: int, num_samples: int) -> tuple[np.ndarray, ...]:
    """Generate MNIST-1D in memory (~1 s, and ~1 s more for the first import)."""
    from mnist1d.data import get_dataset_args, make_dataset  # slow import: pulls in matplotlib

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    # make_dataset reseeds the global `random` and numpy RNGs: keep the caller's streams intact.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


def _build_mnist1d(seed: int, num_samples: int) -> Dataset:
    if num_samples < 20:
        raise ValueError(f"Invalid num_samples: {num_samples}; must be >= 20")
    x, y, x_val, y_val = _mnist1d_arrays(seed, num_samples)
    mean, std = x.mean(), x.std()  # one scalar pair from the train split, as MNIST-1D does
    return Dataset(
        name="mnist1d",
        task="classification",
        x_train=torch.tensor((x - mean) / std, dtype=torch.float32),
        y_train=torch.tensor(y, dtype=torch.int64),
        x_val=torch.tensor((x_val - mean) / std, dtype=torch.float32),
        y_val=torch.tensor(y_val, dtype=torch.int64),
        input_shape=(x.shape[1],),
        output_dim=10,
    )


def _build_digits(seed: int, val_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits  # ships inside the wheel: no download

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"Invalid val_fraction: {val_fraction}; must be in (0, 1)")
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(x) * val_fraction)
    val, train = perm[:n_val], perm[n_val:]
    return Dataset("digits", "classification", x[train], y[train], x[val], y[val], (1, 8, 8), 10)


@functools.lru_cache(maxsize=1)
def _python_docs_text() -> str:
    """~465 KB of English technical prose that ships with every CPython (pydoc topics)."""
    from pydoc_data.topics import topics

    return "\n".join(topics.values())


def _build_chars(seed: int, block_size: int, val_fraction: float) -> Dataset:
    if block_size < 1:
        raise ValueError(f"Invalid block_size: {block_size}; must be >= 1")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"Invalid val_fraction: {val_fraction}; must be in (0, 1)")
    text = _python_docs_text()
    vocab = "".join(sorted(set(text)))
    lookup = np.zeros(max(map(ord, vocab)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    tokens = torch.from_numpy(lookup[codes])
    cut = int(len(tokens) * (1.0 - val_fraction))
    train, val = tokens[:cut], tokens[cut:]
    return Dataset(
        "chars", "language", train, train, val, val, (block_size,), len(vocab), block_size, vocab
    )


def _build_teacher(
    seed: int, n_train: int, n_val: int, dim: int, condition: float, noise: float
) -> Dataset:
    """Student sees x = z * s, s log-spaced over `condition`; a fixed tanh net on z makes y.

    Undoing the input scales needs first-layer weights that differ by ~`condition` across
    input features, which SGD's single step size cannot reach but Adam's per-coordinate one can.
    """
    if n_train < 1 or n_val < 1 or dim < 1:
        raise ValueError(f"n_train, n_val and dim must be >= 1; got {n_train}, {n_val}, {dim}")
    if condition < 1.0 or noise < 0.0:
        raise ValueError(f"Need condition >= 1 and noise >= 0; got {condition}, {noise}")
    gen = torch.Generator().manual_seed(seed)
    hidden = 2 * dim
    w1 = torch.randn(dim, hidden, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    w2 = torch.randn(hidden, 1, generator=gen, dtype=torch.float64) / math.sqrt(hidden)
    z = torch.randn(n_train + n_val, dim, generator=gen, dtype=torch.float64)
    y = torch.tanh(2.0 * z @ w1) @ w2
    y = (y - y[:n_train].mean()) / y[:n_train].std()
    y = y + noise * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    scales = torch.logspace(-0.5, 0.5, dim, base=condition, dtype=torch.float64)
    x = (z * scales[torch.randperm(dim, generator=gen)]).float()
    y = y.float()
    return Dataset(
        "teacher", "regression", x[:n_train], y[:n_train], x[n_train:], y[n_train:], (dim,), 1
    )


# -- registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: how to build a dataset and what it is."""

    builder: Callable[..., Dataset]  # builder(seed=..., **options) -> Dataset
    description: str  # one line, shown in the UI and the CLI
    defaults: Mapping[str, Any]  # every option the builder takes, with its default
    task: str  # the task of every dataset this builds
    input_rank: int  # len(input_shape) of every dataset this builds


DATASETS: dict[str, DatasetSpec] = {
    "mnist1d": DatasetSpec(
        _build_mnist1d,
        "MNIST-1D: 4000/1000 noisy 1-D digit sequences of length 40, 10 classes",
        {"num_samples": 5000},  # 80% train / 20% val, MNIST-1D's own split
        task="classification", input_rank=1,
    ),
    "digits": DatasetSpec(
        _build_digits,
        "scikit-learn 8x8 handwritten digits (1797 images in [0, 1]), 10 classes",
        {"val_fraction": 0.2},  # seeded random split
        task="classification", input_rank=3,
    ),
    "chars": DatasetSpec(
        _build_chars,
        "Character-level Python documentation text (~465 KB, ~100 chars): predict the next char",
        {"block_size": 64, "val_fraction": 0.1},  # context length; the last 10% is val
        task="language", input_rank=1,
    ),
    "teacher": DatasetSpec(
        _build_teacher,
        "Ill-conditioned teacher-student regression: input scales span `condition`",
        {
            "n_train": 4096,
            "n_val": 1024,
            "dim": 32,  # input features
            "condition": 1e3,  # ratio of the largest to the smallest input scale
            "noise": 0.1,  # label noise std (targets have unit variance)
        },
        task="regression", input_rank=1,
    ),
}  # fmt: skip


def check_options(kind: str, name: str, defaults: Mapping[str, Any], given: Mapping) -> dict:
    """Merge `given` into `defaults`; unknown keys or values of the wrong type raise ValueError."""
    resolved = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            valid = ", ".join(sorted(defaults)) or "none"
            raise ValueError(f"Unknown option {key!r} for {kind} {name!r}; valid options: {valid}")
        default = defaults[key]
        expected = (int, float) if isinstance(default, float) else type(default)
        ok = default is None or (
            isinstance(value, expected) and isinstance(value, bool) == isinstance(default, bool)
        )
        if ok and isinstance(default, float):
            value = float(value)
        if not ok:
            raise ValueError(
                f"Invalid {key} for {kind} {name!r}: {value!r} "
                f"(expected {type(default).__name__}, like the default {default!r})"
            )
        resolved[key] = value
    return resolved


def dataset_names() -> list[str]:
    """Names of the registered datasets."""
    return list(DATASETS)


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def describe_dataset(name: str) -> str:
    """One-line description of a registered dataset."""
    return _spec(name).description


def load_dataset(name: str, *, seed: int = 0, **options: Any) -> Dataset:
    """Build a registered dataset, deterministically from `seed`, offline."""
    spec = _spec(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r}; must be an int >= 0")
    resolved = check_options("dataset", name, spec.defaults, options)
    return replace(spec.builder(seed=seed, **resolved), seed=seed, options=resolved)
