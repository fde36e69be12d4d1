"""``Graft``'s state in torch's standard shape: DCP keeps it, old checkpoints still load."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    get_state_dict,
    set_state_dict,
)

from grafting_core import Graft
from tests.helpers import make_model, max_relative_difference, train

ADAM = ("adam", {"lr": 1e-2})
SGD = ("sgd", {"lr": 0.1, "momentum": 0.9})
HALF = 8


def _children_state(opt: Graft) -> dict:
    return {
        role: copy.deepcopy(getattr(opt, role).state_dict()) for role in ("magnitude", "direction")
    }


def _assert_same(a, b) -> None:
    """Bit-identical nested state (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _straight(path: str = "auto") -> torch.nn.Module:
    model = make_model()
    train(model, Graft(model.named_parameters(), ADAM, SGD, path=path), 2 * HALF)
    return model


def test_state_is_a_prefixed_view_over_the_children():
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    assert not opt.state  # nothing created yet: what DCP looks at before its init step
    train(model, opt, 3)
    fc1 = model.fc1.weight
    entry = opt.state[fc1]
    assert entry["magnitude.exp_avg"] is opt.magnitude.state[fc1]["exp_avg"]
    assert entry["direction.momentum_buffer"] is opt.direction.state[fc1]["momentum_buffer"]
    assert int(entry["graft.step"]) == 3
    saved = opt.state_dict()
    assert set(saved) == {"state", "param_groups"}
    assert sorted(saved["state"]) == list(range(6))  # Graft's own indices
    assert set(saved["state"][0]) == {
        "graft.step",
        "graft.nonfinite_skips",
        "magnitude.step",
        "magnitude.exp_avg",
        "magnitude.exp_avg_sq",
        "direction.step",
        "direction.momentum_buffer",
    }
    assert saved["param_groups"][0]["magnitude.param_groups"][0]["lr"] == 1e-2


def test_setting_an_entry_in_place_reaches_the_child():
    """Lightning moves state with ``state[p][key] = value.to(device)``: it must stick."""
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    train(model, opt, 2)
    for _, entry in opt.state.items():
        for key in [k for k, v in entry.items() if torch.is_tensor(v) and "graft." not in k]:
            entry[key] = entry[key].clone()
    replaced = opt.state[model.out.bias]["magnitude.exp_avg"]
    assert opt.magnitude.state[model.out.bias]["exp_avg"] is replaced


def test_old_nested_format_still_loads_and_resumes_exactly():
    """The format saved before: Graft's groups plus graft/magnitude/direction sub-dicts."""
    first = make_model()
    opt = Graft(first.named_parameters(), ADAM, SGD)
    train(first, opt, HALF)
    old = {
        "state": {},
        "param_groups": [
            {k: v for k, v in g.items() if k != "params"} | {"params": list(range(6))}
            for g in opt.param_groups
        ],
        "graft": {
            "step": HALF,
            "eps": 1e-16,
            "nonfinite_skips": torch.zeros(6, dtype=torch.int64),
            "layer_names": list(opt.layers.names),
            "grafted_layers": [True] * 6,
        },
        "magnitude": copy.deepcopy(opt.magnitude.state_dict()),
        "direction": copy.deepcopy(opt.direction.state_dict()),
    }
    resumed = make_model(seed=5)
    resumed.load_state_dict(first.state_dict())
    again = Graft(resumed.named_parameters(), ADAM, SGD)
    again.load_state_dict(old)
    assert again.graft_step == HALF
    train(resumed, again, HALF, start=HALF)
    assert max_relative_difference(resumed, _straight()) == 0.0


def test_get_optimizer_state_dict_keeps_everything_and_touches_nothing():
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    train(model, opt, HALF)
    model.zero_grad(set_to_none=True)  # no gradients: DCP would step an optimizer it thinks new
    before = _children_state(opt)
    state = get_optimizer_state_dict(model, opt)
    _assert_same(_children_state(opt), before)
    assert opt.graft_step == HALF
    names = [n for n, _ in model.named_parameters()]
    assert sorted(state["state"]) == sorted(names)
    torch.testing.assert_close(
        state["state"]["fc2.weight"]["magnitude.exp_avg_sq"],
        opt.magnitude.state[model.fc2.weight]["exp_avg_sq"],
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("path", ["native", "blackbox"])
def test_dcp_save_load_then_more_steps_equals_a_straight_run(tmp_path, path):
    first = make_model()
    opt = Graft(first.named_parameters(), ADAM, SGD, path=path)
    train(first, opt, HALF)
    with warnings.catch_warnings():  # single process: DCP says it runs without a process group
        warnings.simplefilter("ignore", UserWarning)
        model_state, optim_state = get_state_dict(first, opt)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp_path)

        resumed = make_model(seed=7)
        again = Graft(resumed.named_parameters(), ADAM, SGD, path=path)
        model_state, optim_state = get_state_dict(resumed, again)  # the template to load into
        dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=tmp_path)
        set_state_dict(resumed, again, model_state_dict=model_state, optim_state_dict=optim_state)
    assert again.graft_step == HALF
    _assert_same(_children_state(again), _children_state(opt))
    train(resumed, again, HALF, start=HALF)
    assert max_relative_difference(resumed, _straight(path)) == 0.0


def test_direction_over_other_parameters_is_refused():
    saved = Graft(make_model().named_parameters(), ADAM, SGD, grafted="hidden").state_dict()
    other = Graft(make_model().named_parameters(), ADAM, SGD)
    with pytest.raises(ValueError, match=r"grafted other parameters.*'fc1.bias'"):
        other.load_state_dict(saved)


def test_a_checkpoint_from_before_the_first_step_resets_a_trained_graft():
    model = make_model()
    fresh = Graft(model.named_parameters(), ADAM, SGD).state_dict()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    train(model, opt, 3)
    opt.load_state_dict(fresh)
    assert opt.graft_step == 0 and not opt.state and not opt.magnitude.state
