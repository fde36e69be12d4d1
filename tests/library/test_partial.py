"""Partial grafting (``Graft(..., grafted=...)``) and layer kinds, against independent references.

The reference is written out by hand in float64: Adam's and SGD-momentum's update formulas,
then per layer ``lr · Δ_Adam`` where a layer is not grafted and
``lr · ‖Δ_Adam‖ / ‖Δ_SGD‖ · Δ_SGD`` where it is.
"""

import copy
import math

import pytest
import torch
from torch import nn

from grafting_core import (
    LAYER_KINDS,
    Graft,
    MagnitudeSchedule,
    fused,
    layer_kind,
    layer_kinds,
    select_kinds,
    state_bytes,
)
from grafting_core.lab.tasks.data import load_dataset
from grafting_core.lab.tasks.models import build_model
from tests.helpers import (
    CountLocalScalarDense,
    compute_grads,
    make_model,
    max_relative_difference,
    train,
)

ADAM = ("adam", {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8})
SGD = ("sgd", {"lr": 0.3, "momentum": 0.9})
HIDDEN = ("fc1.weight", "fc2.weight")  # make_model's hidden matrices; its head is "out"


def _reference(model, steps, grafted, *, lr=0.7, layer_of=lambda n: n):
    """``steps`` steps of partial Adam#SGD-momentum on ``model``, by hand, in float64."""
    (beta1, beta2), eps = ADAM[1]["betas"], ADAM[1]["eps"]
    names = [n for n, _ in model.named_parameters()]
    m = {n: 0.0 for n in names}
    v = {n: 0.0 for n in names}
    buf = {}
    for t in range(1, steps + 1):
        compute_grads(model, t - 1)
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        adam, sgd = {}, {}
        for n, g in grads.items():
            m[n] = beta1 * m[n] + (1 - beta1) * g
            v[n] = beta2 * v[n] + (1 - beta2) * g * g
            m_hat, v_hat = m[n] / (1 - beta1**t), v[n] / (1 - beta2**t)
            adam[n] = -ADAM[1]["lr"] * m_hat / (v_hat.sqrt() + eps)
            if n in grafted:
                buf[n] = g if t == 1 else SGD[1]["momentum"] * buf[n] + g
                sgd[n] = -SGD[1]["lr"] * buf[n]
        layers = {}
        for n in names:
            layers.setdefault(layer_of(n), []).append(n)
        with torch.no_grad():
            for members in layers.values():
                if members[0] not in grafted:
                    for n in members:
                        model.get_parameter(n).add_(lr * adam[n])
                    continue
                norm_m = math.sqrt(sum(float(adam[n].square().sum()) for n in members))
                norm_d = math.sqrt(sum(float(sgd[n].square().sum()) for n in members))
                for n in members:
                    model.get_parameter(n).add_(lr * norm_m / norm_d * sgd[n])


def _assert_close(model, expected, tol=1e-10):
    assert max_relative_difference(model, expected) < tol


# ------------------------------------------------------------------ degenerate choices
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_nothing_grafted_is_plain_adam(path):
    """grafted=() over 30 float64 steps equals torch.optim.Adam; D holds no state at all.
    A large eps shows the ratio of an ungrafted layer is exactly one, not ‖Δ‖/(‖Δ‖ + eps)."""
    model, plain = make_model(torch.float64), make_model(torch.float64)
    opt = Graft(model.named_parameters(), ADAM, SGD, grafted=(), path=path, eps=1.0)
    train(model, opt, 30)
    train(plain, torch.optim.Adam(plain.parameters(), lr=1e-2, betas=(0.9, 0.99)), 30)
    assert opt.grafted_layers == (False,) * 6
    assert not opt.direction.state and not opt.direction.param_groups[0]["params"]
    _assert_close(model, plain)


@pytest.mark.parametrize("grafted", [lambda name: True, LAYER_KINDS], ids=["predicate", "kinds"])
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_everything_grafted_is_todays_graft(grafted, path):
    """Choosing every layer is bit for bit the full graft (grafted=None)."""
    model, full = make_model(), make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD, grafted=grafted, path=path)
    train(model, opt, 20)
    train(full, Graft(full.named_parameters(), ADAM, SGD, path=path), 20)
    assert not opt.partial
    assert max_relative_difference(model, full) == 0.0


# -------------------------------------------------------------------- mixed choices
@pytest.mark.parametrize("fused_kernels", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_hidden_only_equals_float64_reference(path, fused_kernels):
    """Adam#SGD on the hidden matrices, Adam elsewhere: each parameter as by hand, 8 steps."""
    model, expected = make_model(torch.float64), make_model(torch.float64)
    opt = Graft(
        model.named_parameters(),
        ADAM,
        SGD,
        grafted="hidden",
        path=path,
        lr=0.7,
        fused=fused_kernels,
    )
    if fused_kernels and path == "blackbox":  # fused=True that cannot be honoured says why
        with pytest.warns(RuntimeWarning, match="partial grafting"):
            train(model, opt, 8)
    else:
        train(model, opt, 8)
    _reference(expected, 8, HIDDEN)
    # native children: the kernels; black-box ones: the reference path (documented)
    assert (fused.unsupported(opt, list(model.parameters())) is None) == (path == "native")
    _assert_close(model, expected)


@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_module_granularity_with_predicate_equals_reference(path):
    """granularity='module': fc1 and fc2 (weight with bias) grafted, the head not."""
    model, expected = make_model(torch.float64), make_model(torch.float64)
    grafted = lambda name: not name.startswith("out.")  # noqa: E731
    opt = Graft(
        model.named_parameters(),
        ADAM,
        SGD,
        grafted=grafted,
        granularity="module",
        path=path,
        lr=0.7,
    )
    train(model, opt, 6)
    assert opt.layers.names == ("fc1", "fc2", "out")
    assert opt.grafted_layers == (True, True, False)
    _reference(
        expected,
        6,
        {n for n, _ in expected.named_parameters() if grafted(n)},
        layer_of=lambda n: n.rpartition(".")[0],
    )
    _assert_close(model, expected)


@pytest.mark.parametrize("covers", ["all", "grafted"])
def test_ready_torch_optimizers_black_box(covers):
    """torch.optim instances: D over every parameter or only the grafted ones; D never
    steps, nor keeps state for, an ungrafted parameter."""
    model, expected = make_model(torch.float64), make_model(torch.float64)
    params = dict(model.named_parameters())
    magnitude = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    direction = torch.optim.SGD(
        [params[n] for n in params if covers == "all" or n in HIDDEN], lr=0.3, momentum=0.9
    )
    opt = Graft(model.named_parameters(), magnitude, direction, grafted="hidden", lr=0.7)
    train(model, opt, 8)
    _reference(expected, 8, HIDDEN)
    _assert_close(model, expected)
    assert {id(p) for p in direction.state} == {id(params[n]) for n in HIDDEN}


def test_direction_keeps_no_state_for_ungrafted_layers():
    """D built from a spec covers the grafted parameters only: less optimizer memory."""
    model, full_model = make_model(), make_model()
    adam_adam = (ADAM, ("adam", {"lr": 1e-3}))
    opt = Graft(model.named_parameters(), *adam_adam, grafted="hidden")
    full = Graft(full_model.named_parameters(), *adam_adam)
    train(model, opt, 2)
    train(full_model, full, 2)
    hidden = sum(p.numel() for n, p in model.named_parameters() if n in HIDDEN)
    ungrafted = sum(p.numel() for p in model.parameters()) - hidden
    assert state_bytes(full) - state_bytes(opt) == 2 * 4 * ungrafted  # Adam's two moments
    assert {id(p) for p in opt.direction.state} == {id(model.get_parameter(n)) for n in HIDDEN}


@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_last_norms_of_ungrafted_layers_are_adams_step(path):
    """On a layer that is not grafted magnitude_norm = direction_norm = ‖Δ_Adam‖ and
    step_norm = lr · ‖Δ_Adam‖; the first Adam step is lr · sign(g) to within eps."""
    model = make_model(torch.float64)
    opt = Graft(model.named_parameters(), ADAM, SGD, grafted="hidden", lr=0.5, path=path)
    compute_grads(model, 0)
    first = {n: float(p.grad.sign().norm()) * 1e-2 for n, p in model.named_parameters()}
    opt.step()
    for i, (name, grafted) in enumerate(zip(opt.layers.names, opt.grafted_layers)):
        magnitude, direction, step = opt.last_norms[i, :3].tolist()
        assert magnitude == pytest.approx(first[name], rel=1e-5)
        assert step == pytest.approx(0.5 * magnitude, rel=1e-12)
        if not grafted:
            assert direction == magnitude
        else:
            assert direction != pytest.approx(magnitude, rel=1e-3)  # SGD's own step size


def test_native_partial_step_makes_no_host_sync():
    model = make_model()
    opt = Graft(model.named_parameters(), "lamb", "lars", grafted=("hidden", "head"))
    for step in range(3):
        compute_grads(model, step)
        with CountLocalScalarDense() as counter:
            opt.step()
        assert counter.count == 0


# ----------------------------------------------------------------------- state_dict
@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_state_dict_round_trip_mid_run(path):
    straight = make_model()
    train(straight, Graft(straight.named_parameters(), ADAM, SGD, grafted="hidden", path=path), 16)
    first = make_model()
    opt = Graft(first.named_parameters(), ADAM, SGD, grafted="hidden", path=path)
    train(first, opt, 8)
    saved = copy.deepcopy(opt.state_dict())
    # D holds the grafted parameters only: fc1.weight, fc2.weight (Graft's indices 0 and 2)
    assert [g["params"] for g in saved["param_groups"][0]["direction.param_groups"]] == [[0, 2]]

    resumed = make_model(seed=99)
    resumed.load_state_dict(first.state_dict())
    again = Graft(resumed.named_parameters(), ADAM, SGD, grafted="hidden", path=path)
    again.load_state_dict(saved)
    train(resumed, again, 8, start=8)
    assert max_relative_difference(resumed, straight) == 0.0


def test_load_state_dict_rejects_another_choice():
    saved = Graft(make_model().named_parameters(), ADAM, SGD, grafted="hidden").state_dict()
    other = Graft(make_model().named_parameters(), ADAM, SGD, grafted=("hidden", "bias"))
    with pytest.raises(ValueError, match=r"grafted.*'fc1.bias', 'fc2.bias'"):
        other.load_state_dict(saved)


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"grafted": ("hidden", "embeddings")}, r"grafted.*unknown layer kinds \['embeddings'\]"),
        (
            {"grafted": "hidden", "granularity": "module"},
            r"grafted.*layer 'fc1' mixes grafted parameters \['fc1.weight'\]",
        ),
        ({"grafted": "head", "granularity": "global"}, r"grafted.*layer 'global' mixes"),
        ({"grafted": 3}, r"Invalid grafted: 3"),
    ],
    ids=["unknown-kind", "mixed-module", "mixed-global", "not-a-choice"],
)
def test_bad_choices_name_the_argument(kwargs, message):
    error = TypeError if kwargs["grafted"] == 3 else ValueError
    with pytest.raises(error, match=message):
        Graft(make_model().named_parameters(), ADAM, SGD, **kwargs)


def test_grafted_with_direction_none_is_an_error():
    with pytest.raises(ValueError, match="grafted.*direction=None"):
        Graft(make_model().named_parameters(), ADAM, None, grafted="hidden")


def test_kinds_need_parameter_names():
    with pytest.raises(ValueError, match="grafted= by layer kind needs parameter names"):
        Graft(make_model().parameters(), ADAM, SGD, grafted="hidden")


def test_predicate_must_return_bool():
    with pytest.raises(TypeError, match="must return a bool.*'fc1.weight'"):
        Graft(make_model().named_parameters(), ADAM, SGD, grafted=lambda name: name)


def test_ready_direction_over_other_parameters_is_an_error():
    model = make_model()
    direction = torch.optim.SGD([model.fc1.weight], lr=0.1)  # neither all nor the hidden ones
    with pytest.raises(ValueError, match="its grafted ones"):
        Graft(model.named_parameters(), ADAM, direction, grafted="hidden")


def test_replayed_schedule_needs_every_layer_grafted():
    """A schedule has no Adam step for the ungrafted layers: an error; all grafted works."""
    model = make_model()
    names = [n for n, _ in model.named_parameters()]
    schedule = MagnitudeSchedule(names, [0], torch.full((1, len(names)), 1e-3))
    with pytest.raises(ValueError, match="grafted.*replayed MagnitudeSchedule"):
        Graft(model.named_parameters(), schedule, SGD, grafted="hidden")
    opt = Graft(model.named_parameters(), schedule, SGD, grafted=LAYER_KINDS)
    train(model, opt, 1)
    torch.testing.assert_close(opt.last_norms[:, 2], torch.full((len(names),), 1e-3))


def test_add_param_group_gives_direction_only_grafted_parameters():
    model, extra = make_model(), nn.Linear(3, 3)
    opt = Graft(model.named_parameters(), ADAM, SGD, grafted=lambda name: name.endswith("weight"))
    opt.add_param_group({"params": list(extra.parameters()), "param_names": ["x.weight", "x.bias"]})
    assert opt.grafted_layers[-2:] == (True, False)
    assert opt.direction.param_groups[-1]["params"] == [extra.weight]
    assert opt.magnitude.param_groups[-1]["params"] == [extra.weight, extra.bias]


def test_add_param_group_that_moves_the_head_is_refused():
    """By names and shapes the last matrix is the head: a new last matrix would regraft
    'out'; the group is refused and Graft is left as it was."""
    model, extra = make_model(), nn.Linear(3, 3)
    opt = Graft(model.named_parameters(), ADAM, SGD, grafted="hidden")
    with pytest.raises(ValueError, match="grafted.*changes which existing parameters"):
        opt.add_param_group({"params": [extra.weight], "param_names": ["x.weight"]})
    assert len(opt.param_groups) == 1 and opt.grafted_layers == (True, False) * 2 + (False,) * 2
    train(model, opt, 1)


# ----------------------------------------------------------------------- layer kinds
def _lab_model(name, dataset, **options):
    return build_model(name, load_dataset(dataset), width=8, depth=1, seed=0, **options)


def test_kinds_of_the_lab_mlp_and_cnn():
    for name, dataset, hidden in (("mlp", "mnist1d", "fc1"), ("cnn", "digits", "conv1")):
        model = _lab_model(name, dataset)
        expected = {
            f"{hidden}.weight": "hidden",
            f"{hidden}.bias": "bias",
            "out.weight": "head",
            "out.bias": "head",
        }
        assert layer_kinds(model) == expected
        assert layer_kinds(model.named_parameters()) == expected


def test_kinds_of_the_lab_transformer():
    model = _lab_model("transformer", "chars", n_heads=2)
    kinds = layer_kinds(model)
    assert kinds == layer_kinds(model.named_parameters())
    assert {n for n, k in kinds.items() if k == "embedding"} == {"tok_emb.weight", "pos_emb.weight"}
    assert {n for n, k in kinds.items() if k == "head"} == {"head.weight"}
    assert {n for n, k in kinds.items() if k == "norm"} == {
        f"{ln}.{w}" for ln in ("blocks.0.ln1", "blocks.0.ln2", "ln_f") for w in ("weight", "bias")
    }
    assert {n for n, k in kinds.items() if k == "hidden"} == {
        f"blocks.0.{m}.weight" for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    assert {n for n, k in kinds.items() if k == "bias"} == {
        f"blocks.0.{m}.bias" for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }


def test_tied_head_is_an_embedding_only_with_the_model():
    """With tied weights the head's tensor is the token embedding: the model shows it;
    names and shapes alone take the last hidden matrix for the head (documented)."""
    model = _lab_model("transformer", "chars", n_heads=2, tie_weights=True)
    kinds = layer_kinds(model)
    assert kinds["tok_emb.weight"] == "embedding" and "head" not in kinds.values()
    assert layer_kinds(model.named_parameters())["blocks.0.mlp.proj.weight"] == "head"
    opt = Graft(model.named_parameters(), ADAM, SGD, grafted=select_kinds(model, "hidden"))
    chosen = {n for n, g in zip(opt.layers.names, opt.grafted_layers) if g}
    assert "blocks.0.mlp.proj.weight" in chosen and "tok_emb.weight" not in chosen


class RMSNorm(nn.Module):
    """A hand-written norm, as in nanoGPT (not a torch norm class)."""

    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * self.weight


def test_kinds_of_a_plain_sequential_by_module_type():
    """Module types decide even where names say nothing ("0", "1", ...)."""
    model = nn.Sequential(
        nn.Embedding(10, 4),
        nn.LayerNorm(4),
        RMSNorm(4),
        nn.Linear(4, 4),
        nn.BatchNorm1d(4),
        nn.Linear(4, 10),
    )
    model.register_parameter("pos_emb", nn.Parameter(torch.zeros(5, 4)))  # on the container
    assert layer_kinds(model) == {
        "pos_emb": "embedding",
        "0.weight": "embedding",
        "1.weight": "norm",
        "1.bias": "norm",
        "2.weight": "norm",
        "3.weight": "hidden",
        "3.bias": "bias",
        "4.weight": "norm",
        "4.bias": "norm",
        "5.weight": "head",
        "5.bias": "head",
    }
    named = layer_kinds(model.named_parameters())  # no types: "0.weight" looks hidden
    assert named["0.weight"] == "hidden" and named["5.weight"] == "head"


def test_layer_kind_rules_one_tensor_at_a_time():
    matrix, vector = torch.zeros(3, 3), torch.zeros(3)
    assert layer_kind("enc.wte.weight", matrix) == "embedding"
    assert layer_kind("h.0.ln_1.weight", vector) == "norm"
    assert layer_kind("h.0.bn1.bias", vector) == "norm"
    assert layer_kind("h.0.fc.bias", vector) == "bias"
    assert layer_kind("temperature", torch.zeros(())) == "bias"
    assert layer_kind("h.0.fc.weight", matrix) == "hidden"
    assert layer_kind("lm.weight", matrix, head=True) == "head"
    linear = nn.Linear(3, 3)
    assert layer_kind("a.weight", linear.weight, linear) == "hidden"
    assert layer_kind("a.weight", linear.weight, linear, head=True) == "head"
    assert layer_kind("emb.weight", linear.weight, linear) == "hidden"  # the type decides


def test_select_kinds_rejects_unknown_kinds_and_parameters():
    model = make_model()
    with pytest.raises(ValueError, match=r"unknown layer kinds \['hiden'\]"):
        select_kinds(model, "hiden")
    with pytest.raises(ValueError, match="'x.weight' is not in the model"):
        select_kinds(model, "hidden")("x.weight")
