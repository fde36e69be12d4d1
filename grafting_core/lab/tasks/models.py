"""Small models for the experiment engine, sized from a `Dataset`, with readable layer names.

Parameter names are the layer names users see in every per-layer plot, so each model names
its layers ("fc1", "conv2", "blocks.0.attn.qkv", ...) rather than numbering them.

    from grafting_core.lab.tasks.data import load_dataset
    from grafting_core.lab.tasks.models import build_model, loss_fn
    ds = load_dataset("chars")
    model = build_model("transformer", ds, width=64, depth=2, seed=0)
    x, y = ds.batch("train", 32, step=0, seed=0)
    loss = loss_fn(ds.task)(model(x), y)

Registered models (see `model_names()` / `describe_model(name)`):
  mlp          flatten -> [Linear -> activation] x depth -> Linear
  cnn1d        1-D CNN for sequences such as MNIST-1D
  cnn          2-D CNN for small images such as the 8x8 digits
  transformer  causal character-level transformer in the style of nanoGPT
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grafting_core.lab.tasks.data import DATASETS, Dataset, check_options

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


# -- MLP and CNNs ---------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"Invalid activation: {name!r}; expected one of {list(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1:
        raise ValueError(f"Invalid kernel_size: {kernel_size}; must be >= 1")


def _build_mlp(ds: Dataset, width: int, depth: int, activation: str) -> nn.Module:
    """flatten -> fc1 -> act1 -> ... -> fc{depth} -> act{depth} -> out."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    fan_in = math.prod(ds.input_shape)
    for i in range(1, depth + 1):
        layers[f"fc{i}"] = nn.Linear(fan_in, width)
        layers[f"act{i}"] = _activation(activation)
        fan_in = width
    layers["out"] = nn.Linear(fan_in, ds.output_dim)
    return nn.Sequential(layers)


def _build_cnn1d(ds: Dataset, width: int, depth: int, kernel_size: int) -> nn.Module:
    """(N, L) or (N, C, L) -> conv1..conv{depth}, each stride 2 + ReLU -> flatten -> out."""
    _check_kernel(kernel_size)
    channels, length = (1, ds.input_shape[0]) if len(ds.input_shape) == 1 else ds.input_shape
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(ds.input_shape) == 1:
        layers["unsqueeze"] = nn.Unflatten(1, (1, length))  # add the channel dimension
    for i in range(1, depth + 1):
        layers[f"conv{i}"] = nn.Conv1d(
            channels, width, kernel_size, stride=2, padding=kernel_size // 2
        )
        layers[f"act{i}"] = nn.ReLU()
        channels, length = width, (length + 2 * (kernel_size // 2) - kernel_size) // 2 + 1
    layers["flatten"] = nn.Flatten()
    layers["out"] = nn.Linear(channels * length, ds.output_dim)
    return nn.Sequential(layers)


def _build_cnn(ds: Dataset, width: int, depth: int, kernel_size: int) -> nn.Module:
    """(N, C, H, W) -> conv1 (stride 1), conv2.. (stride 2), each + ReLU -> flatten -> out."""
    _check_kernel(kernel_size)
    channels, height, wide = ds.input_shape
    pad = kernel_size // 2
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, depth + 1):
        stride = 1 if i == 1 else 2
        layers[f"conv{i}"] = nn.Conv2d(channels, width, kernel_size, stride=stride, padding=pad)
        layers[f"act{i}"] = nn.ReLU()
        channels = width
        height = (height + 2 * pad - kernel_size) // stride + 1
        wide = (wide + 2 * pad - kernel_size) // stride + 1
    layers["flatten"] = nn.Flatten()
    layers["out"] = nn.Linear(channels * height * wide, ds.output_dim)
    return nn.Sequential(layers)


# -- transformer (after nanoGPT's model.py) -------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past."""

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(width, 3 * width)  # query, key, value for all heads at once
        self.proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
            for z in self.qkv(x).split(c, dim=2)
        )
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    """Position-wise feed-forward: width -> 4 width -> GELU -> width."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, n_heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size), T <= block_size."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        width: int,
        depth: int,
        n_heads: int,
        dropout: float,
        tie_weights: bool,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Embedding(block_size, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, n_heads, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale residual projections by 1/sqrt(2 * depth)
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * depth))
        if tie_weights:  # the tied weight is then listed once, as "tok_emb.weight"
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor) -> Tensor:
        """(B, T) int64 -> (B, T, vocab_size) logits."""
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"Sequence length {t} exceeds the block size {self.block_size}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _build_transformer(
    ds: Dataset, width: int, depth: int, n_heads: int, tie_weights: bool, dropout: float
) -> nn.Module:
    if n_heads < 1 or width % n_heads:
        raise ValueError(f"Invalid n_heads: {n_heads}; must be >= 1 and divide width {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Invalid dropout: {dropout}; must be in [0, 1)")
    return CharTransformer(
        ds.output_dim, ds.block_size, width, depth, n_heads, dropout, tie_weights
    )


# -- registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build a model and which datasets it fits."""

    builder: Callable[..., nn.Module]  # builder(dataset, width, depth, **options)
    description: str  # one line, shown in the UI and the CLI
    width: int  # default width (hidden units, channels or embedding size)
    depth: int  # default depth (hidden layers, conv layers or blocks)
    defaults: Mapping[str, Any]  # every other option, with its default
    tasks: tuple[str, ...]  # dataset tasks it fits
    input_ranks: tuple[int, ...]  # len(dataset.input_shape) it fits


_NON_LANGUAGE = ("classification", "regression")
MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        _build_mlp,
        "MLP: flatten -> [Linear -> activation] x depth -> Linear",
        100, 2, {"activation": "relu"}, _NON_LANGUAGE, (1, 2, 3),
    ),
    "cnn1d": ModelSpec(
        _build_cnn1d,
        "1-D CNN: depth stride-2 conv layers + ReLU -> Linear (for sequences like MNIST-1D)",
        32, 3, {"kernel_size": 3}, _NON_LANGUAGE, (1, 2),
    ),
    "cnn": ModelSpec(
        _build_cnn,
        "2-D CNN: depth conv layers (stride 1, then 2) + ReLU -> Linear (for small images)",
        16, 2, {"kernel_size": 3}, _NON_LANGUAGE, (3,),
    ),
    "transformer": ModelSpec(
        _build_transformer,
        "Causal char transformer (nanoGPT style): width = embedding size, depth = blocks",
        64, 2, {"n_heads": 4, "tie_weights": False, "dropout": 0.0}, ("language",), (1,),
    ),
}  # fmt: skip

# The model a dataset gets when none is named: the fastest one that shows per-layer effects.
_DEFAULT_MODEL = {"mnist1d": "mlp", "digits": "cnn", "chars": "transformer", "teacher": "mlp"}


def model_names() -> list[str]:
    """Names of the registered models."""
    return list(MODELS)


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name]


def describe_model(name: str) -> str:
    """One-line description of a registered model."""
    return _spec(name).description


def _fits(spec: ModelSpec, task: str, input_rank: int) -> bool:
    return task in spec.tasks and input_rank in spec.input_ranks


def compatible_models(dataset_name: str) -> list[str]:
    """Models that can be built for a registered dataset."""
    if dataset_name not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset_name!r}; valid datasets: {', '.join(DATASETS)}")
    ds = DATASETS[dataset_name]
    return [name for name, spec in MODELS.items() if _fits(spec, ds.task, ds.input_rank)]


def default_model(dataset_name: str) -> str:
    """The model a registered dataset gets by default."""
    return _DEFAULT_MODEL.get(dataset_name) or compatible_models(dataset_name)[0]


def resolve_model_options(
    name: str, *, width: int | None = None, depth: int | None = None, **options: Any
) -> dict[str, Any]:
    """The full model config {width, depth, **options} after defaults; raises on bad keys."""
    spec = _spec(name)
    width = spec.width if width is None else width
    depth = spec.depth if depth is None else depth
    for key, value in (("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid {key} for model {name!r}: {value!r}; must be an int >= 1")
    return {"width": width, "depth": depth, **check_options("model", name, spec.defaults, options)}


def build_model(
    name: str,
    dataset: Dataset,
    *,
    width: int | None = None,
    depth: int | None = None,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Build a model sized for `dataset`; the same arguments always give the same weights."""
    spec = _spec(name)
    config = resolve_model_options(name, width=width, depth=depth, **options)
    if not _fits(spec, dataset.task, len(dataset.input_shape)):
        fits = [m for m, s in MODELS.items() if _fits(s, dataset.task, len(dataset.input_shape))]
        raise ValueError(
            f"Model {name!r} does not fit dataset {dataset.name!r} "
            f"(task {dataset.task}, input shape {tuple(dataset.input_shape)}); "
            f"models that fit: {', '.join(fits) or 'none'}"
        )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        return spec.builder(dataset, **config)


def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the last dimension; (B, T, V) logits are flattened to (B*T, V)."""
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def _mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error, with the target reshaped like the output."""
    return F.mse_loss(output, target.reshape(output.shape))


_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "classification": _cross_entropy,
    "language": _cross_entropy,
    "regression": _mse,
}


def loss_fn(task: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss for a task: cross-entropy (language: over B*T tokens) or MSE."""
    if task not in _LOSSES:
        raise ValueError(f"Invalid task: {task!r}; expected one of {list(_LOSSES)}")
    return _LOSSES[task]
