"""The fused CPU kernels against the reference foreach path: same weights, norms and states."""

import math
import types
import warnings

import pytest
import torch

from grafting_core import RULES, Graft, NormLog, fused, reference
from tests.helpers import (
    CountLocalScalarDense,
    compute_grads,
    make_model,
    max_relative_difference,
    train,
)

pytestmark = pytest.mark.skipif(
    not fused.available(), reason=f"fused kernels unavailable: {fused.unavailable_reason}"
)

SGD_M = ("sgd", {"lr": 0.05, "momentum": 0.9})
PAIRS = [
    (("adam", {"lr": 1e-2}), SGD_M),
    (("adamw", {"lr": 1e-2, "weight_decay": 0.1}), ("sgd", {"lr": 0.1})),
    (
        ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
        ("adam", {"lr": 1e-3, "betas": (0.8, 0.99)}),
    ),
    (("adam", {"lr": 1e-2, "weight_decay": 0.01}), ("adamw", {"lr": 0.3})),
    (("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}), SGD_M),
    (
        ("adagrad", {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.01}),
        ("rmsprop", {"lr": 1e-3, "momentum": 0.5}),
    ),
    (("rmsprop", {"lr": 1e-3, "weight_decay": 0.01}), ("sign_sgd", {"lr": 1e-3})),
    (
        ("lion", {"lr": 1e-3, "betas": (0.2, 0.4), "weight_decay": 0.1}),  # lerp weights >= 1/2
        ("sign_sgd", {"lr": 1e-3, "momentum": 0.3, "weight_decay": 0.01}),
    ),
    (("sign_sgd", {"lr": 1e-3, "momentum": 0.9}), ("lion", {"lr": 1e-3, "weight_decay": 0.1})),
    (("adam", {"lr": 1e-2}), ("adagrad", {"lr": 0.05, "initial_accumulator_value": 0.1})),
    # LARS and LAMB: their trust ratios between the kernel passes
    (("lamb", {"lr": 1e-2}), SGD_M),
    (SGD_M, ("lars", {"lr": 0.5, "weight_decay": 0.01, "trust_coefficient": 0.02})),
    (
        ("lars", {"lr": 0.5, "momentum": 0.8}),
        ("lamb", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    ),
    (("lamb", {"lr": 1e-2, "weight_decay": 0.05, "eps": 1e-8}), ("rmsprop", {"lr": 1e-3})),
    (("adagrad", {"lr": 0.05}), ("lars", {"lr": 0.5, "momentum": 0.0, "weight_decay": 0.1})),
]
PAIR_IDS = [
    "adam#sgdm",
    "adamw#sgd",
    "nesterov#adam",
    "adam-wd#adamw",
    "dampened#sgdm",
    "adagrad#rmsprop-m",
    "rmsprop#sign",
    "lion#signum",
    "signum#lion",
    "adam#adagrad",
    "lamb#sgdm",
    "sgdm#lars-wd",
    "lars-m#lamb-wd",
    "lamb-wd#rmsprop",
    "adagrad#lars-no-m",
]


def _pair(specs, dtype, granularity="tensor", path="native", steps=3, **kwargs):
    """The same run on the reference path and on the fused one: (models, optimizers)."""
    models, opts = [], []
    for use_fused in (False, True):
        model = make_model(dtype)
        opt = Graft(
            model.named_parameters(),
            *specs,
            granularity=granularity,
            path=path,
            fused=use_fused,
            **kwargs,
        )
        train(model, opt, steps)
        models.append(model)
        opts.append(opt)
    assert fused.unsupported(opts[1], list(models[1].parameters())) is None
    return models, opts


def _assert_same_norms(ref, fast, rtol):
    torch.testing.assert_close(fast.last_norms, ref.last_norms, rtol=rtol, atol=0, equal_nan=True)


@pytest.mark.parametrize("granularity", ["tensor", "module", "global"])
@pytest.mark.parametrize("specs", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_fused_matches_reference_float64(specs, granularity, path):
    """Over 20 float64 steps the fused and reference paths agree to rounding."""
    (ref_model, fast_model), (ref, fast) = _pair(specs, torch.float64, granularity, path, 20)
    assert max_relative_difference(fast_model, ref_model) < 1e-12
    _assert_same_norms(ref, fast, 1e-12)
    if path == "native":
        for child in ("magnitude", "direction"):
            for p_ref, p_fast in zip(ref_model.parameters(), fast_model.parameters()):
                a, b = getattr(ref, child).state[p_ref], getattr(fast, child).state[p_fast]
                assert a["step"] == b["step"]
                for name in a:
                    if torch.is_tensor(a[name]):  # norm-wise: single entries may be ~0
                        assert float((b[name] - a[name]).norm()) <= 1e-12 * float(a[name].norm())


@pytest.mark.parametrize("specs", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_fused_matches_reference_float32(specs, path):
    """In float32 a few steps agree within 1e-6 relative (norms: float blocks summed in double)."""
    (ref_model, fast_model), (ref, fast) = _pair(specs, torch.float32, "module", path, 3)
    assert max_relative_difference(fast_model, ref_model) < 1e-6
    _assert_same_norms(ref, fast, 1e-5)


@pytest.mark.parametrize("direction", [SGD_M, ("lion", {"lr": 1e-3})], ids=["sgdm", "lion"])
def test_replayed_schedule_fused_matches_reference(direction):
    """A recorded Adam schedule replayed onto D (black box: the kernels; native: the reference
    path, by design) gives the reference path's weights and norms in float64."""
    source = make_model(torch.float64)
    log = NormLog(Graft(source.named_parameters(), PAIRS[0][0], None))
    train(source, log.graft, 12)
    schedule = log.magnitude_schedule()
    runs = []
    for path, use_fused in (("blackbox", False), ("blackbox", True), ("native", None)):
        model = make_model(torch.float64)
        opt = Graft(model.named_parameters(), schedule, direction, path=path, fused=use_fused)
        compute_grads(model, 0)
        assert (fused.unsupported(opt, list(model.parameters())) is None) == (path == "blackbox")
        train(model, opt, 12)
        runs.append((model, opt))
    (ref_model, ref), *others = runs
    for model, opt in others:
        assert max_relative_difference(model, ref_model) < 1e-12
        _assert_same_norms(ref, opt, 1e-12)


def test_fused_black_box_with_torch_fused_children():
    """Driven through their step() (path="blackbox"; by default the kernels step torch's
    SGD/Adam on their own states, tests/library/test_torch_children.py), with one scratch buffer."""
    models, opts = [], []
    for use_fused in (False, True):
        model = make_model()
        adam = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
        opt = Graft(model.named_parameters(), adam, sgd, path="blackbox", fused=use_fused)
        train(model, opt, 3)
        models.append(model)
        opts.append(opt)
    assert max_relative_difference(models[1], models[0]) < 1e-6
    scratch = sum(t.numel() for t in opts[1]._scratch.values())
    assert scratch == sum(p.numel() for p in models[1].parameters())


@pytest.mark.parametrize("specs", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_fused_skips_params_without_grad(path, specs):
    runs = []
    for use_fused in (False, True):
        model = make_model(torch.float64)
        model.fc2.bias.requires_grad_(False)
        opt = Graft(model.named_parameters(), *specs, path=path, fused=use_fused)
        for step in range(3):
            compute_grads(model, step)
            model.out.bias.grad = None
            opt.step()
        runs.append((model, opt))
    (ref_model, ref), (fast_model, fast) = runs
    assert max_relative_difference(fast_model, ref_model) < 1e-12
    _assert_same_norms(ref, fast, 1e-12)
    names = list(fast.layers.names)
    assert math.isnan(fast.last_norms[names.index("out.bias"), 0])
    if path == "native":
        assert len(fast.direction.state[fast_model.out.bias]) == 0


TRUST_PAIRS = [i for i, specs in enumerate(PAIRS) if {name for name, _ in specs} & {"lars", "lamb"}]


@pytest.mark.parametrize(
    "specs", [PAIRS[i] for i in TRUST_PAIRS], ids=[PAIR_IDS[i] for i in TRUST_PAIRS]
)
def test_fused_trust_ratio_of_zero_weights_is_one(specs):
    """A tensor of zero weights (‖w‖ = 0: LARS's and LAMB's τ = 1) moves as on the reference
    path, in float64 to 1e-12."""
    runs = []
    for use_fused in (False, True):
        model = make_model(torch.float64)
        with torch.no_grad():
            model.fc2.bias.zero_()
        opt = Graft(model.named_parameters(), *specs, fused=use_fused)
        compute_grads(model, 0)
        assert fused.unsupported(opt, list(model.parameters())) is None
        train(model, opt, 3)
        runs.append(model)
    ref_model, fast_model = runs
    assert bool(fast_model.fc2.bias.any())
    assert max_relative_difference(fast_model, ref_model) < 1e-12


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("order", ["lars#lamb", "lamb#lars"])
def test_fused_trust_ratios_take_each_groups_hyperparameters(order, dtype, rtol):
    """Two groups with their own lr, weight decay and trust coefficient: each tensor's trust
    ratio and steps as on the reference path."""
    lars = ("lars", {"lr": 0.5, "trust_coefficient": 0.02})
    lamb = ("lamb", {"lr": 1e-2})
    specs = (lars, lamb) if order == "lars#lamb" else (lamb, lars)
    options = (
        {"magnitude.weight_decay": 0.05, "direction.lr": 0.3},
        {"magnitude.lr": 0.02, "direction.weight_decay": 0.1},
    )
    lars_role = "magnitude" if order == "lars#lamb" else "direction"
    runs = []
    for use_fused in (False, True):
        model = make_model(dtype)
        named = list(model.named_parameters())
        hidden = [p for name, p in named if name.startswith("fc")]
        head = [p for name, p in named if not name.startswith("fc")]
        groups = [{"params": ps, **o} for ps, o in zip((hidden, head), options)]
        groups[1][f"{lars_role}.trust_coefficient"] = 0.005
        opt = Graft(groups, *specs, fused=use_fused)
        compute_grads(model, 0)
        assert fused.unsupported(opt, list(model.parameters())) is None
        train(model, opt, 6)
        runs.append(model)
    assert max_relative_difference(runs[1], runs[0]) < rtol


@pytest.mark.parametrize("specs", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_fused_non_finite_gradient_skips_only_that_layer(path, specs):
    runs = []
    for use_fused in (False, True):
        model = make_model(torch.float64)
        opt = Graft(model.named_parameters(), *specs, path=path, fused=use_fused)
        train(model, opt, 2)
        compute_grads(model, 2)
        model.fc2.weight.grad[0, 0] = float("nan")
        model.out.weight.grad[1, 1] = float("inf")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved == set(before) - {"fc2.weight", "out.weight"}
        assert torch.equal(model.fc2.weight.grad, torch.zeros_like(model.fc2.weight))
        train(model, opt, 2, start=3)
        runs.append((model, opt))
    (ref_model, ref), (fast_model, fast) = runs
    assert int(fast.nonfinite_skips.sum()) == int(ref.nonfinite_skips.sum()) == 2
    assert max_relative_difference(fast_model, ref_model) < 1e-12


@pytest.mark.parametrize("specs", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_fused_step_makes_no_host_sync(path, specs):
    model = make_model()
    opt = Graft(model.named_parameters(), *specs, path=path, fused=True)
    for step in range(3):
        compute_grads(model, step)
        assert fused.unsupported(opt, list(model.parameters())) is None
        with CountLocalScalarDense() as counter:
            opt.step()
        assert counter.count == 0


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_fused_threads_do_not_change_results(dtype, rtol):
    """Bit-equal norms at any thread count; a float32 tensor's blocks are summed in float
    (float32 rounding), a float64 tensor's in double; the norm in the tensor's dtype."""
    grads = [torch.randn(40_000, dtype=dtype) for _ in range(3)]
    one = _grad_norms(grads, threads=1)
    three = _grad_norms(grads, threads=3)
    assert torch.equal(one, three)
    expected = torch.stack([g.double().norm() for g in grads]).to(dtype)
    torch.testing.assert_close(one, expected, rtol=rtol, atol=0)


def _grad_norms(grads, threads):
    """‖g‖ per tensor from a guarded pass of a stateless rule with lr 0 (zero steps), the
    three tensors in two layers (segments [0, 1], [2])."""
    plan = types.SimpleNamespace(index=torch.tensor([0, 0, 1]), is_identity=False)
    norms = fused._run(
        fused.PROPOSE_M,
        fused._layout(grads),
        grads[0].dtype,
        [grads, None, None, None],
        kinds=(fused.PLAIN, 0),
        guard=(fused.GRAD_SUMS, fused._Guard(plan)),
        threads=threads,
    )
    return norms[2]


def _count_calls(monkeypatch, module):
    """How many steps ``module``'s backend has proposed since (a list that grows)."""
    calls, propose = [], module.propose
    monkeypatch.setattr(module, "propose", lambda *a: calls.append(1) or propose(*a))
    return calls


def _kernels_pay_at_any_size(monkeypatch):
    """The default then chooses by support alone (the test models are small)."""
    monkeypatch.setattr(fused, "MIN_ELEMENTS_NATIVE", 0)
    monkeypatch.setattr(fused, "MIN_ELEMENTS_BLACK_BOX", 0)


def _train_big(dtype, steps, specs=PAIRS[0], **kwargs):
    """``steps`` steps of ``specs`` (default Adam#SGD-m) on a Linear(800, 700), 561,400
    numbers (over both MIN_ELEMENTS), on seeded random gradients; returns (layer, Graft)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(800, 700).to(dtype)
    opt = Graft(layer.named_parameters(), *specs, **kwargs)
    for step in range(steps):
        generator = torch.Generator().manual_seed(step)
        for p in layer.parameters():
            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
        opt.step()
    return layer, opt


BIG_PAIRS = ["adam#sgdm", "lamb#sgdm", "sgdm#lars-wd"]


@pytest.mark.parametrize("pair", BIG_PAIRS)
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_default_graft_takes_the_fused_kernels_with_the_reference_result(monkeypatch, path, pair):
    """No flag, a big enough model: the kernels take every step, with the reference weights
    (LARS and LAMB too: their trust ratios between the passes)."""
    specs = PAIRS[PAIR_IDS.index(pair)]
    assert sum(p.numel() for p in torch.nn.Linear(800, 700).parameters()) >= max(
        fused.MIN_ELEMENTS_NATIVE, fused.MIN_ELEMENTS_BLACK_BOX
    )
    fast_calls = _count_calls(monkeypatch, fused)
    reference_calls = _count_calls(monkeypatch, reference)
    default, _ = _train_big(torch.float64, 4, specs, path=path)
    assert (len(fast_calls), len(reference_calls)) == (4, 0)
    ref, _ = _train_big(torch.float64, 4, specs, path=path, fused=False)
    assert (len(fast_calls), len(reference_calls)) == (4, 4)
    assert max_relative_difference(default, ref) < 1e-12


@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_default_graft_on_a_small_model_takes_the_reference_path(monkeypatch, path):
    """Below MIN_ELEMENTS the reference path is faster: the default takes it; fused=True
    still takes the kernels."""
    fast_calls = _count_calls(monkeypatch, fused)
    reference_calls = _count_calls(monkeypatch, reference)
    model = make_model()
    assert sum(p.numel() for p in model.parameters()) < fused.MIN_ELEMENTS_NATIVE
    train(model, Graft(model.named_parameters(), *PAIRS[0], path=path), 3)
    assert (len(fast_calls), len(reference_calls)) == (0, 3)
    train(model, Graft(model.named_parameters(), *PAIRS[0], path=path, fused=True), 3)
    assert (len(fast_calls), len(reference_calls)) == (3, 3)


UNSUPPORTED = {  # case -> (dtype, magnitude, direction, grafted, words of the warning)
    "bfloat16": (torch.bfloat16, "adam", "sgd", None, "float32/float64"),
    "partial-black-box": (torch.float32, "adafactor", "sgd", "hidden", "black-box children"),
    "centred": (torch.float32, "adam", ("rmsprop", {"centered": True}), None, "'rmsprop'"),
    "plain-m": (torch.float32, "adam", None, None, "direction=None"),
    "partial-lion": (torch.float32, "lion", "sgd", "hidden", "Lion as magnitude"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
@pytest.mark.parametrize("flag", [None, True])
def test_unsupported_steps_take_the_reference_path(monkeypatch, case, flag):
    """Default: silently the reference path. fused=True: the same, with ONE warning naming why."""
    dtype, magnitude, direction, grafted, reason = UNSUPPORTED[case]
    _kernels_pay_at_any_size(monkeypatch)
    reference_calls = _count_calls(monkeypatch, reference)
    model = make_model(dtype)
    opt = Graft(model.named_parameters(), magnitude, direction, grafted=grafted, fused=flag)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, 3)
    assert len(reference_calls) == 3
    assert torch.isfinite(opt.last_norms[:, 0]).all()
    if flag is None:
        assert not caught
    else:
        assert len(caught) == 1 and caught[0].category is RuntimeWarning
        assert reason in str(caught[0].message) and "reference path" in str(caught[0].message)
        assert caught[0].filename == __import__("tests.helpers").helpers.__file__  # train()


@pytest.mark.parametrize("flag", [None, True])
def test_without_compiler_the_reference_path_runs(monkeypatch, flag):
    _kernels_pay_at_any_size(monkeypatch)
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "unavailable_reason", "no C compiler (test)")
    model = make_model()
    opt = Graft(model.named_parameters(), *PAIRS[0], fused=flag)
    compute_grads(model, 0)
    assert "no C compiler (test)" in fused.unsupported(opt, list(model.parameters()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    assert len(caught) == (1 if flag else 0)
    assert opt.graft_step == 1 and torch.isfinite(opt.last_norms).all()


def test_without_openmp_the_kernels_build_single_threaded(monkeypatch, tmp_path):
    # A compiler without OpenMP (e.g. clang with no libomp): the next flag set is used.
    grads = [torch.randn(70_000) for _ in range(3)]
    parallel = _grad_norms(grads, threads=2)
    monkeypatch.setenv("GRAFTING_FUSED_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "_THREADING", ["-fno-such-openmp-flag", "-fopenmp-simd"])
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "unavailable_reason", None)
    assert fused.available()
    assert len(list(tmp_path.glob("fused_*.so"))) == 1  # the failed build left nothing
    serial = _grad_norms(grads, threads=2)
    assert torch.equal(serial, parallel)


#: For each hyperparameter a kernel rule has (rules.RULES[...].defaults), options that move
#: it off its default. A new hyperparameter in rules.py fails the test below until the
#: kernels encode it and it is listed here.
VARIED = {
    "lr": {"lr": 0.02},
    "momentum": {"momentum": 0.8},
    "dampening": {"momentum": 0.8, "dampening": 0.3},
    "nesterov": {"momentum": 0.8, "nesterov": True},
    "weight_decay": {"weight_decay": 0.05},
    "betas": {"betas": (0.7, 0.95)},
    "eps": {"eps": 1e-3},
    "lr_decay": {"lr_decay": 0.05},
    "initial_accumulator_value": {"initial_accumulator_value": 0.1},
    "alpha": {"alpha": 0.9},
    "trust_coefficient": {"trust_coefficient": 0.05},
}
NO_KERNEL = {("rmsprop", "centered"): {"centered": True}}  # refused: the reference path
KERNEL_CASES = [(name, key) for name in fused.KERNEL_RULES for key in RULES[name].defaults]


@pytest.mark.parametrize("role", ["magnitude", "direction"])
@pytest.mark.parametrize("name,key", KERNEL_CASES, ids=[f"{n}-{k}" for n, k in KERNEL_CASES])
def test_kernels_encode_every_hyperparameter_of_their_rules(name, key, role):
    """Each rule with a kernel, each of its hyperparameters off its default, as M and as D:
    the kernels' weights and states equal the rule's own (rules.py) to 1e-12 in float64."""
    other = ("sgd", {"lr": 0.05, "momentum": 0.5}) if name != "sgd" else ("adam", {"lr": 0.01})
    if (name, key) in NO_KERNEL:
        spec = (name, {"lr": 0.01, **NO_KERNEL[name, key]})
        model = make_model(torch.float64)
        opt = Graft(
            model.named_parameters(), *((spec, other) if role == "magnitude" else (other, spec))
        )
        compute_grads(model, 0)
        assert f"no kernel for the {role} {name!r}" in fused.unsupported(
            opt, list(model.parameters())
        )
        return
    assert key in VARIED, f"{name}'s hyperparameter {key!r} is not checked against the kernels"
    spec = (name, {"lr": 0.01, **VARIED[key]})
    specs = (spec, other) if role == "magnitude" else (other, spec)
    (ref_model, fast_model), (ref, fast) = _pair(specs, torch.float64, steps=10)
    assert max_relative_difference(fast_model, ref_model) < 1e-12
    child_ref, child_fast = getattr(ref, role), getattr(fast, role)
    for p_ref, p_fast in zip(ref_model.parameters(), fast_model.parameters()):
        for buffer, value in child_ref.state[p_ref].items():
            if torch.is_tensor(value):
                torch.testing.assert_close(
                    child_fast.state[p_fast][buffer], value, rtol=1e-12, atol=1e-15
                )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernels_are_built_only_for_a_step_they_could_take(monkeypatch, dtype):
    """A step the kernels cannot take (bf16 here, as CUDA tensors) never compiles them."""
    builds = []
    monkeypatch.setattr(fused, "_build", lambda: builds.append(1))  # None: "could not build"
    _kernels_pay_at_any_size(monkeypatch)
    model = make_model(dtype)
    train(model, Graft(model.named_parameters(), *PAIRS[0]), 2)
    assert len(builds) == (0 if dtype == torch.bfloat16 else 2)


GUARD_PAIRS = [0, 5, PAIR_IDS.index("lars-m#lamb-wd")]  # stateful, one/two passes, trust
PARTIAL_PAIRS = [(specs, i) for specs, i in zip(PAIRS, PAIR_IDS) if specs[0][0] != "lion"]
PARTIAL_CASES = {
    "hidden": ("tensor", "hidden"),
    "none": ("tensor", ()),
    "modules": ("module", lambda name: not name.startswith("out.")),
}


@pytest.mark.parametrize("case", PARTIAL_CASES)
@pytest.mark.parametrize("specs", [s for s, _ in PARTIAL_PAIRS], ids=[i for _, i in PARTIAL_PAIRS])
def test_fused_partial_grafting_matches_reference(specs, case):
    """grafted=: D's step on the chosen layers, M's own elsewhere, in the kernels: the
    reference path's weights, norms and both children's states (float64 to 1e-12)."""
    granularity, grafted = PARTIAL_CASES[case]
    (ref_model, fast_model), (ref, fast) = _pair(
        specs, torch.float64, granularity, "native", 10, grafted=grafted
    )
    assert fast.partial
    assert max_relative_difference(fast_model, ref_model) < 1e-12
    _assert_same_norms(ref, fast, 1e-12)
    for role in ("magnitude", "direction"):
        child_ref, child_fast = getattr(ref, role), getattr(fast, role)
        assert len(child_fast.state) == len(child_ref.state)  # D: the grafted tensors only
        for p_ref, p_fast in zip(ref_model.parameters(), fast_model.parameters()):
            for buffer, value in child_ref.state.get(p_ref, {}).items():
                if torch.is_tensor(value):
                    torch.testing.assert_close(
                        child_fast.state[p_fast][buffer], value, rtol=1e-12, atol=1e-15
                    )


@pytest.mark.parametrize(
    "specs", [PAIRS[i] for i in GUARD_PAIRS], ids=[PAIR_IDS[i] for i in GUARD_PAIRS]
)
def test_fused_partial_grafting_float32_skips_and_non_finite(specs):
    """float32, a parameter without gradient and NaN/inf in a grafted and an ungrafted layer."""
    runs = []
    for use_fused in (False, True):
        model = make_model()
        opt = Graft(model.named_parameters(), *specs, grafted="hidden", fused=use_fused)
        train(model, opt, 2)
        compute_grads(model, 2)
        model.fc2.weight.grad[0, 0] = float("nan")  # grafted
        model.out.weight.grad[1, 1] = float("inf")  # not grafted (the head)
        model.fc1.bias.grad = None
        opt.step()
        train(model, opt, 2, start=3)
        runs.append((model, opt))
    (ref_model, ref), (fast_model, fast) = runs
    assert fused.unsupported(fast, list(fast_model.parameters())) is None
    assert int(fast.nonfinite_skips.sum()) == int(ref.nonfinite_skips.sum()) == 2
    assert max_relative_difference(fast_model, ref_model) < 1e-6
    _assert_same_norms(ref, fast, 1e-5)


GUARD_GRANULARITIES = {
    "tensor": "tensor",
    "module": "module",
    "global": "global",
    "interleaved": lambda name: name.rpartition(".")[2],  # all weights, all biases: 2 layers
}


@pytest.mark.parametrize("granularity", GUARD_GRANULARITIES)
@pytest.mark.parametrize(
    "specs", [PAIRS[i] for i in GUARD_PAIRS], ids=[PAIR_IDS[i] for i in GUARD_PAIRS]
)
def test_fused_guarded_pass_skips_whole_layers_at_any_thread_count(specs, granularity):
    """Tensors of several chunks each, a NaN in one layer's last chunk: the pass that scans
    each segment of layers before proposing it skips exactly what the reference path skips
    (float64 to 1e-12), and 1 or 3 threads give bit-equal weights and norms. A segment of
    one thread (tensor, module: up to 32 chunks) and shared ones (global, interleaved)."""
    runs = []
    threads = torch.get_num_threads()
    for use_fused, n_threads in ((False, 1), (True, 1), (True, 3)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1000, 400), torch.nn.Linear(400, 400))
        model = model.double()
        opt = Graft(
            model.named_parameters(),
            *specs,
            granularity=GUARD_GRANULARITIES[granularity],
            fused=use_fused,
        )
        torch.set_num_threads(n_threads)
        try:
            for step in range(4):
                generator = torch.Generator().manual_seed(step)
                for p in model.parameters():
                    p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
                if step == 2:
                    model[0].weight.grad[-1, -1] = float("nan")
                opt.step()
        finally:
            torch.set_num_threads(threads)
        runs.append((model, opt))
    (ref_model, ref), (one_model, one), (three_model, three) = runs
    assert int(ref.nonfinite_skips.sum()) == 1
    assert torch.equal(one.nonfinite_skips, ref.nonfinite_skips)
    assert max_relative_difference(one_model, ref_model) < 1e-12
    _assert_same_norms(ref, one, 1e-12)
    for a, b in zip(one_model.parameters(), three_model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(one.last_norms, three.last_norms)
