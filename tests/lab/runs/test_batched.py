"""Batched plain runs: each member reproduces its config's ordinary ``Trainer`` run.

The reference is independent of the batch: each config trained alone through ``Trainer``
(the entry point every stored run takes), its ``on_metrics`` rows and final weights.

Tolerance. Measured on this machine (torch 2.13 CPU, 1 and 2 threads, 13 members, 100
steps): the final weights are bit-identical to ``Trainer``'s, and the recorded losses differ
by at most one float32 ulp (relative 2.7e-7: the batched cross-entropy sums the batch in
another order; its gradient is the same); since the validation losses are reduced member by
member, they are equal to Trainer's where the weights are (``test_batched_graft.py`` checks
they are, as a comparison's verdicts need). Where betas, eps, momentum or weight decay differ
between members (one tensor per member instead of torch's Python scalar: other kernels,
FMA or not), the weights after 60 steps differ by at most 1.8e-7 (absolute; weights are
O(0.1)), the losses still by one ulp. The tests allow a relative 1e-5 on every value
(a few ulps, for another BLAS or thread count whose batched matmuls round differently),
which is far below what a wrong batch, lr or warm-up does (``test_the_comparison_has_teeth``:
one step more of warm-up moves the losses by > 1e-4).
"""

import math

import pytest
import torch

from grafting_core.lab.runs.batched import BatchedTrainer, check_batchable, train_batched
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.trainer import Trainer

RTOL = 1e-5
BASE = RunConfig(
    dataset="mnist1d",
    width=32,
    steps=60,
    batch_size=32,
    eval_every=20,
    eval_examples=200,
    log_every=10,
    flush_seconds=0.0,
    device="cpu",
)


def trainer_run(config: RunConfig) -> tuple[Trainer, list]:
    """``config`` through the ordinary Trainer: the trainer and its metric rows (without
    the clock's ``steps_per_second``)."""
    collected = []
    trainer = Trainer(config)
    trainer.add_callback("on_metrics", lambda _, rows: collected.extend(rows))
    trainer.run()
    return trainer, [row for row in collected if row[1] != "steps_per_second"]


def assert_same_run(result, trainer: Trainer, rows: list) -> float:
    """The member equals the Trainer's run (status, end step, every row's step and name, values
    and weights to RTOL); returns the largest relative difference seen."""
    assert result.status == trainer.status
    expected_step = trainer.diverged_at if trainer.status == "diverged" else trainer.step
    assert result.step == expected_step
    assert [r[:2] for r in result.rows] == [r[:2] for r in rows]
    worst = 0.0
    for (step, name, got), (_, _, want) in zip(result.rows, rows):
        assert math.isclose(got, want, rel_tol=RTOL, abs_tol=1e-7), (step, name, got, want)
        worst = max(worst, abs(got - want) / max(abs(want), 1e-12))
    for name, weight in trainer.model.named_parameters():
        torch.testing.assert_close(result.parameters[name], weight.detach(), rtol=RTOL, atol=1e-7)
    return worst


SGD = [
    ("sgd", {"lr": 0.05, "momentum": 0.9}, 0, "constant", 0),
    ("sgd", {"lr": 0.2, "momentum": 0.9}, 1, "warmup_cosine", 20),
    ("sgd", {"lr": 0.2, "momentum": 0.9}, 0, "warmup_cosine", 5),
    ("sgd", {"lr": 0.5, "momentum": 0.9}, 2, "cosine", 0),
]
ADAM = [
    ("adam", {"lr": 1e-3}, 0, "constant", 0),
    ("adam", {"lr": 3e-3}, 1, "warmup_cosine", 10),
    ("adam", {"lr": 1e-2}, 0, "warmup_cosine", 30),
    ("adam", {"lr": 3e-2}, 2, "linear", 0),
]


@pytest.mark.parametrize("members", [SGD, ADAM], ids=["sgd-momentum", "adam"])
def test_members_equal_their_own_trainer_runs(members):
    configs = [
        BASE.replace(
            magnitude=name, magnitude_hparams=hp, seed=seed, schedule=schedule, warmup_steps=w
        )
        for name, hp, seed, schedule, w in members
    ]
    results = train_batched(configs)
    assert len(results) == len(configs)
    for config, result in zip(configs, results):
        assert result.config is config
        trainer, rows = trainer_run(config)
        assert trainer.status == "finished"
        assert_same_run(result, trainer, rows)
        assert [s for s, _ in result.evals] == [19, 39, 59]
        assert result.final["val_loss"] == result.evals[-1][1]
        assert 0 < result.final["val_accuracy"] <= 1


@pytest.mark.parametrize(
    "task",
    [
        {"model": "cnn1d", "width": 8},
        {"dataset": "digits", "width": 8},  # the 2-D CNN
        {"dataset": "teacher"},  # regression: MSE, no accuracy
        {"granularity": "global"},  # one layer: the skip checks over all tensors
    ],
    ids=["cnn1d", "digits-cnn", "teacher-regression", "global-layer"],
)
def test_other_models_and_tasks(task):
    """Convolutions and regression batch too (measured: weights within 2.4e-7 of
    Trainer's after 60 steps, losses within 6e-7 relative)."""
    configs = [
        BASE.replace(
            **task,
            magnitude="adam",
            magnitude_hparams={"lr": lr},
            seed=seed,
            schedule="warmup_cosine",
            warmup_steps=10,
        )
        for lr, seed in ((1e-3, 0), (1e-2, 1))
    ]
    for config, result in zip(configs, train_batched(configs)):
        assert_same_run(result, *trainer_run(config))
    assert ("val_accuracy" in result.final) == (task.get("dataset") != "teacher")


def test_hyperparameters_that_differ_per_member():
    """Betas, eps, weight decay, momentum, dampening and graft_lr one per member (the
    per-member tensor path, not the shared Python scalars)."""
    adam = [
        ({"lr": 3e-3}, 1.0),
        ({"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1e-3}, 0.5),
    ]
    sgd = [
        ({"lr": 0.1, "momentum": 0.9, "nesterov": True}, 1.0),
        ({"lr": 0.1, "momentum": 0.5, "nesterov": True, "weight_decay": 1e-2}, 2.0),
    ]
    for name, members in (("adam", adam), ("sgd", sgd)):
        configs = [
            BASE.replace(magnitude=name, magnitude_hparams=hp, graft_lr=graft_lr, seed=i)
            for i, (hp, graft_lr) in enumerate(members)
        ]
        sgd_damped = BASE.replace(
            magnitude="sgd", magnitude_hparams={"lr": 0.1, "momentum": 0.9, "dampening": 0.3}
        )
        if name == "sgd":  # dampening needs nesterov off: a batch of its own
            train_damped = train_batched([sgd_damped, sgd_damped.replace(seed=1)])
            assert_same_run(train_damped[0], *trainer_run(sgd_damped))
        for config, result in zip(configs, train_batched(configs)):
            assert_same_run(result, *trainer_run(config))


def test_the_comparison_has_teeth():
    """What the tolerance must catch: one step more of warm-up is far outside it."""
    config = BASE.replace(
        magnitude="adam", magnitude_hparams={"lr": 1e-2}, schedule="warmup_cosine", warmup_steps=10
    )
    (result,) = train_batched([config])
    _, rows = trainer_run(config.replace(warmup_steps=11))
    losses = [(got, want) for (_, n, got), (_, _, want) in zip(result.rows, rows) if n != "lr"]
    assert max(abs(g - w) / abs(w) for g, w in losses if w) > 1e-4


def test_a_diverging_member_does_not_poison_the_others():
    healthy = [
        BASE.replace(magnitude="sgd", magnitude_hparams={"lr": 0.1, "momentum": 0.9}, seed=s)
        for s in (0, 1)
    ]
    wild = BASE.replace(magnitude="sgd", magnitude_hparams={"lr": 1e6, "momentum": 0.9}, seed=2)
    together = train_batched([healthy[0], wild, healthy[1]])
    assert [r.status for r in together] == ["finished", "diverged", "finished"]
    trainer, rows = trainer_run(wild)
    assert trainer.status == "diverged"
    assert_same_run(together[1], trainer, rows)  # stopped where Trainer stops it
    assert together[1].step < BASE.steps
    alone = train_batched(healthy)
    for with_wild, without in zip((together[0], together[2]), alone):
        assert with_wild.rows == without.rows  # nothing of the wild member leaks in
        for name, weight in without.parameters.items():
            assert torch.equal(with_wild.parameters[name], weight)
        assert all(math.isfinite(v) for _, _, v in with_wild.rows)
    for config, result in zip(healthy, alone):
        assert_same_run(result, *trainer_run(config))


class ExactPathOnly(BatchedTrainer):
    """Every step through the masks and scales (no CPU shortcut), as on a GPU."""

    def _build(self) -> None:
        super()._build()
        self.cheap_sync = False


def test_the_cpu_shortcut_changes_no_number():
    configs = [
        BASE.replace(magnitude="sgd", magnitude_hparams={"lr": lr, "momentum": 0.9}, seed=seed)
        for lr, seed in ((0.1, 0), (1e6, 1), (0.05, 2))  # the second diverges
    ]
    shortcut, exact = train_batched(configs), ExactPathOnly(configs).run()
    assert [r.status for r in exact] == [r.status for r in shortcut]
    assert [r.status for r in exact] == ["finished", "diverged", "finished"]
    for a, b in zip(shortcut, exact):
        assert a.rows == b.rows
        assert all(torch.equal(a.parameters[k], b.parameters[k]) for k in a.parameters)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"dataset": "teacher"}, "dataset"),
        ({"model": "cnn1d"}, "model"),
        ({"steps": 61}, "steps"),
        ({"batch_size": 64}, "batch_size"),
        ({"width": 64}, "width"),
        ({"eval_every": 30}, "eval_every"),
        ({"magnitude": "sgd"}, "magnitude"),
    ],
)
def test_runs_that_differ_in_a_shared_setting_cannot_batch(change, named):
    adam = BASE.replace(magnitude="adam")
    with pytest.raises(ValueError, match=rf"{named} differs .*configs\[1\]"):
        check_batchable([adam, adam.replace(**change)])
    with pytest.raises(ValueError, match=named):
        train_batched([adam, adam.replace(**change)])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (BASE.replace(magnitude="adam", direction="sgd", grafted=["hidden"]), "partial grafts"),
        (BASE.replace(magnitude="lion"), "lion.*no batched rule.*sgd, adam"),
        (BASE.replace(magnitude="adam", direction="lion"), "direction='lion'.*no batched rule"),
        (BASE.replace(magnitude="adam", static_ratios="ratios.json"), "static_ratios"),
        (BASE.replace(magnitude="adam", custom="tasks:build"), "custom"),
    ],
)
def test_runs_without_a_batched_path_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        check_batchable([config])


def test_what_may_differ_and_what_changes_the_rule():
    sgd = BASE.replace(magnitude="sgd", magnitude_hparams={"lr": 0.1, "momentum": 0.9})
    other = sgd.replace(
        magnitude_hparams={"lr": 0.3, "momentum": 0.5},
        schedule="warmup_cosine",
        warmup_steps=5,
        seed=4,
        name="b",
        graft_lr=2.0,
        flush_seconds=1.0,
    )
    check_batchable([sgd, other])  # lr, momentum, schedule, warm-up, seed, name: one batch
    plain = sgd.replace(magnitude_hparams={"lr": 0.1})
    with pytest.raises(ValueError, match="whether momentum is 0 differs"):
        check_batchable([sgd, plain])
    with pytest.raises(ValueError, match="at least one"):
        check_batchable([])
