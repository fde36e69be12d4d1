"""Norm recording, schedule record/replay and static ratios, checked by hand computations."""

import json

import pytest
import torch

from grafting_core import Graft, MagnitudeSchedule, NormLog, StaticRatios, static_ratios_from_log
from grafting_core.static_ratios import reduce_ratios
from tests.helpers import compute_grads, make_model, max_relative_difference, train

ADAM = ("adam", {"lr": 1e-2})
SGD = ("sgd", {"lr": 0.1, "momentum": 0.9})


def test_norm_log_matches_hand_norms():
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    log = NormLog(opt)
    train(model, opt, 4)
    compute_grads(model, 4)
    grad = model.fc1.weight.grad.norm()
    weight = model.fc1.weight.detach().norm()
    before = model.fc1.weight.detach().clone()
    opt.step()
    steps, values = log.read()
    assert steps == [0, 1, 2, 3, 4]
    assert values.shape == (5, len(opt.layers), len(log.fields))
    row = dict(zip(log.fields, values[-1, list(opt.layers.names).index("fc1.weight")].tolist()))
    assert row["grad_norm"] == pytest.approx(float(grad), rel=1e-5)
    assert row["weight_norm"] == pytest.approx(float(weight), rel=1e-5)
    applied = float((model.fc1.weight.detach() - before).norm())
    assert row["step_norm"] == pytest.approx(applied, rel=1e-4)
    assert row["step_norm"] == pytest.approx(row["magnitude_norm"], rel=1e-4)


def test_ring_buffer_keeps_newest_and_counts_dropped():
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    log = NormLog(opt, capacity=4, every=2)
    train(model, opt, 13)
    steps, values = log.read()
    assert steps == [6, 8, 10, 12]
    assert log.count == 7 and log.dropped == 3
    assert log.read(since=8)[0] == [10, 12]
    assert torch.isfinite(values).all()


def test_replayed_schedule_reproduces_online_graft(tmp_path):
    """Replaying M's recorded norms onto the same D from the same start is M#D exactly."""
    online = make_model()
    opt = Graft(online.named_parameters(), ADAM, SGD)
    log = NormLog(opt)
    train(online, opt, 25)
    path = log.magnitude_schedule().save(tmp_path / "adam.json")

    replayed = make_model()
    schedule = MagnitudeSchedule.load(path)
    replay = Graft(replayed.named_parameters(), schedule, SGD)
    assert replay.native
    train(replayed, replay, 25)
    assert max_relative_difference(replayed, online) < 1e-6


def test_schedule_past_its_end_holds_or_raises():
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    log = NormLog(opt)
    train(model, opt, 3)
    schedule = log.magnitude_schedule()
    last = schedule.norms[-1]
    Graft(make_model().named_parameters(), schedule, SGD)  # aligns the columns
    assert torch.equal(schedule.norms_at(10), last)
    strict = MagnitudeSchedule(
        schedule.layer_names, schedule.steps, schedule.norms, after_end="error"
    )
    target = make_model()
    replay = Graft(target.named_parameters(), strict, SGD)
    train(target, replay, 3)
    with pytest.raises(IndexError, match="past the schedule"):
        train(target, replay, 1, start=3)


def test_schedule_for_another_model_is_rejected():
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    log = NormLog(opt)
    train(model, opt, 2)
    with pytest.raises(ValueError, match="missing"):
        Graft(make_model(bias=False).named_parameters(), log.magnitude_schedule(), SGD)


def test_static_ratios_equal_hand_statistic(tmp_path):
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    log = NormLog(opt)
    hand = {n: [] for n in opt.layers.names}
    for step in range(12):
        compute_grads(model, step)
        opt.step()
        for i, name in enumerate(opt.layers.names):
            hand[name].append(float(opt.last_norms[i, 0] / opt.last_norms[i, 1]))
    for statistic in ("median", "mean", "trimmed_mean"):
        ratios = static_ratios_from_log(log, window=(2, 10), statistic=statistic, trim=0.25)
        for name, values in hand.items():
            window = sorted(values[2:10])
            expected = {
                "median": (window[3] + window[4]) / 2,
                "mean": sum(window) / 8,
                "trimmed_mean": sum(window[2:6]) / 4,
            }[statistic]
            assert ratios.ratios[name] == pytest.approx(expected, rel=1e-5)
    assert ratios.base_lr == 0.1
    path = ratios.save(tmp_path / "ratios.json")
    assert json.loads(path.read_text())["parameters"]["fc1.weight"]["shape"] == [16, 6]
    assert StaticRatios.load(path).ratios == ratios.ratios


def test_static_ratio_sgd_groups_take_the_multipliers():
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, ("sgd", {"lr": 0.1}))
    log = NormLog(opt)
    train(model, opt, 5)
    ratios = static_ratios_from_log(log)
    fresh = make_model()
    groups = ratios.param_groups(fresh.named_parameters())
    sgd = torch.optim.SGD(groups, lr=0.1)
    assert {g["param_names"][0]: g["lr"] for g in sgd.param_groups} == pytest.approx(
        {n: 0.1 * c for n, c in ratios.ratios.items()}
    )
    compute_grads(fresh, 0)
    before = fresh.fc1.weight.detach().clone()
    grad = fresh.fc1.weight.grad.clone()
    sgd.step()
    expected = before - 0.1 * ratios.ratios["fc1.weight"] * grad
    torch.testing.assert_close(fresh.fc1.weight.detach(), expected)


def test_static_ratios_for_another_model_fail_clearly():
    ratios = StaticRatios({"fc1.weight": 2.0}, {"fc1.weight": [3, 3]}, base_lr=0.1)
    with pytest.raises(ValueError, match="no ratio for.*fc1.bias.*shape differs.*fc1.weight"):
        ratios.param_groups(make_model().named_parameters())


def test_reduce_ratios_ignores_nan_and_validates():
    values = torch.tensor([[1.0, float("nan")], [3.0, 2.0], [float("nan"), 4.0]])
    assert reduce_ratios(values, "mean").tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="statistic"):
        reduce_ratios(values, "mode")


def test_empty_window_is_a_clear_error():
    model = make_model()
    opt = Graft(model.named_parameters(), ADAM, SGD)
    log = NormLog(opt)
    train(model, opt, 3)
    with pytest.raises(ValueError, match="window"):
        static_ratios_from_log(log, window=(10, 20))


def test_a_schedule_refuses_infinite_norms_naming_the_first_and_reads_nan_as_not_stepped():
    """An infinite step norm replayed would skip its layer's step without a word: refused,
    whether the schedule is built in memory or from a recording; NaN means 'not stepped'."""
    inf, nan = float("inf"), float("nan")
    first = "2 values are infinite, the first for layer 'b' at step 0"
    with pytest.raises(ValueError, match=first):
        MagnitudeSchedule(["a", "b"], [0, 10], [[1.0, inf], [inf, 2.0]])
    records = torch.tensor([[[1.0], [2.0]], [[3.0], [inf]]])
    with pytest.raises(ValueError, match="the first for layer 'b' at step 5"):
        MagnitudeSchedule.from_records(["a", "b"], [0, 5], records, ("magnitude_norm",))
    schedule = MagnitudeSchedule(["a", "b"], [0], [[nan, 2.0]])
    assert schedule.norms.tolist() == [[0.0, 2.0]]
