"""Param groups as training stacks build them: keys routed to the children, names from a
model, and the factory convention ``cls(params, lr=..., weight_decay=..., **kwargs)``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grafting_core import NORM_FIELDS, Graft
from tests.helpers import compute_grads, max_relative_difference, train


def make_model(seed: int = 0) -> nn.Module:
    """Embedding, LayerNorm and Linear layers: what decay/no-decay splits separate."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 3))


def hf_groups(model: nn.Module, decay: float = 0.1) -> list[dict]:
    """Plain tensors in two groups, as HF Trainer builds them (no decay: biases and norms)."""
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or n.startswith("1.")]
    ids = {id(p) for p in no_decay}
    return [
        {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def test_hf_style_groups_keep_their_weight_decay_split():
    """AdamW#AdamW over Trainer-style groups equals torch's AdamW over the same groups, which
    it only can if each group's weight_decay reached the children."""
    grafted, plain = make_model(), make_model()
    opt = Graft(hf_groups(grafted), ("adamw", {"lr": 1e-2}), ("adamw", {"lr": 0.3}))
    assert [g["weight_decay"] for g in opt.magnitude.param_groups] == [0.1, 0.0]
    assert [g["weight_decay"] for g in opt.direction.param_groups] == [0.1, 0.0]
    assert all(set(g) == {"params", "lr"} for g in opt.param_groups)  # routed, not copied
    train(grafted, opt, 20)
    train(plain, torch.optim.AdamW(hf_groups(plain), lr=1e-2), 20)
    assert max_relative_difference(grafted, plain) < 1e-5
    single = make_model()  # the default decay (0.01) everywhere trains measurably elsewhere
    train(single, Graft(single.parameters(), ("adamw", {"lr": 1e-2}), "adamw"), 20)
    assert max_relative_difference(single, plain) > 1e-4


def test_unprefixed_keys_reach_each_child_that_takes_them_prefixed_keys_one():
    model = make_model()
    opt = Graft(
        [
            {
                "params": list(model.parameters()),
                "momentum": 0.5,
                "eps": 1e-6,
                "direction.weight_decay": 0.2,
                "magnitude.lr": 3e-3,
            }
        ],
        "adam",
        "sgd",
    )
    m, d = opt.magnitude.param_groups[0], opt.direction.param_groups[0]
    assert (m["lr"], m["eps"], m["weight_decay"]) == (3e-3, 1e-6, 0.0)
    assert (d["momentum"], d["weight_decay"], d["lr"]) == (0.5, 0.2, 0.1)
    assert opt.param_groups[0]["lr"] == 1.0  # Graft's own multiplier is untouched


@pytest.mark.parametrize(
    "group,pattern",
    [
        ({"lr_scale": 2.0}, r"Invalid param group key 'lr_scale'"),
        ({"magnitude.momentum": 0.9}, r"Invalid param group key 'magnitude.momentum'"),
        ({"betas": (0.9, 5.0)}, r"'betas': \(0.9, 5.0\)"),
        ({"lr": -1.0}, r"Invalid lr of a param group: -1.0"),  # Graft's own multiplier
        ({"lr": math.nan}, r"Invalid lr of a param group: nan"),
        ({"lr": "0.1"}, r"Invalid lr of a param group: '0.1'"),
    ],
)
def test_keys_no_child_takes_and_bad_values_are_refused_by_name(group, pattern):
    model = make_model()
    with pytest.raises(ValueError, match=pattern):
        Graft([{"params": list(model.parameters()), **group}], "adam", "sgd")
    opt = Graft(model.parameters(), "adam", "sgd")  # add_param_group checks them too
    extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=pattern):
        opt.add_param_group({"params": list(extra.parameters()), **group})
    assert len(opt.param_groups) == len(opt.magnitude.param_groups) == 1  # nothing added


def test_a_ready_child_takes_no_routed_keys():
    model = make_model()
    ready = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"'momentum'.*ready optimizer keeps its own groups"):
        Graft([{"params": list(model.parameters()), "momentum": 0.9}], "adam", ready)


def test_names_from_the_model_give_readable_layers_and_module_granularity():
    model = make_model()
    opt = Graft(hf_groups(model), "adam", "sgd", names=model, granularity="module")
    assert opt.layers.names == ("0", "3", "1")  # decay group first: 0.weight, 3.weight
    assert opt.layers.param_names == (
        "0.weight",
        "3.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "3.bias",
    )
    compute_grads(model, 0)  # one norm per module: Linear 0's weight and bias together
    expected = torch.cat([model[0].weight.grad.flatten(), model[0].bias.grad]).norm()
    opt.step()
    torch.testing.assert_close(opt.last_norms[0, NORM_FIELDS.index("grad_norm")], expected)
    stranger = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"Invalid names: parameter 0 of group 0 \(shape \(2,\)\)"):
        Graft([stranger], "adam", "sgd", names=model)


def test_factory_maps_lr_to_magnitude_and_keywords_to_the_children():
    model = make_model()
    AdamWSGD = Graft.factory("adamw", ("sgd", {"momentum": 0.9}), names=model)
    assert issubclass(AdamWSGD, Graft) and AdamWSGD.__name__ == "Graft[adamw#sgd]"
    opt = AdamWSGD(hf_groups(model), lr=3e-4, weight_decay=0.05, betas=(0.8, 0.95))
    assert [g["lr"] for g in opt.magnitude.param_groups] == [3e-4, 3e-4]
    assert [g["lr"] for g in opt.direction.param_groups] == [0.1, 0.1]  # D's lr cancels
    assert [g["weight_decay"] for g in opt.magnitude.param_groups] == [0.1, 0.0]  # groups win
    assert opt.magnitude.param_groups[0]["betas"] == (0.8, 0.95)
    assert opt.direction.param_groups[0]["momentum"] == 0.9
    assert [g["lr"] for g in opt.param_groups] == [1.0, 1.0]
    assert opt.layers.names[0] == "0.weight"
    with pytest.raises(ValueError, match="'nesterov_scale'"):
        AdamWSGD(model.parameters(), lr=1e-3, nesterov_scale=2)


def test_factory_adamw_adamw_trains_like_torch_adamw_and_a_scheduler_on_magnitude():
    """lr from the factory is M's: with a scheduler on graft.magnitude the run is torch's
    AdamW under the same schedule."""
    decay = lambda t: 1.0 / (1 + 0.1 * t)  # noqa: E731
    grafted, plain = make_model(), make_model()
    opt = Graft.factory("adamw", "adamw")(
        grafted.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.85, 0.99)
    )
    train(grafted, opt, 20, scheduler=torch.optim.lr_scheduler.LambdaLR(opt.magnitude, decay))
    ref = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.85, 0.99))
    train(plain, ref, 20, scheduler=torch.optim.lr_scheduler.LambdaLR(ref, decay))
    assert max_relative_difference(grafted, plain) < 1e-5
