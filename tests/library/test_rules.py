"""Each native rule against its reference: torch's optimizer, or a float64 hand formula."""

import copy
import math

import pytest
import torch

from grafting_core import RULES, NativeOptimizer, build_optimizer, optimizer_names, validate_hparams
from grafting_core.registry import is_native
from tests.helpers import compute_grads, make_model, max_relative_difference, train

TORCH_REFERENCES = [
    ("sgd", {"lr": 0.05}, torch.optim.SGD, "plain"),
    ("sgd", {"lr": 0.05, "momentum": 0.9}, torch.optim.SGD, "momentum"),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, torch.optim.SGD, "nesterov"),
    (
        "sgd",
        {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01},
        torch.optim.SGD,
        "dampening+wd",
    ),
    ("adam", {"lr": 1e-2}, torch.optim.Adam, "default"),
    ("adam", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.01}, torch.optim.Adam, "wd"),
    ("adamw", {"lr": 1e-2, "weight_decay": 0.1}, torch.optim.AdamW, "decoupled wd"),
    ("adagrad", {"lr": 0.05}, torch.optim.Adagrad, "default"),
    (
        "adagrad",
        {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.01},
        torch.optim.Adagrad,
        "decay+init",
    ),
    ("rmsprop", {"lr": 1e-3}, torch.optim.RMSprop, "default"),
    (
        "rmsprop",
        {"lr": 1e-3, "centered": True, "momentum": 0.9, "weight_decay": 0.01},
        torch.optim.RMSprop,
        "centered+momentum",
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "name,hp,torch_cls,desc", TORCH_REFERENCES, ids=[f"{n}-{d}" for n, _, _, d in TORCH_REFERENCES]
)
def test_native_rule_matches_torch(name, hp, torch_cls, desc, dtype):
    ours, ref = make_model(dtype), make_model(dtype)
    train(ours, build_optimizer((name, hp), ours.parameters()), 50)
    train(ref, torch_cls(ref.parameters(), **hp), 50)
    assert max_relative_difference(ours, ref) < (1e-5 if dtype == torch.float32 else 1e-12)


class HandReference:
    """Float64 single-tensor implementations written straight from the papers."""

    def __init__(self, name, hp, params):
        self.name, self.hp = name, validate_hparams(name, hp)
        self.params = list(params)
        self.state = [
            {
                "m": torch.zeros_like(p, dtype=torch.float64),
                "v": torch.zeros_like(p, dtype=torch.float64),
                "t": 0,
            }
            for p in self.params
        ]

    @torch.no_grad()
    def step(self):
        hp = self.hp
        for p, s in zip(self.params, self.state):
            w, g = p.double(), p.grad.double()
            s["t"] += 1
            if self.name == "lion":
                b1, b2 = hp["betas"]
                c = b1 * s["m"] + (1 - b1) * g
                new = w - hp["lr"] * (torch.sign(c) + hp["weight_decay"] * w)
                s["m"] = b2 * s["m"] + (1 - b2) * g
            elif self.name == "sign_sgd":
                g = g + hp["weight_decay"] * w
                if hp["momentum"]:
                    s["m"] = hp["momentum"] * s["m"] + (1 - hp["momentum"]) * g
                    g = s["m"]
                new = w - hp["lr"] * torch.sign(g)
            elif self.name == "lars":
                wd = hp["weight_decay"]
                wn, gn = w.norm(), g.norm()
                trust = hp["trust_coefficient"] * wn / (gn + wd * wn) if wn > 0 and gn > 0 else 1.0
                s["m"] = hp["momentum"] * s["m"] + hp["lr"] * trust * (g + wd * w)
                new = w - s["m"]
            elif self.name == "lamb":
                b1, b2 = hp["betas"]
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                m_hat = s["m"] / (1 - b1 ** s["t"])
                v_hat = s["v"] / (1 - b2 ** s["t"])
                r = m_hat / (v_hat.sqrt() + hp["eps"]) + hp["weight_decay"] * w
                trust = w.norm() / r.norm() if w.norm() > 0 and r.norm() > 0 else 1.0
                new = w - hp["lr"] * trust * r
            p.copy_(new)


HAND_REFERENCES = [
    ("lion", {"lr": 1e-3}, "default"),
    ("lion", {"lr": 1e-3, "betas": (0.8, 0.95), "weight_decay": 0.1}, "wd"),
    ("sign_sgd", {"lr": 1e-3}, "plain"),
    ("sign_sgd", {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.01}, "signum"),
    ("lars", {"lr": 1.0}, "default"),
    ("lars", {"lr": 0.5, "weight_decay": 0.01, "trust_coefficient": 0.01}, "wd"),
    ("lamb", {"lr": 1e-2}, "default"),
    ("lamb", {"lr": 1e-2, "weight_decay": 0.01}, "wd"),
]


@pytest.mark.parametrize(
    "name,hp,desc", HAND_REFERENCES, ids=[f"{n}-{d}" for n, _, d in HAND_REFERENCES]
)
def test_native_rule_matches_hand_formula(name, hp, desc):
    ours = make_model(torch.float64)
    ref = copy.deepcopy(ours)
    train(ours, build_optimizer((name, hp), ours.parameters()), 30)
    train(ref, HandReference(name, hp, ref.parameters()), 30)
    assert max_relative_difference(ours, ref) < 1e-10


@pytest.mark.parametrize("name", [n for n in optimizer_names() if is_native(n)])
def test_every_native_rule_keeps_finite_state_and_shapes(name):
    model = make_model()
    opt = build_optimizer(name, model.parameters())
    compute_grads(model, 0)
    params, steps = opt.compute_steps()
    assert [s.shape for s in steps] == [p.shape for p in params]
    assert all(torch.isfinite(s).all() for s in steps)
    for state in opt.state.values():
        assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))


def test_compute_steps_does_not_touch_weights():
    model = make_model()
    before = [p.clone() for p in model.parameters()]
    opt = build_optimizer(("adam", {"lr": 0.1}), model.parameters())
    compute_grads(model, 0)
    opt.compute_steps()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


BAD_HPARAMS = [
    ("adam", {"lr": -1.0}, "lr"),
    ("adam", {"lr": math.nan}, "lr"),
    ("adam", {"betas": (0.9, 1.0)}, "betas"),
    ("sgd", {"momentum": 1.5}, "momentum"),
    ("sgd", {"nesterov": True}, "nesterov"),
    ("rmsprop", {"centered": "yes"}, "centered"),
    ("adam", {"momentum": 0.9}, "momentum"),
]


@pytest.mark.parametrize("name,hp,field", BAD_HPARAMS)
def test_bad_hyperparameters_name_the_field(name, hp, field):
    with pytest.raises(ValueError, match=field):
        validate_hparams(name, hp)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="adam.*sgd|sgd.*adam"):
        build_optimizer("adamm", make_model().parameters())


BAD_NATIVE = [  # (rule, options, words the message must hold: the name and the value)
    ("adam", {"betas": (2, 5)}, r"'betas': \(2, 5\)"),
    ("adam", {"lr": -0.1}, r"'lr': -0\.1"),
    ("adam", {"eps": -1e-8}, r"'eps': -1e-08"),
    ("sgd", {"momentum": 1.0}, r"'momentum': 1\.0"),
    ("sgd", {"nesterov": True}, r"nesterov.*momentum 0\.0"),
    ("adam", {"momentum": 0.9}, r"Unknown hyperparameter.*'momentum'.*Valid"),
    ("lion", {"foo": 1}, r"Unknown hyperparameter.*'foo'"),
]


@pytest.mark.parametrize(
    "name,options,message", BAD_NATIVE, ids=[f"{n}-{next(iter(o))}" for n, o, _ in BAD_NATIVE]
)
@pytest.mark.parametrize("where", ["kwargs", "group", "add_param_group"])
def test_native_optimizer_built_directly_validates_like_torch(name, options, message, where):
    """NativeOptimizer(...), its constructor's groups and add_param_group all refuse bad
    options with the name and the value; a refused group leaves the optimizer as it was."""
    model = make_model()
    rule = RULES[name]
    opt = NativeOptimizer(model.fc1.parameters(), rule)
    with pytest.raises(ValueError, match=message):
        if where == "kwargs":
            NativeOptimizer(model.parameters(), rule, **options)
        elif where == "group":
            NativeOptimizer([{"params": list(model.parameters()), **options}], rule)
        else:
            opt.add_param_group({"params": list(model.out.parameters()), **options})
    assert len(opt.param_groups) == 1


def test_native_optimizer_groups_keep_their_own_options():
    """Groups with their own lr and betas step as torch.optim.Adam with the same groups."""
    ours, ref = make_model(torch.float64), make_model(torch.float64)

    def groups(model):
        return [
            {"params": list(model.fc1.parameters()), "lr": 0.05, "betas": (0.8, 0.95)},
            {"params": list(model.fc2.parameters())},
        ]

    opt = NativeOptimizer(groups(ours), RULES["adam"], lr=1e-2)
    opt.add_param_group({"params": list(ours.out.parameters()), "weight_decay": 0.1})
    torch_opt = torch.optim.Adam(groups(ref), lr=1e-2)
    torch_opt.add_param_group({"params": list(ref.out.parameters()), "weight_decay": 0.1})
    train(ours, opt, 20)
    train(ref, torch_opt, 20)
    assert max_relative_difference(ours, ref) < 1e-12
