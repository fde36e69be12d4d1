"""Layer kinds: what each parameter tensor is (embedding, head, norm, bias, hidden matrix).

Partial grafting (``Graft(..., grafted={"hidden"})``) chooses layers by kind: an SGD-like
direction fails mainly on embeddings, the output layer and LayerNorms (Zhao et al. 2024,
"Deconstructing what makes a good optimizer for language models", arXiv 2407.07972).

The kind of a tensor comes from data, in this order (the first rule that applies wins):

1. With the model (:func:`layer_kinds` of an ``nn.Module``), the type of the module that owns
   the tensor: ``nn.Embedding``/``nn.EmbeddingBag`` → ``"embedding"``; a normalisation
   layer (torch's LayerNorm, GroupNorm, RMSNorm, BatchNorm, InstanceNorm, or any class whose
   name contains ``"Norm"``, e.g. nanoGPT's own ``LayerNorm``) → ``"norm"``, its bias
   included; the output layer, i.e. the last ``nn.Linear``/``nn.ConvNd`` registered in the
   model → ``"head"``, its bias included. A tensor tied into several modules takes the first
   kind in :data:`LAYER_KINDS` order (a head tied to the token embedding is an embedding).
2. A tensor whose owner is not one of those types (a parameter set on a plain container),
   or every tensor when only ``(name, tensor)`` pairs are known, by shape and by a label: the
   tensor's own name (``"pos_emb"``), or its owner's when that is ``weight``/``bias``
   (``"blocks.0.ln1.weight"`` → ``"ln1"``). ≥ 2-D and the label contains ``"emb"`` or is
   ``wte``/``wpe`` → ``"embedding"``; ≤ 1-D and the label contains ``"norm"`` or starts with
   ``"ln"``/``"bn"`` → ``"norm"``. Without the model the head is the owner of the last ≥ 2-D
   tensor that is not an embedding (all of that owner's tensors).
3. Otherwise ≤ 1-D → ``"bias"`` (biases, loose gains and scalars), ≥ 2-D → ``"hidden"``.

.. warning:: Without the model a tied output layer cannot be seen (its tensor is listed once,
    as the embedding), so rule 2 calls the last hidden matrix the head. Pass the model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from torch import Tensor, nn

#: The kinds, in precedence order for a tensor shared by several modules.
LAYER_KINDS = ("embedding", "head", "norm", "bias", "hidden")

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
)
_OUTPUTS = (nn.Linear, nn.modules.conv._ConvNd)


def _label(name: str) -> str:
    """What a name says about its tensor: ``"blocks.0.ln1.weight"`` → ``"ln1"``, ``"pos_emb"``."""
    owner, _, own = name.rpartition(".")
    return (owner.rpartition(".")[2] if own in ("weight", "bias") else own).lower()


def _by_type(module: nn.Module, head: bool) -> str | None:
    """Rule 1: the kind the owning module's type implies, or None for other modules."""
    if isinstance(module, _EMBEDDINGS):
        return "embedding"
    if isinstance(module, _NORMS) or "Norm" in type(module).__name__:
        return "norm"
    if head:
        return "head"
    return None


def _by_name(name: str, param: Tensor) -> str | None:
    """Rule 2: embedding or norm from the name's label and the tensor's shape, else None."""
    label = _label(name)
    if param.ndim >= 2 and ("emb" in label or label in ("wte", "wpe")):
        return "embedding"
    if param.ndim <= 1 and ("norm" in label or label.startswith(("ln", "bn"))):
        return "norm"
    return None


def layer_kind(
    name: str, param: Tensor, module: nn.Module | None = None, *, head: bool = False
) -> str:
    """The kind of one tensor (see the module docstring for the rule).

    Args:
        name: the parameter's name in the model (``"blocks.0.attn.qkv.weight"``).
        param: the tensor (its number of dimensions is used).
        module: the module that owns it, when known.
        head: whether ``module`` (or, without one, the tensor's owner) is the output layer.
    """
    if module is not None and (
        isinstance(module, _EMBEDDINGS + _NORMS + _OUTPUTS) or "Norm" in type(module).__name__
    ):
        kind = _by_type(module, head)
    else:
        kind = _by_name(name, param) or ("head" if head else None)
    return kind or ("bias" if param.ndim <= 1 else "hidden")


def _kinds_of_model(model: nn.Module) -> dict[str, str]:
    """Rule 1 (module types) with rule 2 for tensors on other modules."""
    outputs = [m for m in model.modules() if isinstance(m, _OUTPUTS)]
    head = outputs[-1] if outputs else None
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    kinds = {}
    for name, p in model.named_parameters():
        found = [layer_kind(name, p, m, head=m is head) for m in owners[id(p)]]
        kinds[name] = min(found, key=LAYER_KINDS.index)
    return kinds


def _kinds_of_named(named: list[tuple[str, Tensor]]) -> dict[str, str]:
    """Rule 2 only: names and shapes; the head is the last non-embedding ≥ 2-D tensor's owner."""
    matrices = [n for n, p in named if p.ndim >= 2 and _by_name(n, p) is None]
    head = matrices[-1].rpartition(".")[0] if matrices else None
    return {n: layer_kind(n, p, head=n.rpartition(".")[0] == head) for n, p in named}


def layer_kinds(source: nn.Module | Iterable[tuple[str, Tensor]]) -> dict[str, str]:
    """The kind of every parameter, by name, in ``named_parameters()`` order.

    Args:
        source: the model (module types decide: preferred), or ``(name, tensor)`` pairs
            (names and shapes decide).

    Example:
        >>> import torch
        >>> from grafting_core import layer_kinds
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4),
        ...                             torch.nn.Linear(4, 4), torch.nn.Linear(4, 10))
        >>> layer_kinds(model)
        {'0.weight': 'embedding', '1.weight': 'norm', '1.bias': 'norm', '2.weight': 'hidden',
         '2.bias': 'bias', '3.weight': 'head', '3.bias': 'head'}
    """
    if isinstance(source, nn.Module):
        return _kinds_of_model(source)
    return _kinds_of_named(list(source))


def check_kinds(kinds: Any) -> frozenset[str]:
    """``kinds`` (one kind or a collection) as a set; a ``ValueError`` names unknown kinds."""
    chosen = frozenset([kinds] if isinstance(kinds, str) else kinds)
    unknown = sorted(chosen - set(LAYER_KINDS))
    if unknown:
        raise ValueError(
            f"Invalid grafted: unknown layer kinds {unknown} "
            f"(valid: {LAYER_KINDS}, or a callable name -> bool)"
        )
    return chosen


def select_kinds(model: nn.Module, kinds: str | Collection[str]) -> Callable[[str], bool]:
    """A ``grafted=`` predicate that selects ``kinds`` of ``model``'s parameters by module type.

    Example:
        >>> import torch
        >>> from grafting_core import Graft, select_kinds
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4),
        ...                             torch.nn.Linear(4, 4), torch.nn.Linear(4, 10))
        >>> opt = Graft(model.named_parameters(), "adam", "sgd",
        ...             grafted=select_kinds(model, "hidden"))
        >>> [name for name, grafted in zip(opt.layers.names, opt.grafted_layers) if grafted]
        ['2.weight']
    """
    chosen = check_kinds(kinds)
    by_name = layer_kinds(model)

    def selected(name: str) -> bool:
        if name not in by_name:
            raise ValueError(f"Parameter {name!r} is not in the model given to select_kinds")
        return by_name[name] in chosen

    return selected
