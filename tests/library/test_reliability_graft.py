"""``Graft`` refuses what it cannot do at construction or load, with torch-style messages
(issue 28, item 11), instead of failing at the next step with a KeyError."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grafting_core import Graft

ADAM = ("adam", {"lr": 1e-2})
SGD = ("sgd", {"lr": 0.1, "momentum": 0.9})


def _stepped(model: nn.Module, magnitude=ADAM, direction=SGD) -> Graft:
    """A Graft over ``model`` after one step (so that its children hold state)."""
    opt = Graft(model.named_parameters(), magnitude, direction)
    model(torch.randn(4, model[0].in_features)).square().sum().backward()
    opt.step()
    return opt


def _mlp(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2))


def test_complex_parameters_are_refused_at_construction():
    weight = nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="does not support complex parameters.*complex64"):
        Graft([("w", weight)], ADAM, SGD)


def test_state_from_a_model_of_other_shapes_is_refused_at_load_naming_the_parameter():
    saved = _stepped(_mlp(8)).state_dict()
    here = Graft(_mlp(16).named_parameters(), ADAM, SGD)
    with pytest.raises(ValueError, match=r"does not fit this model.*'0\.weight'.*\(8, 3\)"):
        here.load_state_dict(saved)


def test_state_of_another_pair_is_refused_at_load_naming_the_role():
    saved = _stepped(_mlp(), ADAM, SGD).state_dict()  # adam#sgd
    here = Graft(_mlp().named_parameters(), SGD, ADAM)  # sgd#adam
    with pytest.raises(ValueError, match="magnitude is another optimizer"):
        here.load_state_dict(saved)


def test_an_old_format_dict_without_layer_names_is_refused_not_a_key_error():
    model = _mlp()
    opt = _stepped(model)
    old = {
        "graft": {"step": 1, "eps": 1e-16, "nonfinite_skips": torch.zeros(4)},
        "magnitude": opt.magnitude.state_dict(),
        "direction": opt.direction.state_dict(),
        "param_groups": opt.state_dict()["param_groups"],
    }
    with pytest.raises(ValueError, match="lacks \\['layer_names'\\]"):
        Graft(model.named_parameters(), ADAM, SGD).load_state_dict(old)
