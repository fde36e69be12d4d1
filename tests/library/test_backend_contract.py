"""The backends' contract (grafting_core/backend.py): ``Graft`` hands a backend a
``StepContext`` and gets a ``Proposal`` back; no backend reaches into ``Graft``."""

import ast
import copy

import pytest
import torch

from grafting_core import Graft, fused, graft_scales, reference, sharded
from grafting_core.backend import StepContext
from grafting_core.core import Proposal
from tests.helpers import ROOT, compute_grads, make_model, max_relative_difference

LIBRARY = ROOT / "grafting_core"
#: The backends and what they build on (the contract, the formula, the DTensor helpers).
BACKEND_MODULES = ("reference", "fused", "sharded", "native", "backend", "core", "dtensor")
#: Names whose private attributes a backend may use: its own object's, torch's foreach ops.
OWN = {"self", "cls", "torch"}


def _private_reads(module: str) -> list[str]:
    """``name._attr`` in ``module``'s source for any ``name`` but its own objects and torch
    (dunders aside), as ``line: text``."""
    tree = ast.parse((LIBRARY / f"{module}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in OWN)
        ):
            found.append(f"{module}.py:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", BACKEND_MODULES)
def test_no_backend_reads_a_private_member_of_another_object(module):
    """A backend sees Graft through its StepContext only: ``graft._reduce``,
    ``graft._scratch_for``, ``graft._fused_checked``... are gone for good."""
    assert _private_reads(module) == []


def test_the_private_read_finder_finds_them():
    """The checker above flags what it must (else an empty list would always pass)."""
    source = (
        "def f(graft, plan):\n    return graft._reduce(plan) + self._own + torch._foreach_add_\n"
    )
    tree = ast.parse(source)
    flagged = [
        ast.unparse(n)
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr.startswith("_")
        and not (isinstance(n.value, ast.Name) and n.value.id in OWN)
    ]
    assert flagged == ["graft._reduce"]


@pytest.mark.parametrize("backend", [reference, fused, sharded])
def test_every_backend_proposes_from_a_step_context(backend):
    """Each backend's ``propose`` takes the context as its one positional argument."""
    tree = ast.parse((LIBRARY / f"{backend.__name__.rpartition('.')[2]}.py").read_text())
    (propose,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "propose"]
    (argument,) = propose.args.args
    assert ast.unparse(argument.annotation) == "StepContext"
    assert ast.unparse(propose.returns) == "Proposal"


@pytest.mark.parametrize("use_fused", [False, True])
def test_graft_hands_its_backend_a_step_context_and_applies_its_proposal(monkeypatch, use_fused):
    if use_fused and not fused.available():
        pytest.skip(f"fused kernels unavailable: {fused.unavailable_reason}")
    backend = fused if use_fused else reference
    seen = []
    propose = backend.propose
    monkeypatch.setattr(
        backend, "propose", lambda *args, **kw: seen.append((args, kw)) or propose(*args, **kw)
    )
    model = make_model(torch.float64)
    opt = Graft(model.named_parameters(), "adam", ("sgd", {"momentum": 0.9}), fused=use_fused)
    compute_grads(model, 0)
    opt.step()
    ((args, kw),) = seen
    assert kw == {} and len(args) == 1 and isinstance(args[0], StepContext)
    context = args[0]
    assert context.magnitude is opt.magnitude and context.direction is opt.direction
    assert context.graft_step == 0 and context.sharding is None and context.native


def test_a_backend_and_the_formula_are_the_whole_step():
    """What a backend gets from ``step_context`` is all it needs: the reference backend's
    proposal, scaled by graft_scales, moves the weights as ``Graft.step`` does."""
    models = [make_model(torch.float64) for _ in range(2)]
    opts = [
        Graft(m.named_parameters(), "adam", "sgd", granularity="module", fused=False)
        for m in models
    ]
    for m in models:
        compute_grads(m, 0)
    opts[0].step()
    context = opts[1].step_context()
    plan = context.plan
    proposal = reference.propose(context)
    assert isinstance(proposal, Proposal)
    _, scales = graft_scales(
        proposal.magnitude_norm,
        proposal.direction_norm,
        torch.isfinite(proposal.grad_norm),
        layer_of=plan.index,
        lr=1.0,
        grafted=torch.ones(len(opts[1].layers), dtype=torch.bool),
        eps=opts[1].eps,
        skip_nonfinite=True,
    )
    with torch.no_grad():
        proposal.apply(scales)
    assert max_relative_difference(models[1], models[0]) < 1e-14


def test_the_backends_memo_is_not_copied_with_graft():
    """StepContext.memo (keyed by tensors' identities) starts empty in a copy."""
    if not fused.available():
        pytest.skip(f"fused kernels unavailable: {fused.unavailable_reason}")
    model = make_model(torch.float64)
    opt = Graft(model.named_parameters(), "adam", "sgd", fused=True)
    compute_grads(model, 0)
    opt.step()
    assert opt.step_context().memo  # the fused backend's verdict on this step
    clone = copy.deepcopy(opt)
    assert clone.step_context([p for _, p in clone.named_params()]).memo == {}


def test_step_context_needs_a_parameter_to_step():
    model = make_model()
    opt = Graft(model.named_parameters(), "adam", "sgd")
    with pytest.raises(ValueError, match="none has a gradient"):
        opt.step_context()
