"""Graft against independent computations: plain optimizers, float64 formulas, itself resumed."""

import copy
import math
import pickle

import pytest
import torch

from grafting_core import Graft, NormLog, build_optimizer, optimizer_names
from grafting_core.graft import NORM_FIELDS
from grafting_core.registry import is_native
from tests.helpers import (
    CountLocalScalarDense,
    compute_grads,
    make_model,
    max_relative_difference,
    train,
)

NATIVE = [n for n in optimizer_names() if is_native(n)]
HPARAMS = {  # A's hyperparameters for the A#A tests (D's lr differs: it must cancel)
    "sgd": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    "adam": {"lr": 1e-2},
    "adamw": {"lr": 1e-2, "weight_decay": 0.1},
    "adagrad": {"lr": 0.05},
    "rmsprop": {"lr": 1e-3, "momentum": 0.5},
    "lion": {"lr": 1e-3, "weight_decay": 0.01},
    "sign_sgd": {"lr": 1e-3, "momentum": 0.9},
    "lars": {"lr": 1.0},
    "lamb": {"lr": 1e-2},
    "muon": {"lr": 1e-2},
    "adafactor": {"lr": 1e-2},
}


def scaled_lr(name, factor):
    hp = dict(HPARAMS[name])
    hp["lr"] = hp["lr"] * factor
    return (name, hp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", ["native", "blackbox"])
@pytest.mark.parametrize("name", NATIVE)
def test_graft_a_a_reproduces_a(name, path, dtype):
    """A(lr)#A(7·lr) equals plain A(lr) over 50 steps (D's learning rate cancels)."""
    grafted, plain = make_model(dtype), make_model(dtype)
    opt = Graft(grafted.named_parameters(), (name, HPARAMS[name]), scaled_lr(name, 7.0), path=path)
    train(grafted, opt, 50)
    train(plain, build_optimizer((name, HPARAMS[name]), plain.parameters()), 50)
    assert opt.native == (path == "native")
    assert max_relative_difference(grafted, plain) < (1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize(
    "name,cls", [("muon", torch.optim.Muon), ("adafactor", torch.optim.Adafactor)]
)
def test_black_box_registry_entries_graft_onto_themselves(name, cls):
    grafted, plain = make_model(bias=False), make_model(bias=False)
    opt = Graft(grafted.named_parameters(), (name, HPARAMS[name]), scaled_lr(name, 3.0))
    assert not opt.native
    train(grafted, opt, 30)
    train(
        plain,
        cls(
            plain.parameters(),
            **build_optimizer((name, HPARAMS[name]), [torch.zeros(2, 2)]).defaults,
        ),
        30,
    )
    assert max_relative_difference(grafted, plain) < 1e-5


def test_third_party_optimizer_instances():
    """Any torch.optim.Optimizer instance works (black box), e.g. NAdam#NAdam = NAdam."""
    grafted, plain = make_model(), make_model()
    magnitude = torch.optim.NAdam(grafted.parameters(), lr=1e-2)
    direction = torch.optim.NAdam(grafted.parameters(), lr=5e-2)
    train(grafted, Graft(grafted.named_parameters(), magnitude, direction), 30)
    train(plain, torch.optim.NAdam(plain.parameters(), lr=1e-2), 30)
    assert max_relative_difference(grafted, plain) < 1e-5


def test_module_path_spec_imports_the_class():
    model = make_model()
    opt = Graft(model.named_parameters(), ("torch.optim:RAdam", {"lr": 1e-3}), "sgd")
    assert isinstance(opt.magnitude, torch.optim.RAdam)
    train(model, opt, 2)


PAIR_NAMES = ["sgd", "adam", "adagrad", "rmsprop", "lamb"]
PAIR_HP = {**HPARAMS, "sgd": {"lr": 0.05, "momentum": 0.9}}


@pytest.mark.parametrize("direction", PAIR_NAMES)
@pytest.mark.parametrize("magnitude", PAIR_NAMES)
def test_native_and_black_box_paths_agree(magnitude, direction):
    a, b = make_model(), make_model()
    specs = ((magnitude, PAIR_HP[magnitude]), (direction, PAIR_HP[direction]))
    train(a, Graft(a.named_parameters(), *specs, path="native"), 30)
    train(b, Graft(b.named_parameters(), *specs, path="blackbox"), 30)
    assert max_relative_difference(a, b) < 1e-5


def _hand_step(model, granularity, lr):
    """One Adam#SGD-momentum step in float64, from independent torch optimizers."""
    after = {}
    for role, make in (
        ("m", lambda p: torch.optim.Adam(p, lr=1e-2)),
        ("d", lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9)),
    ):
        clone = copy.deepcopy(model)
        compute_grads(clone, 0)
        make(clone.parameters()).step()
        after[role] = dict(clone.named_parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    delta = {role: {n: after[role][n].detach() - before[n] for n in before} for role in after}
    groups = {}
    for n in before:
        key = {"tensor": n, "module": n.rpartition(".")[0], "global": "all"}.get(granularity)
        key = granularity(n) if callable(granularity) else key
        groups.setdefault(key, []).append(n)
    expected = {}
    for names in groups.values():
        norm_m = math.sqrt(sum(float(delta["m"][n].square().sum()) for n in names))
        norm_d = math.sqrt(sum(float(delta["d"][n].square().sum()) for n in names))
        for n in names:
            expected[n] = before[n] + lr * norm_m / norm_d * delta["d"][n]
    return expected


@pytest.mark.parametrize("path", ["native", "blackbox"])
@pytest.mark.parametrize("granularity", ["tensor", "module", "global", "callable"])
def test_grafted_update_equals_float64_formula(granularity, path):
    model = make_model(torch.float64)
    if granularity == "callable":
        granularity = lambda name: "weights" if name.endswith("weight") else "biases"  # noqa: E731
    expected = _hand_step(model, granularity, lr=0.7)
    opt = Graft(
        model.named_parameters(),
        ("adam", {"lr": 1e-2}),
        ("sgd", {"lr": 0.3, "momentum": 0.9}),
        granularity=granularity,
        lr=0.7,
        path=path,
    )
    compute_grads(model, 0)
    opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_state_dict_round_trip_resumes_exactly(path):
    specs = (("adam", {"lr": 1e-2}), ("sgd", {"lr": 0.1, "momentum": 0.9}))
    straight = make_model()
    train(straight, Graft(straight.named_parameters(), *specs, path=path), 20)

    first = make_model()
    opt = Graft(first.named_parameters(), *specs, path=path)
    train(first, opt, 10)
    saved_weights = copy.deepcopy(first.state_dict())
    saved = copy.deepcopy(opt.state_dict())
    assert set(saved) == {"state", "param_groups"}  # the standard shape (DCP keeps only it)

    resumed = make_model(seed=123)
    resumed.load_state_dict(saved_weights)
    opt2 = Graft(resumed.named_parameters(), *specs, path=path)
    opt2.load_state_dict(saved)
    assert opt2.graft_step == 10
    train(resumed, opt2, 10, start=10)
    assert max_relative_difference(resumed, straight) == 0.0


def test_load_state_dict_rejects_other_layers():
    opt = Graft(make_model().named_parameters(), "adam", "sgd")
    other = Graft(make_model(bias=False).named_parameters(), "adam", "sgd")
    with pytest.raises(ValueError):
        other.load_state_dict(opt.state_dict())


def test_scheduler_on_magnitude_shapes_the_grafted_step():
    """A scheduler on M's lr gives M's scheduled trajectory: Adam(sched)#Adam = Adam(sched)."""
    decay = lambda t: 1.0 / (1 + 0.2 * t)  # noqa: E731
    grafted, plain = make_model(), make_model()
    opt = Graft(grafted.named_parameters(), ("adam", {"lr": 1e-2}), ("adam", {"lr": 0.5}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt.magnitude, decay)
    ref = torch.optim.Adam(plain.parameters(), lr=1e-2)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, decay)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")  # no "scheduler before optimizer" warning
        train(grafted, opt, 30, scheduler=sched)
    train(plain, ref, 30, scheduler=ref_sched)
    assert max_relative_difference(grafted, plain) < 1e-5


def test_scheduler_on_graft_scales_global_lr():
    decay = lambda t: 0.9**t  # noqa: E731
    grafted, plain = make_model(), make_model()
    opt = Graft(grafted.named_parameters(), ("adam", {"lr": 1e-2}), ("adam", {"lr": 0.3}))
    ref = torch.optim.Adam(plain.parameters(), lr=1e-2)
    train(grafted, opt, 20, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, decay))
    train(plain, ref, 20, scheduler=torch.optim.lr_scheduler.LambdaLR(ref, decay))
    assert max_relative_difference(grafted, plain) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters(dtype):
    """bf16/fp16 weights train, norms are float32 and close to a float32 run."""
    low, high = make_model(dtype), make_model(torch.float32)
    adam = ("adam", {"lr": 1e-2, "eps": 1e-4})  # 1e-8 underflows in float16
    opt = Graft(low.named_parameters(), adam, ("sgd", {"lr": 0.1}))
    ref = Graft(high.named_parameters(), adam, ("sgd", {"lr": 0.1}))
    losses = train(low, opt, 30)
    ref_losses = train(high, ref, 30)
    assert opt.last_norms.dtype == torch.float32
    assert torch.isfinite(opt.last_norms).all()
    assert losses[-1] < 0.7 * losses[0]
    assert abs(losses[-1] - ref_losses[-1]) < 0.1 * ref_losses[-1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_a_a_matches_torch_in_that_precision(dtype):
    grafted, plain = make_model(dtype), make_model(dtype)
    adam = {"lr": 1e-2, "eps": 1e-4}
    train(grafted, Graft(grafted.named_parameters(), ("adam", adam), ("adam", adam)), 20)
    train(plain, torch.optim.Adam(plain.parameters(), **adam), 20)
    assert max_relative_difference(grafted, plain) < 2e-2


@pytest.mark.parametrize("granularity", ["tensor", "module", "global"])
@pytest.mark.parametrize(
    "magnitude,direction",
    [
        ("adam", "sgd"),
        ("lamb", "lars"),
        ("rmsprop", "lion"),
        ("adagrad", "sign_sgd"),
        ("adamw", "sgd"),
    ],
)
def test_native_step_makes_no_host_sync(magnitude, direction, granularity):
    model = make_model()
    opt = Graft(model.named_parameters(), magnitude, direction, granularity=granularity)
    NormLog(opt)
    for step in range(3):
        compute_grads(model, step)
        with CountLocalScalarDense() as counter:
            opt.step()
        assert counter.count == 0


def test_zero_direction_step_gives_zero_update():
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = Graft(model.named_parameters(), "adam", ("sgd", {"lr": 0.0}))
    train(model, opt, 3)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.isfinite(opt.last_norms).all()


def test_zero_gradient_layer_does_not_move_or_nan():
    model = make_model()
    opt = Graft(model.named_parameters(), "adam", "sign_sgd")
    compute_grads(model, 0)
    model.fc1.weight.grad.zero_()
    before = model.fc1.weight.detach().clone()
    opt.step()
    assert torch.equal(model.fc1.weight, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_parameters_without_grad_are_skipped_and_states_untouched():
    model = make_model()
    model.fc2.bias.requires_grad_(False)
    opt = Graft(model.named_parameters(), "adam", ("sgd", {"momentum": 0.9}))
    compute_grads(model, 0)
    model.out.bias.grad = None
    frozen = [model.fc2.bias.detach().clone(), model.out.bias.detach().clone()]
    weight_before = model.fc1.weight.detach().norm()
    opt.step()
    assert torch.equal(model.fc2.bias, frozen[0]) and torch.equal(model.out.bias, frozen[1])
    for child in (opt.magnitude, opt.direction):
        assert len(child.state[model.out.bias]) == 0 and len(child.state[model.fc2.bias]) == 0
        assert len(child.state[model.fc1.weight]) > 0
    names = list(opt.layers.names)
    for name in ("out.bias", "fc2.bias"):  # a layer that did not step: no norm at all
        assert opt.last_norms[names.index(name)].isnan().all()
    assert not opt.last_norms[names.index("fc1.weight")].isnan().any()
    weight_column = NORM_FIELDS.index("weight_norm")
    assert torch.allclose(opt.last_norms[names.index("fc1.weight"), weight_column], weight_before)


def test_sparse_gradients_are_a_clear_error():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = Graft(emb.named_parameters(), "adam", "sgd")
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse.*weight"):
        opt.step()


@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_non_finite_gradient_skips_only_that_layer(path):
    model = make_model()
    opt = Graft(model.named_parameters(), "adam", ("sgd", {"momentum": 0.9}), path=path)
    train(model, opt, 2)
    compute_grads(model, 2)
    model.fc2.weight.grad[0, 0] = float("nan")
    model.out.weight.grad[1, 1] = float("inf")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(before) - {"fc2.weight", "out.weight"}
    names = list(opt.layers.names)
    skipped = opt.last_norms[:, 5]
    assert skipped[names.index("fc2.weight")] == 1 and skipped[names.index("out.weight")] == 1
    assert int(opt.nonfinite_skips.sum()) == 2
    for child in (opt.magnitude, opt.direction):
        for state in child.state.values():
            assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))
    train(model, opt, 3, start=3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"eps": -1e-3}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"path": "fast"}, "path"),
        ({"granularity": "row"}, "granularity"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Graft(make_model().named_parameters(), "adam", "sgd", **kwargs)


def test_unknown_spec_lists_valid_names():
    with pytest.raises(ValueError, match="Valid names: sgd, adam"):
        Graft(make_model().named_parameters(), "adamax2", "sgd")


def test_module_granularity_needs_names():
    with pytest.raises(ValueError, match="named_parameters"):
        Graft(make_model().parameters(), "adam", "sgd", granularity="module")


def test_instances_over_other_parameters_are_rejected():
    model = make_model()
    with pytest.raises(ValueError, match="other parameters"):
        Graft(model.named_parameters(), torch.optim.Adam(model.fc1.parameters()), "sgd")


def test_black_box_uses_one_weights_sized_scratch():
    model = make_model()
    opt = Graft(
        model.named_parameters(),
        torch.optim.Adam(model.parameters()),
        torch.optim.SGD(model.parameters(), lr=0.1),
    )
    train(model, opt, 3)
    scratch = sum(t.numel() for t in opt._scratch.values())
    assert scratch == sum(p.numel() for p in model.parameters())


def test_add_param_group_reaches_both_children():
    model = make_model()
    extra = torch.nn.Linear(3, 3)
    opt = Graft(model.named_parameters(), "adam", "sgd")
    opt.add_param_group({"params": list(extra.named_parameters()), "lr": 0.5})
    assert len(opt.magnitude.param_groups) == len(opt.direction.param_groups) == 2
    assert "weight" in opt.layers.names
    extra(torch.randn(2, 3)).sum().backward()
    before = extra.weight.detach().clone()
    opt.step()
    assert not torch.equal(extra.weight, before)


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "kernels"])
def test_group_lrs_that_differ_scale_each_groups_step(fused):
    """Graft groups at lr 1.0 and 0.3 (float64): Adam#Adam equals torch's Adam with the
    second group's lr 0.3 times the first's, as closely as A#A equals A (0.3 is not rounded
    to float32 on the way: that alone would differ by 4e-8)."""
    grafted, plain = make_model(torch.float64), make_model(torch.float64)

    def groups(model, first, second):
        head = list(model.out.parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in head)]
        return [{"params": rest, "lr": first}, {"params": head, "lr": second}]

    adam = ("adam", {"lr": 1e-2})
    opt = Graft(groups(grafted, 1.0, 0.3), adam, ("adam", {"lr": 0.5}), fused=fused)
    train(grafted, opt, 15)
    train(plain, torch.optim.Adam(groups(plain, 1e-2, 1e-2 * 0.3)), 15)
    assert max_relative_difference(grafted, plain) < 1e-10


@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_direction_none_is_plain_magnitude_with_recording(path):
    grafted, plain = make_model(), make_model()
    opt = Graft(grafted.named_parameters(), ("adam", {"lr": 1e-2}), None, path=path)
    log = NormLog(opt)
    train(grafted, opt, 20)
    train(plain, torch.optim.Adam(plain.parameters(), lr=1e-2), 20)
    assert max_relative_difference(grafted, plain) < 1e-6
    steps, values = log.read()
    assert steps == list(range(20))
    torch.testing.assert_close(values[:, :, 0], values[:, :, 2])  # ‖Δ_M‖ is the applied step


def test_state_bytes_counts_children_states():
    from grafting_core import state_bytes

    model = make_model()
    weights = sum(p.numel() * 4 for p in model.parameters())
    opt = Graft(model.named_parameters(), "adam", ("sgd", {"momentum": 0.9}))
    train(model, opt, 1)
    assert state_bytes(opt) == 3 * weights  # Adam: m, v; SGD: momentum buffer
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, plain, 1)
    assert state_bytes(plain) == 0


def test_a_tensor_listed_twice_is_refused_not_stepped_twice():
    model = make_model()
    weight = model.fc1.weight
    with pytest.raises(ValueError, match="more than once"):
        Graft([weight, model.fc1.bias, weight], "adam", "sgd")
    with pytest.raises(ValueError, match="fc1.weight"):
        Graft([("fc1.weight", weight), ("fc1.weight", weight)], "adam", None)


@pytest.mark.parametrize("fused", [True, False], ids=["kernels", "reference"])
def test_compiled_training_step_compiles_once_and_matches_eager(fused):
    """torch.compile of forward + backward + Graft.step(): no recompilation as the step
    counts grow (Graft.step runs eagerly inside it), and the eager run's weights."""
    import torch._dynamo

    specs = (("adam", {"lr": 1e-2}), ("sgd", {"lr": 0.1, "momentum": 0.9}))
    compiled_model, eager_model = make_model(), make_model()
    opts = [Graft(m.named_parameters(), *specs, fused=fused) for m in (compiled_model, eager_model)]

    def train_step(model, opt, x, y):
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    torch._dynamo.reset()
    compiled = torch.compile(train_step, backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(8):
            x, y = __import__("tests.helpers").helpers.batch(step)
            compiled(compiled_model, opts[0], x, y)
            train_step(eager_model, opts[1], x, y)
    torch._dynamo.reset()
    assert opts[0].graft_step == 8
    assert max_relative_difference(compiled_model, eager_model) < 1e-6


def test_graft_scales_is_the_papers_formula_with_its_edge_cases():
    """graft_scales on hand-picked layers: the ratio, M's own step, a zero direction, NaN/inf."""
    from grafting_core.core import graft_scales

    inf, nan = math.inf, math.nan
    magnitude = torch.tensor([3.0, 2.0, 5.0, 1.0, inf, 4.0], dtype=torch.float64)
    direction = torch.tensor([4.0, 8.0, 0.0, 2.0, 1.0, nan], dtype=torch.float64)
    grad_finite = torch.tensor([True, True, True, False, True, True])
    grafted = torch.tensor([True, False, True, True, True, True])
    layer_of = torch.tensor([0, 0, 1, 2, 3, 4, 5])  # layer 0 holds two parameters
    lr = torch.tensor([0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    for skip in (True, False):
        finite, scales = graft_scales(
            magnitude,
            direction,
            grad_finite,
            layer_of=layer_of,
            lr=lr,
            grafted=grafted,
            eps=1e-16,
            skip_nonfinite=skip,
        )
        expected = [0.5 * 3 / (4 + 1e-16)] * 2 + [1.0, 0.0]  # ratio; M's step; ‖Δ_D‖ = 0
        if skip:
            expected += [0.0, 0.0, 0.0]  # non-finite gradient, ‖Δ_M‖ and ‖Δ_D‖: no step
            assert finite.tolist() == [True, True, True, False, False, False]
        else:
            assert finite.tolist() == grad_finite.tolist()
            torch.testing.assert_close(scales[5:6], torch.tensor([inf], dtype=torch.float64))
            expected += [0.5]
        torch.testing.assert_close(
            scales[: len(expected)], torch.tensor(expected, dtype=torch.float64)
        )


COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda obj: pickle.loads(pickle.dumps(obj))}


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize(
    "children",
    [
        (("adam", {"lr": 1e-2}), ("sgd", {"lr": 0.1, "momentum": 0.9})),
        ("torch-adam", "torch-sgd"),
    ],
    ids=["native", "torch"],
)
@pytest.mark.parametrize("fused", [False, True])
def test_a_copied_graft_steps_as_the_original(how, children, fused):
    """A model and its Graft copied together mid-run (deepcopy, pickle) go on exactly as the
    original: same weights, norms and state after three more steps."""
    model = make_model(torch.float64)
    if children[0] == "torch-adam":
        params = list(model.parameters())
        children = (
            torch.optim.Adam(params, lr=1e-2),
            torch.optim.SGD(params, lr=0.1, momentum=0.9),
        )
    opt = Graft(model.named_parameters(), *children, fused=fused)
    train(model, opt, 3)
    copy_model, copy_opt = COPIES[how]((model, opt))
    assert {id(p) for g in copy_opt.param_groups for p in g["params"]} == {
        id(p) for p in copy_model.parameters()
    }
    train(model, opt, 3, start=3)
    train(copy_model, copy_opt, 3, start=3)
    assert max_relative_difference(copy_model, model) == 0
    assert torch.equal(copy_opt.last_norms, opt.last_norms)
    assert copy_opt.graft_step == opt.graft_step == 6
    mine, theirs = copy_opt.state_dict(), opt.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    for key, state in theirs["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(mine["state"][key][name]), torch.as_tensor(value))


def test_a_graft_pickled_by_torchs_rule_is_refused_with_the_way_out():
    model = make_model()
    opt = Graft(model.named_parameters(), "adam", "sgd")
    kept_by_torch = torch.optim.Optimizer.__getstate__(opt)
    with pytest.raises(ValueError, match="state_dict"):
        Graft.__new__(Graft).__setstate__(dict(kept_by_torch))
