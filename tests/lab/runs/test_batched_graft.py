"""Batched grafted runs M#D (M, D in SGD, Adam): each member reproduces its config's own
``Trainer`` run through ``Graft``: final weights, every metric row, the per-layer norms it
records (‖Δ_M‖, ‖Δ_D‖, the applied step, ‖g‖, ‖w‖, skips), its checkpoints.

Tolerance: ``test_batched.py``'s standard (a relative 1e-5 on every value, 1e-7 absolute).
Measured here (torch 2.13 CPU, 2 threads, 3 members, 60 steps; adam#sgd, sgd#adam and the
sgd#sgd control, members differing in seed, lrs, schedule and warm-up): the final weights and
every recorded norm and validation loss are bit-identical to ``Trainer``'s, the training
losses within 2.3e-7 relative (one float32 ulp: the vmapped cross-entropy sums the batch in
another order). Where D's or
M's betas, eps, momentum, weight decay or graft_lr differ between members (one tensor per
member instead of a Python scalar), the weights differ by at most 1.5e-7 (absolute) and the
norms by 2.9e-7 (relative) after 60 steps. ``test_the_comparison_has_teeth`` shows what the
tolerance catches.
"""

import math

import pytest
import torch

from grafting_core.lab.runs.batched import (
    BatchedTrainer,
    batch_key,
    check_batchable,
    train_batched,
)
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.trainer import Trainer, read_checkpoint
from tests.lab.runs.test_batched import BASE, RTOL, assert_same_run

NAN_AT = 13  # the step at which a poisoned member's gradient of one layer is NaN
POISONED = "fc2.weight"


def pair(m, m_hp, d, d_hp, **changes) -> RunConfig:
    return BASE.replace(
        magnitude=m, magnitude_hparams=m_hp, direction=d, direction_hparams=d_hp, **changes
    )


SGD = {"lr": 0.1, "momentum": 0.9}
ADAM = {"lr": 3e-3}
PAIRS = {
    "adam#sgd": [
        pair("adam", {"lr": 3e-3}, "sgd", SGD, seed=0),
        pair("adam", {"lr": 1e-2}, "sgd", {"lr": 0.3, "momentum": 0.9}, seed=1,
             schedule="warmup_cosine", warmup_steps=10),
        pair("adam", {"lr": 1e-3}, "sgd", SGD, seed=0, schedule="warmup_cosine", warmup_steps=25),
    ],
    "sgd#adam": [
        pair("sgd", SGD, "adam", ADAM, seed=0),
        pair("sgd", {"lr": 0.3, "momentum": 0.9}, "adam", {"lr": 1e-2}, seed=2,
             schedule="warmup_cosine", warmup_steps=5),
        pair("sgd", {"lr": 0.03, "momentum": 0.9}, "adam", ADAM, seed=1, schedule="cosine"),
    ],
    # the positive control: M = SGD at a tenth of D's lr, D = SGD
    "sgd#sgd": [
        pair("sgd", {"lr": 0.01, "momentum": 0.9}, "sgd", SGD, seed=0),
        pair("sgd", {"lr": 0.03, "momentum": 0.9}, "sgd", {"lr": 0.3, "momentum": 0.9}, seed=1,
             schedule="warmup_cosine", warmup_steps=10),
        pair("sgd", {"lr": 0.005, "momentum": 0.9}, "sgd", {"lr": 0.05, "momentum": 0.9},
             seed=2, schedule="warmup_cosine", warmup_steps=3),
    ],
}  # fmt: skip


class Recorded:
    """What a run hands its callbacks besides the metrics: norms and checkpoints."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.norms: list[torch.Tensor] = []
        self.checkpoints: list[bytes] = []

    def on_norms(self, steps, values) -> None:
        self.steps += list(steps)
        self.norms.append(torch.as_tensor(values))

    @property
    def table(self) -> torch.Tensor:
        return torch.cat(self.norms)


def trainer_run(config: RunConfig, trainer_class=Trainer, **options):
    """``config`` through Trainer: the trainer, its metric rows (no ``steps_per_second``) and
    its norms and checkpoints."""
    collected, seen = [], Recorded()
    trainer = trainer_class(config, **options)
    trainer.add_callback("on_metrics", lambda _, rows: collected.extend(rows))
    trainer.add_callback("on_norms", lambda _, steps, values: seen.on_norms(steps, values))
    trainer.add_callback("on_checkpoint", lambda _, blob: seen.checkpoints.append(blob))
    trainer.run()
    return trainer, [r for r in collected if r[1] != "steps_per_second"], seen


def batched_run(configs, trainer_class=BatchedTrainer, **options):
    """``configs`` as one batch recording norms: the results and what each member handed
    its callbacks."""
    batch = trainer_class(configs, record_norms=True, **options)
    seen = [Recorded() for _ in configs]
    batch.add_callback("on_norms", lambda _, m, steps, values: seen[m].on_norms(steps, values))
    batch.add_callback("on_checkpoint", lambda _, m, blob: seen[m].checkpoints.append(blob))
    return batch.run(), seen


def assert_same_records(got: Recorded, want: Recorded) -> float:
    """The same norm records (steps, every field) and checkpoints; returns the largest
    relative difference of a norm."""
    assert got.steps == want.steps
    a, b = got.table, want.table
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-7, equal_nan=True)
    both = torch.isfinite(b) & (b != 0)
    worst = float(((a - b).abs() / b.abs())[both].max()) if both.any() else 0.0
    assert len(got.checkpoints) == len(want.checkpoints)
    for blob_a, blob_b in zip(got.checkpoints, want.checkpoints):
        assert_same_checkpoint(blob_a, blob_b)
    return worst


def assert_same_checkpoint(blob_a: bytes, blob_b: bytes) -> None:
    ca, cb = read_checkpoint(blob_a), read_checkpoint(blob_b)
    assert ca["step"] == cb["step"]
    assert ca["scheduler"] == cb["scheduler"]
    assert ca["config"] == cb["config"]
    torch.testing.assert_close(ca["model"], cb["model"], rtol=RTOL, atol=1e-7)
    oa, ob = ca["optimizer"], cb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    torch.testing.assert_close(oa["state"], ob["state"], rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("name", list(PAIRS))
def test_grafted_members_equal_their_own_trainer_runs(name):
    configs = PAIRS[name]
    results, seen = batched_run(configs)
    for config, result, records in zip(configs, results, seen):
        assert result.config is config
        trainer, rows, want = trainer_run(config)
        assert trainer.status == "finished"
        assert_same_run(result, trainer, rows)
        assert_same_records(records, want)
        assert result.step == BASE.steps
        assert [s for s, _ in result.evals] == [19, 39, 59]
        # validation losses to the bit (each member's loss reduced on its own, as Trainer's):
        # a comparison's means and verdicts then do not depend on what trained batched
        assert result.evals == [(s, v) for s, n, v in rows if n == "val_loss"]
        assert records.steps == list(range(BASE.steps))


def test_hyperparameters_of_both_children_that_differ_per_member():
    """D's betas, eps, momentum, weight decay, M's too, and graft_lr one per member (the
    per-member tensor path), at a granularity with several tensors per layer."""
    configs = [
        pair("adam", {"lr": 3e-3}, "sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True},
             graft_lr=1.0),
        pair("adam", {"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 1e-3}, "sgd",
             {"lr": 0.2, "momentum": 0.5, "nesterov": True, "weight_decay": 1e-2},
             graft_lr=0.5, seed=1),
    ]  # fmt: skip
    swapped = [
        pair("sgd", {"lr": 0.05}, "adam", {"lr": 1e-3}, granularity="module"),
        pair("sgd", {"lr": 0.1, "weight_decay": 1e-3}, "adam",
             {"lr": 1e-3, "betas": (0.8, 0.99), "eps": 1e-6}, granularity="module", graft_lr=2.0,
             seed=3),
    ]  # fmt: skip
    for batch in (configs, swapped):
        results, seen = batched_run(batch)
        for config, result, records in zip(batch, results, seen):
            trainer, rows, want = trainer_run(config)
            assert_same_run(result, trainer, rows)
            assert_same_records(records, want)


def test_the_comparison_has_teeth():
    """What the tolerance must catch: one step more of warm-up is far outside it."""
    config = PAIRS["adam#sgd"][1]
    (result,) = train_batched([config])
    _, rows, _ = trainer_run(config.replace(warmup_steps=11))
    losses = [(got, want) for (_, n, got), (_, _, want) in zip(result.rows, rows) if n != "lr"]
    assert max(abs(g - w) / abs(w) for g, w in losses if w) > 1e-4


def test_a_diverging_graft_does_not_poison_the_others():
    healthy = PAIRS["sgd#adam"][:2]
    wild = healthy[0].replace(magnitude_hparams={"lr": 1e6, "momentum": 0.9}, seed=2)
    together, seen = batched_run([healthy[0], wild, healthy[1]])
    assert [r.status for r in together] == ["finished", "diverged", "finished"]
    trainer, rows, want = trainer_run(wild)
    assert trainer.status == "diverged"
    assert_same_run(together[1], trainer, rows)  # stopped where Trainer stops it
    assert together[1].step < BASE.steps
    assert_same_records(seen[1], want)
    alone = train_batched(healthy)
    for with_wild, without in zip((together[0], together[2]), alone):
        assert with_wild.rows == without.rows  # nothing of the wild member leaks in
        for name, weight in without.parameters.items():
            assert torch.equal(with_wild.parameters[name], weight)


class PoisonedTrainer(Trainer):
    """Trainer whose gradient of one layer is NaN at step ``NAN_AT``."""

    def _build(self) -> None:
        super()._build()
        param = dict(self.model.named_parameters())[POISONED]
        param.register_hook(lambda g: g * math.nan if self.step == NAN_AT else g)


class PoisonedBatch(BatchedTrainer):
    """The same NaN gradient in the batch's member 1 (the others' stay finite)."""

    def _graft_step(self, grads, step, record):
        if step == NAN_AT:
            at = self.names.index(POISONED)
            start = sum(self.sizes[:at])
            grads = grads.clone()
            grads[self.members.index(1), start : start + self.sizes[at]] = math.nan
        super()._graft_step(grads, step, record)


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "unrecorded"])
def test_a_non_finite_gradient_skips_the_layer_as_graft_does(record):
    """The layer is skipped (its children see a zero gradient), counted in
    ``nonfinite_skips`` and marked in the norms; the run goes on, as Trainer's."""
    configs = [PAIRS["sgd#adam"][0], PAIRS["sgd#adam"][1]]
    assert_skips_as_trainer([c.replace(record_every=1 if record else 7) for c in configs])


def assert_skips_as_trainer(configs) -> None:
    """The second member's layer ``POISONED`` gets a NaN gradient at ``NAN_AT``: batched, it
    ends as that Trainer run does (one skip, the same rows and norm records, the skip marked
    where norms are recorded every step); the first member, clean, as its own."""
    results, seen = batched_run(configs, PoisonedBatch)
    trainer, rows, want = trainer_run(configs[1], PoisonedTrainer)
    assert trainer.status == results[1].status == "finished"
    assert int(trainer.optimizer.nonfinite_skips.sum()) == 1
    assert_same_run(results[1], trainer, rows)
    assert_same_records(seen[1], want)
    if configs[1].record_every == 1:
        skipped = seen[1].table[NAN_AT, :, -1]
        assert skipped.tolist() == [float(n == POISONED) for n in trainer.optimizer.layers.names]
    clean, rows, want = trainer_run(configs[0])  # the other member: no skip
    assert_same_run(results[0], clean, rows)
    assert_same_records(seen[0], want)


def assert_resumes_exactly(configs, pause) -> list[bytes]:
    """``configs`` paused at ``pause`` as a batch resume, as a batch, to what the batch
    trained straight, and the second member resumed alone in Trainer ends as Trainer
    trained straight; returns the pause's checkpoints."""
    straight, _ = batched_run(configs)
    paused, seen = batched_run(configs, pause_at=pause)
    assert [r.status for r in paused] == ["stopped"] * len(configs)
    blobs = [s.checkpoints[-1] for s in seen]
    assert all(read_checkpoint(b)["step"] == pause for b in blobs)
    resumed, _ = batched_run(configs, resume=blobs)
    for want, got in zip(straight, resumed):
        assert got.status == "finished"
        for name, weight in want.parameters.items():
            torch.testing.assert_close(got.parameters[name], weight, rtol=0, atol=0)
        # the same values at every step after the pause (flushes, and so lr rows, differ)
        tail = {r[:2]: r[2] for r in want.rows if r[0] >= pause and r[1] != "lr"}
        assert {r[:2]: r[2] for r in got.rows if r[1] != "lr"} == tail
    trainer = Trainer(configs[1], resume=blobs[1])
    trainer.run()
    alone, rows, _ = trainer_run(configs[1])
    for name, weight in alone.model.named_parameters():
        torch.testing.assert_close(
            dict(trainer.model.named_parameters())[name], weight, rtol=RTOL, atol=1e-7
        )
    return blobs


@pytest.mark.parametrize("pause", [20, 27])  # at a checkpoint (every 20 here) and between
def test_a_paused_graft_resumes_exactly_as_a_batch_or_in_trainer(pause):
    assert_resumes_exactly([c.replace(checkpoint_every=20) for c in PAIRS["sgd#adam"]], pause)


def test_batch_keys_group_grafts_by_pair_apart_from_plain_runs():
    plain = BASE.replace(magnitude="adam", magnitude_hparams=ADAM)
    adam_sgd = PAIRS["adam#sgd"]
    keys = {batch_key(c) for c in adam_sgd}
    assert len(keys) == 1 and None not in keys  # lrs, seeds, warm-ups: one batch
    others = [
        plain,
        PAIRS["sgd#adam"][0],
        PAIRS["sgd#sgd"][0],
        pair("adam", ADAM, "adam", {"lr": 1e-2}),
        pair("adam", ADAM, "sgd", {"lr": 0.1}),  # D without momentum: another rule
        adam_sgd[0].replace(granularity="global"),
    ]
    all_keys = [batch_key(c) for c in [adam_sgd[0], *others]]
    assert None not in all_keys and len(set(all_keys)) == len(all_keys)
    assert batch_key(adam_sgd[0].replace(grafted=["hidden"])) is None
    with pytest.raises(ValueError, match="direction differs"):
        check_batchable([adam_sgd[0], plain])
    with pytest.raises(ValueError, match="D's whether momentum is 0 differs"):
        check_batchable([adam_sgd[0], others[4]])
    # nested grafts (the negative control): test_batched_nested.py
