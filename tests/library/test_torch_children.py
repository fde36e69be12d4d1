"""torch's own SGD, Adam, AdamW, Adagrad and RMSprop as Graft's children, run by the fused
kernels on their own states: the weights, norms and states of driving their ``step()``
(the reference path)."""

import functools

import pytest
import torch
from torch.optim import SGD, Adam, AdamW
from torch.optim.optimizer import register_optimizer_step_post_hook

from grafting_core import Graft, fused
from tests.helpers import compute_grads, make_model, max_relative_difference, train

pytestmark = pytest.mark.skipif(
    not fused.available(), reason=f"fused kernels unavailable: {fused.unavailable_reason}"
)


def _halves(model):
    params = list(model.parameters())
    return params[:3], params[3:]


#: name -> model -> (magnitude, direction): torch optimizers (or a native spec) over the model.
PAIRS = {
    "adam-fused#sgdm": lambda m: (
        Adam(m.parameters(), lr=1e-2, fused=True),
        SGD(m.parameters(), lr=0.1, momentum=0.9),
    ),
    "adam-wd#sgd-dampened-wd": lambda m: (
        Adam(m.parameters(), lr=1e-2, weight_decay=0.01, foreach=True),
        SGD(m.parameters(), lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    ),
    "adamw#nesterov": lambda m: (
        AdamW(m.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
        SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True),
    ),
    "sgd#adam-decoupled": lambda m: (
        SGD(m.parameters(), lr=0.1),
        Adam(m.parameters(), lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True),
    ),
    "groups": lambda m: (
        Adam(
            [
                {"params": _halves(m)[0], "lr": 1e-2, "weight_decay": 0.1},
                {"params": _halves(m)[1], "lr": 3e-3},
            ]
        ),
        SGD(
            [
                {"params": _halves(m)[0], "lr": 0.1},
                {"params": _halves(m)[1], "lr": 0.01, "nesterov": True, "weight_decay": 0.1},
            ],
            momentum=0.9,
        ),
    ),
    "adagrad#rmsprop-m": lambda m: (
        torch.optim.Adagrad(
            m.parameters(), lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1
        ),
        torch.optim.RMSprop(m.parameters(), lr=1e-3, alpha=0.9, momentum=0.5, foreach=True),
    ),
    "rmsprop-wd#adagrad-fused": lambda m: (
        torch.optim.RMSprop(m.parameters(), lr=1e-3, weight_decay=0.01),
        torch.optim.Adagrad(m.parameters(), lr=0.05, fused=True),
    ),
    "native-adam#torch-sgdm": lambda m: (
        ("adam", {"lr": 1e-2}),
        SGD(m.parameters(), lr=0.1, momentum=0.9),
    ),
}


def _run(pair, dtype, steps, use_fused, granularity="tensor", scheduled=False):
    model = make_model(dtype)
    opt = Graft(
        model.named_parameters(), *PAIRS[pair](model), granularity=granularity, fused=use_fused
    )
    scheduler = None
    if scheduled:  # on M, where a schedule of the grafted step belongs
        scheduler = torch.optim.lr_scheduler.StepLR(opt.magnitude, step_size=2, gamma=0.5)
    train(model, opt, steps, scheduler=scheduler)
    return model, opt


def _children(graft):
    return graft.magnitude, graft.direction


def _assert_same_state(ref_children, fast_children, ref_model, fast_model, rtol):
    """Each child's state: same entries, dtypes and devices (step tensors too), values to rtol."""
    for a_child, b_child in zip(ref_children, fast_children):
        assert len(a_child.state) == len(b_child.state)  # SGD without momentum keeps none
        for p_ref, p_fast in zip(ref_model.parameters(), fast_model.parameters()):
            a, b = a_child.state.get(p_ref, {}), b_child.state.get(p_fast, {})
            assert a.keys() == b.keys()
            for name, value in a.items():
                if not torch.is_tensor(value):
                    assert b[name] == value
                    continue
                assert (b[name].dtype, b[name].device) == (value.dtype, value.device), name
                if name == "step":
                    assert torch.equal(b[name], value)
                else:  # norm-wise: single entries may be ~0
                    assert float((b[name] - value).norm()) <= rtol * float(value.norm()), name


@pytest.mark.parametrize("granularity", ["tensor", "module"])
@pytest.mark.parametrize("pair", PAIRS)
def test_torch_children_in_the_kernels_match_their_own_step_float64(pair, granularity):
    """20 steps in float64: weights, norms and the children's states of the reference path,
    which calls each optimizer's step(), to 1e-12."""
    ref_model, ref = _run(pair, torch.float64, 20, False, granularity)
    fast_model, fast = _run(pair, torch.float64, 20, True, granularity)
    assert fused.runs_children(fast, list(fast_model.parameters()))
    assert max_relative_difference(fast_model, ref_model) < 1e-12
    torch.testing.assert_close(fast.last_norms, ref.last_norms, rtol=1e-12, atol=0, equal_nan=True)
    _assert_same_state(_children(ref), _children(fast), ref_model, fast_model, 1e-12)
    # the children's checkpoints have the same layout and load into the plain optimizers
    for role in ("magnitude", "direction"):
        saved = getattr(fast, role).state_dict()
        assert saved.keys() == getattr(ref, role).state_dict().keys()
        getattr(ref, role).load_state_dict(saved)


@pytest.mark.parametrize("pair", PAIRS)
def test_torch_children_in_the_kernels_match_their_own_step_float32(pair):
    ref_model, ref = _run(pair, torch.float32, 5, False)
    fast_model, fast = _run(pair, torch.float32, 5, True)
    # The reference takes Δ as (w + Δ) − w, rounded to w's ulp: a few ulps of w after 5 steps
    assert max_relative_difference(fast_model, ref_model) < 5e-6
    torch.testing.assert_close(fast.last_norms, ref.last_norms, rtol=1e-5, atol=0, equal_nan=True)
    _assert_same_state(_children(ref), _children(fast), ref_model, fast_model, 1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: Adam(p, lr=1e-2, weight_decay=0.01, fused=True),
        lambda p: AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: SGD(p, lr=0.05, momentum=0.9, dampening=0.1, nesterov=False),
        lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=0.01),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, weight_decay=0.01),
    ],
    ids=["adam", "adamw", "sgd-m", "adagrad", "rmsprop-m"],
)
def test_a_torch_optimizer_grafted_onto_itself_is_that_optimizer(make):
    """A#A = A (ratio one on every layer): the kernels' Graft of two torch optimizers against
    the optimizer alone, stepping its own step() on a copy of the model, float64."""
    model, alone = make_model(torch.float64), make_model(torch.float64)
    opt = Graft(
        model.named_parameters(), make(model.parameters()), make(model.parameters()), fused=True
    )
    plain = make(alone.parameters())
    train(model, opt, 15)
    train(alone, plain, 15)
    assert fused.runs_children(opt, list(model.parameters()))
    assert max_relative_difference(model, alone) < 1e-12
    _assert_same_state((plain, plain), _children(opt), alone, model, 1e-12)


def test_a_scheduler_on_a_torch_child_is_followed_in_the_kernels():
    """StepLR on M halves its lr every 2 steps; the kernels read param_groups each step, and
    the scheduler's own step() wrapper on the instance does not send M to the black box."""
    ref_model, ref = _run("adam-fused#sgdm", torch.float64, 8, False, scheduled=True)
    fast_model, fast = _run("adam-fused#sgdm", torch.float64, 8, True, scheduled=True)
    assert fused.runs_children(fast, list(fast_model.parameters()))
    assert fast.magnitude.param_groups[0]["lr"] == 1e-2 * 0.5**4
    assert max_relative_difference(fast_model, ref_model) < 1e-12


def _subclass(p):
    class MyAdam(Adam):
        pass

    return MyAdam(p, lr=1e-2)


def _replaced_step(p):
    opt = Adam(p, lr=1e-2)
    opt.step = functools.partial(Adam.step, opt)
    return opt


#: case -> a magnitude the kernels must not step themselves, and the words of the reason
THROUGH_STEP = {
    "subclass": _subclass,
    "amsgrad": lambda p: Adam(p, lr=1e-2, amsgrad=True),
    "maximize": lambda p: Adam(p, lr=1e-2, maximize=True),
    "tensor-lr": lambda p: Adam(p, lr=torch.tensor(1e-2)),
    "replaced-step": _replaced_step,
    "centred": lambda p: torch.optim.RMSprop(p, lr=1e-3, centered=True),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-3),
}


def _count_steps(monkeypatch, cls, calls):
    original = cls.step

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "step", counted)


@pytest.mark.parametrize("case", THROUGH_STEP)
def test_other_optimizers_are_driven_through_their_step(monkeypatch, case):
    """What the kernels cannot reproduce exactly is stepped by its own step() (still in the
    kernels' snapshot passes), with the reference path's result."""
    calls = []
    runs = []
    for use_fused in (False, True):
        model = make_model(torch.float64)
        magnitude = THROUGH_STEP[case](model.parameters())
        _count_steps(monkeypatch, type(magnitude), calls)
        opt = Graft(
            model.named_parameters(), magnitude, SGD(model.parameters(), lr=0.1), fused=use_fused
        )
        train(model, opt, 4)
        monkeypatch.undo()
        runs.append(model)
        if use_fused:
            assert fused.unsupported(opt, list(model.parameters())) is None
            assert not fused.runs_children(opt, list(model.parameters()))
    assert len(calls) == 8 or case == "replaced-step"  # a step on the instance bypasses the patch
    assert max_relative_difference(runs[1], runs[0]) < 1e-12


@pytest.mark.parametrize("where", ["optimizer", "global"])
def test_step_hooks_run_because_the_child_is_driven_through_step(where):
    model = make_model(torch.float64)
    adam, calls = Adam(model.parameters(), lr=1e-2), []
    if where == "optimizer":
        handle = adam.register_step_post_hook(lambda *a: calls.append(1))
    else:
        handle = register_optimizer_step_post_hook(
            lambda opt, *a: calls.append(1) if opt is adam else None
        )
    try:
        opt = Graft(model.named_parameters(), adam, SGD(model.parameters(), lr=0.1), fused=True)
        train(model, opt, 3)
        assert not fused.runs_children(opt, list(model.parameters()))
    finally:
        handle.remove()
    assert len(calls) == 3
    train(model, opt, 1)
    assert fused.runs_children(opt, list(model.parameters()))  # hooks gone: the kernels again


def test_path_blackbox_drives_torch_children_through_step():
    model = make_model()
    opt = Graft(
        model.named_parameters(), *PAIRS["adam-fused#sgdm"](model), path="blackbox", fused=True
    )
    train(model, opt, 2)
    assert fused.unsupported(opt, list(model.parameters())) is None
    assert not fused.runs_children(opt, list(model.parameters()))


def test_a_non_finite_layer_is_skipped_and_the_torch_children_never_see_it():
    runs = []
    for use_fused in (False, True):
        model = make_model(torch.float64)
        opt = Graft(model.named_parameters(), *PAIRS["adamw#nesterov"](model), fused=use_fused)
        train(model, opt, 2)
        compute_grads(model, 2)
        model.fc2.weight.grad[0, 0] = float("nan")
        before = model.fc2.weight.detach().clone()
        opt.step()
        assert torch.equal(model.fc2.weight, before)
        assert torch.isfinite(opt.direction.state[model.fc2.weight]["momentum_buffer"]).all()
        train(model, opt, 2, start=3)
        runs.append((model, opt))
    (ref_model, ref), (fast_model, fast) = runs
    assert int(fast.nonfinite_skips.sum()) == int(ref.nonfinite_skips.sum()) == 1
    assert max_relative_difference(fast_model, ref_model) < 1e-12
    _assert_same_state(_children(ref), _children(fast), ref_model, fast_model, 1e-12)


def test_by_default_a_big_model_runs_torch_children_in_the_kernels(monkeypatch):
    """No flag: over MIN_ELEMENTS_NATIVE numbers torch's Adam and SGD take the kernels, which
    step them on their own states (the fast path of BENCHMARKS.md), with the reference result."""
    calls = []
    propose = fused.propose
    monkeypatch.setattr(fused, "propose", lambda *a: calls.append(1) or propose(*a))
    layers = []
    for use_fused in (None, False):
        torch.manual_seed(0)
        layer = torch.nn.Linear(300, 250).to(torch.float64)  # 75,250 numbers
        assert fused.MIN_ELEMENTS_NATIVE <= 75_250 < fused.MIN_ELEMENTS_BLACK_BOX
        opt = Graft(
            layer.named_parameters(),
            Adam(layer.parameters(), lr=1e-3, fused=True),
            SGD(layer.parameters(), lr=0.1, momentum=0.9, fused=True),
            fused=use_fused,
        )
        for step in range(3):
            generator = torch.Generator().manual_seed(step)
            for p in layer.parameters():
                p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            opt.step()
        layers.append(layer)
        if use_fused is None:
            assert len(calls) == 3 and fused.runs_children(opt, list(layer.parameters()))
    assert len(calls) == 3  # the reference run took the reference path
    assert max_relative_difference(layers[0], layers[1]) < 1e-12
