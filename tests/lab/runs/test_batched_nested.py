"""Batched nested grafts: the negative control's ``(X#Y)#X`` (M a ``Graft`` of X and Y built
from a spec, D = X; X, Y in SGD, Adam) trains as one batch, ``GraftRule(GraftRule(X, Y),
X)``, each member reproducing its own ``Trainer`` run by ``test_batched_graft.py``'s
standard: final weights, every metric row (``lr`` on the inner Graft's schedule,
``optimizer_state_bytes`` with the outer Graft's scratch), the per-layer norms, checkpoints
(the inner Graft's children, counters and skips) that resume in ``Trainer`` and as a batch,
divergence, a NaN gradient in one layer.

Measured here (torch 2.13 CPU, 3 members, 60 steps): the final weights and every recorded
norm are bit-identical to ``Trainer``'s, the training losses within 2.1e-7 relative.
"""

import pytest
import torch

from grafting_core.lab.experiments.compare import NESTED_GRAFT
from grafting_core.lab.runs.batched import GRAFT_CLASS, batch_key, check_batchable, train_batched
from grafting_core.lab.runs.trainer import read_checkpoint
from tests.lab.runs.test_batched import BASE, assert_same_run
from tests.lab.runs.test_batched_graft import (
    assert_resumes_exactly,
    assert_same_records,
    assert_skips_as_trainer,
    batched_run,
    pair,
    trainer_run,
)

SGD = {"lr": 0.1, "momentum": 0.9}
ADAM = {"lr": 3e-3}


def nested(x, x_hp, y, y_hp, **changes):
    """The negative control's shape: M = Graft(x, y), D = x (as ``compare`` plans it)."""
    inner = {"magnitude": [x, x_hp], "direction": [y, y_hp]}
    return BASE.replace(
        magnitude=GRAFT_CLASS,
        magnitude_hparams=inner,
        direction=x,
        direction_hparams=x_hp,
        **changes,
    )


CONTROLS = {
    "(adam#sgd)#adam": [
        nested("adam", ADAM, "sgd", SGD, seed=0),
        nested("adam", {"lr": 1e-2}, "sgd", {"lr": 0.3, "momentum": 0.9}, seed=1,
               schedule="warmup_cosine", warmup_steps=10),
        nested("adam", {"lr": 1e-3}, "sgd", SGD, seed=2, schedule="cosine"),
    ],
    "(sgd#adam)#sgd": [
        nested("sgd", SGD, "adam", ADAM, seed=0, schedule="warmup_cosine", warmup_steps=5),
        nested("sgd", {"lr": 0.3, "momentum": 0.9}, "adam", {"lr": 1e-2}, seed=1),
    ],
    # the graft's own options per member, at a granularity of several tensors per layer
    # (the inner Graft's layers stay tensor by tensor, as Trainer builds it)
    "module, graft_lr": [
        nested("sgd", {"lr": 0.05}, "sgd", {"lr": 0.2}, granularity="module", graft_lr=0.5),
        nested("sgd", {"lr": 0.1}, "sgd", {"lr": 0.02}, granularity="module", seed=3),
    ],
}  # fmt: skip


def test_the_control_is_what_compare_plans():
    assert NESTED_GRAFT == GRAFT_CLASS


@pytest.mark.parametrize("name", list(CONTROLS))
def test_nested_members_equal_their_own_trainer_runs(name):
    configs = CONTROLS[name]
    assert len({batch_key(c) for c in configs}) == 1 and batch_key(configs[0]) is not None
    results, seen = batched_run(configs)
    for config, result, records in zip(configs, results, seen):
        trainer, rows, want = trainer_run(config)
        assert trainer.status == result.status == "finished"
        assert_same_run(result, trainer, rows)
        assert_same_records(records, want)  # norms and the final checkpoint
        assert records.steps == list(range(BASE.steps))
        assert result.evals == [(s, v) for s, n, v in rows if n == "val_loss"]
        for key in ("lr", "optimizer_state_bytes"):
            assert result.series(key) == [(s, v) for s, n, v in rows if n == key]
        for n, weight in trainer.model.named_parameters():  # to the bit, as measured
            assert torch.equal(result.parameters[n], weight.detach()), n


def test_a_diverging_nested_graft_does_not_poison_the_others():
    healthy = CONTROLS["(sgd#adam)#sgd"]
    wild = nested("sgd", {"lr": 1e6, "momentum": 0.9}, "adam", ADAM, seed=2)
    together, seen = batched_run([healthy[0], wild, healthy[1]])
    assert [r.status for r in together] == ["finished", "diverged", "finished"]
    trainer, rows, want = trainer_run(wild)
    assert trainer.status == "diverged"
    assert_same_run(together[1], trainer, rows)
    assert_same_records(seen[1], want)
    alone = train_batched(healthy)
    for with_wild, without in zip((together[0], together[2]), alone):
        assert with_wild.rows == without.rows
        for n, weight in without.parameters.items():
            assert torch.equal(with_wild.parameters[n], weight)


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "unrecorded"])
def test_a_non_finite_gradient_skips_the_layer_as_graft_does(record):
    """The outer Graft skips the layer (counted, marked in the norms), the inner one and
    every child see a zero gradient for it, as in Trainer."""
    configs = [c.replace(record_every=1 if record else 7) for c in CONTROLS["(sgd#adam)#sgd"]]
    assert_skips_as_trainer(configs)


@pytest.mark.parametrize("pause", [20, 27])
def test_a_paused_nested_graft_resumes_exactly_as_a_batch_or_in_trainer(pause):
    configs = [c.replace(checkpoint_every=20) for c in CONTROLS["(adam#sgd)#adam"]]
    blobs = assert_resumes_exactly(configs, pause)
    state = read_checkpoint(blobs[1])
    assert "magnitude.magnitude.exp_avg" in state["optimizer"]["state"][0]  # the inner X


def test_batch_keys_group_nested_grafts_by_structure_apart_from_everything_else():
    adam_sgd = CONTROLS["(adam#sgd)#adam"]
    key = batch_key(adam_sgd[0])
    others = [
        CONTROLS["(sgd#adam)#sgd"][0],
        nested("adam", ADAM, "adam", {"lr": 1e-2}),  # another Y
        nested("adam", ADAM, "sgd", {"lr": 0.1}),  # Y without momentum: another rule
        adam_sgd[0].replace(direction="sgd", direction_hparams=SGD),  # another D
        adam_sgd[0].replace(granularity="global"),
        pair("adam", ADAM, "sgd", SGD),  # the flat graft X#Y
        pair("adam", ADAM, "adam", ADAM),  # the flat X#X
        BASE.replace(magnitude="adam", magnitude_hparams=ADAM),
    ]
    keys = [key, *(batch_key(c) for c in others)]
    assert None not in keys and len(set(keys)) == len(keys)
    with pytest.raises(ValueError, match="nested graft differs"):
        check_batchable([adam_sgd[0], others[1]])
    with pytest.raises(ValueError, match="M's D's whether momentum is 0 differs"):
        check_batchable([adam_sgd[0], others[2]])
    # still refused: partial grafts, a Graft with its own options, a nested plain run,
    # a child without a batched rule
    refused = [
        adam_sgd[0].replace(grafted=["hidden"]),
        adam_sgd[0].replace(magnitude_hparams={**adam_sgd[0].magnitude_hparams, "eps": 1e-8}),
        adam_sgd[0].replace(direction=""),
        nested("adam", ADAM, "lion", {"lr": 1e-4}),
    ]
    assert [batch_key(c) for c in refused] == [None] * len(refused)
    with pytest.raises(ValueError, match="magnitude's direction='lion' has no batched rule"):
        check_batchable([refused[-1]])
