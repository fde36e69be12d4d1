"""Batched stored runs: each member of ``execute_batch`` writes to the store what its own
``execute_run`` writes (metrics, norms, status, last step, layers, a checkpoint that
``execute_run(resume=True)`` continues), pauses at a rung and stops on request; a comparison
trained batched equals one trained run by run.

Tolerance: ``test_batched.py``'s (a relative 1e-5 on every value, 1e-7 absolute), which it
measured and explains; the losses of a batch differ from ``Trainer``'s by about one ulp.
"""

import math

import pandas as pd
import pytest
import torch

from grafting_core.lab.experiments.common import plan_batches, run_all
from grafting_core.lab.experiments.compare import compare
from grafting_core.lab.experiments.comparison_plan import SweepPlan
from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.batched import BatchedTrainer
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import (
    create_run,
    execute_batch,
    execute_run,
    pause_run,
    request_stop,
)
from grafting_core.lab.runs.trainer import read_checkpoint
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import PAIR
from tests.helpers import SEARCH_TINY as TINY

RTOL, ATOL = 1e-5, 1e-7
BASE = RunConfig(**{**TINY, "steps": 20, "eval_every": 10, "checkpoint_every": 10})
MEMBERS = [
    BASE.replace(magnitude="adam", magnitude_hparams={"lr": lr}, seed=seed, warmup_steps=w)
    for lr, seed, w in ((1e-3, 0, 2), (3e-3, 1, 2), (1e-2, 0, 6), (3e-2, 2, 0))
]


def metrics(store: RunStore, run_id: str) -> pd.DataFrame:
    table = store.metrics([run_id])
    table = table[table["name"] != "steps_per_second"]  # the clock's
    return table.sort_values(["name", "step"]).reset_index(drop=True)[["step", "name", "value"]]


def assert_same_store_run(store_a, a, store_b, b) -> None:
    """Run ``a`` of ``store_a`` holds what run ``b`` of ``store_b`` holds, to the tolerance."""
    ra, rb = store_a.run(a), store_b.run(b)
    for key in ("status", "last_step", "error"):
        assert ra[key] == rb[key], key
    ma, mb = metrics(store_a, a), metrics(store_b, b)
    assert ma[["step", "name"]].values.tolist() == mb[["step", "name"]].values.tolist()
    for got, want in zip(ma["value"], mb["value"]):
        assert math.isclose(got, want, rel_tol=RTOL, abs_tol=ATOL), (got, want)
    na, nb = store_a.layer_norms(a), store_b.layer_norms(b)
    assert len(na) == len(nb) > 0
    assert na[["step", "layer", "field"]].astype(str).values.tolist() == (
        nb[["step", "layer", "field"]].astype(str).values.tolist()
    )
    torch.testing.assert_close(
        torch.tensor(na["value"].values), torch.tensor(nb["value"].values), rtol=1e-4, atol=1e-6,
        equal_nan=True,
    )  # fmt: skip
    assert store_a.get_artifact(a, "layers") == store_b.get_artifact(b, "layers")
    names_a = set(store_a.artifact_names(a)) - {"stop_requested"}
    assert names_a == set(store_b.artifact_names(b)) - {"stop_requested"}
    if "checkpoint" in names_a:
        ca = read_checkpoint(store_a.get_artifact(a, "checkpoint"))
        cb = read_checkpoint(store_b.get_artifact(b, "checkpoint"))
        assert ca["step"] == cb["step"]
        assert ca["scheduler"] == cb["scheduler"]
        torch.testing.assert_close(ca["model"], cb["model"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(
            ca["optimizer"]["state"], cb["optimizer"]["state"], rtol=RTOL, atol=ATOL
        )


def assert_same_end(store_a, a, store_b, b) -> None:
    """The runs ended with the same weights and the same last evaluation."""
    ca = read_checkpoint(store_a.get_artifact(a, "checkpoint"))
    cb = read_checkpoint(store_b.get_artifact(b, "checkpoint"))
    assert ca["step"] == cb["step"] == BASE.steps
    torch.testing.assert_close(ca["model"], cb["model"], rtol=RTOL, atol=ATOL)
    last = [s.metrics([r], names=["val_loss"]).iloc[-1] for s, r in ((store_a, a), (store_b, b))]
    assert last[0]["step"] == last[1]["step"] == BASE.steps - 1
    assert math.isclose(last[0]["value"], last[1]["value"], rel_tol=RTOL)


def twin_stores(tmp_path, configs=MEMBERS):
    batched, alone = RunStore(tmp_path / "batched"), RunStore(tmp_path / "alone")
    ids = {name: [create_run(s, c) for c in configs] for name, s in (("b", batched), ("a", alone))}
    return batched, alone, ids["b"], ids["a"]


def paused_batch(batched, b_ids, step) -> None:
    """Train the batch ``b_ids`` to ``step``, where it stops, and lift the pause again."""
    for run_id in b_ids:
        pause_run(batched, run_id, step)
    assert execute_batch(batched, b_ids) == ["stopped"] * len(b_ids)
    for run_id in b_ids:
        assert batched.run(run_id)["last_step"] == step
        pause_run(batched, run_id, 0)


def test_members_write_what_their_own_runs_write(tmp_path):
    batched, alone, b_ids, a_ids = twin_stores(tmp_path)
    assert execute_batch(batched, b_ids) == ["finished"] * len(MEMBERS)
    for run_id in a_ids:
        execute_run(alone, run_id)
    for b, a in zip(b_ids, a_ids):
        assert_same_store_run(batched, b, alone, a)


def paused_alone_as_straight(tmp_path, alone, configs, run_ids, step):
    """The same pause by Trainer: each run of ``alone`` paused at ``step`` and resumed ends
    as the run trained straight (a store of its own)."""
    straight = RunStore(tmp_path / "straight")
    for config, run_id in zip(configs, run_ids):
        pause_run(alone, run_id, step)
        assert execute_run(alone, run_id) == "stopped"
        pause_run(alone, run_id, 0)
        execute_run(alone, run_id, resume=True)
        execute_run(straight, s := create_run(straight, config))
        assert_same_end(alone, run_id, straight, s)


@pytest.mark.parametrize("magnitude", ["adam", "sgd"])
def test_a_member_paused_at_the_rung_resumes_alone_as_the_run_trained_straight(tmp_path, magnitude):
    hp = {"lr": 3e-3} if magnitude == "adam" else {"lr": 0.05, "momentum": 0.9}
    configs = [m.replace(magnitude=magnitude, magnitude_hparams=hp) for m in MEMBERS]
    batched, alone, b_ids, a_ids = twin_stores(tmp_path, configs)
    paused_batch(batched, b_ids, 7)
    for run_id in b_ids:
        assert batched.metrics([run_id], names=["val_loss"])["step"].tolist() == [6]
        assert execute_run(batched, run_id, resume=True) == "finished"  # Trainer, alone
    paused_alone_as_straight(tmp_path, alone, configs, a_ids, 7)
    for b, a in zip(b_ids, a_ids):
        assert_same_store_run(batched, b, alone, a)


def test_a_paused_batch_resumes_as_a_batch(tmp_path):
    batched, alone, b_ids, a_ids = twin_stores(tmp_path)
    paused_batch(batched, b_ids, 13)
    assert execute_batch(batched, b_ids, resume=True) == ["finished"] * len(MEMBERS)
    paused_alone_as_straight(tmp_path, alone, MEMBERS, a_ids, 13)
    for b, a in zip(b_ids, a_ids):
        assert_same_store_run(batched, b, alone, a)


def test_a_stop_request_stops_its_member_resumably(tmp_path):
    batched, alone, b_ids, a_ids = twin_stores(tmp_path)
    request_stop(batched, b_ids[1])  # before it starts: it stops at its first flush
    statuses = execute_batch(batched, b_ids)
    assert statuses == ["finished", "stopped", "finished", "finished"]
    assert batched.run(b_ids[1])["last_step"] == TINY["log_every"]
    assert read_checkpoint(batched.get_artifact(b_ids[1], "checkpoint"))["step"] == 5
    assert execute_run(batched, b_ids[1], resume=True) == "finished"
    request_stop(alone, a_ids[1])  # the same stop, by Trainer
    for run_id in a_ids:
        execute_run(alone, run_id)
    execute_run(alone, a_ids[1], resume=True)
    for b, a in zip(b_ids, a_ids):
        assert_same_store_run(batched, b, alone, a)


def test_runs_that_cannot_batch_train_alone(store):
    plain = [PlannedRun(c, Arm("plain", c.magnitude)) for c in MEMBERS]
    odd = [
        PlannedRun(MEMBERS[0].replace(steps=12), Arm("plain", "adam")),  # another length
        PlannedRun(MEMBERS[0].replace(magnitude="lion", magnitude_hparams={"lr": 1e-4}),
                   Arm("plain", "lion")),  # no batched rule
        PlannedRun(MEMBERS[0].replace(direction="sgd", direction_hparams={"lr": 0.1}),
                   Arm("graft", "adam", "sgd")),  # grafted
        PlannedRun(RunConfig(dataset="chars", model="transformer", width=16, depth=1, steps=4,
                             batch_size=8, eval_every=4, eval_examples=16, log_every=2,
                             flush_seconds=0.0), Arm("plain", "adam")),  # vmap loops
    ]  # fmt: skip
    from grafting_core.lab.runs.groups import record_runs

    ids, todo = record_runs(store, plain + odd, group="g", kind="grid")
    batches, alone = plan_batches(store, todo)
    assert batches == [(ids[:4], False)]
    assert sorted(alone) == sorted((r, False) for r in ids[4:])
    ids = run_all(store, plain + odd, group="h", kind="grid")
    runs = store.runs(group="h").set_index("run_id")
    assert (runs.loc[ids, "status"] == "finished").all()
    assert runs.loc[ids, "last_step"].tolist() == [20] * 4 + [12, 20, 20, 4]


def test_batches_are_shared_out_to_the_workers(store):
    planned = [PlannedRun(c.replace(seed=s), Arm("plain", "adam")) for c in MEMBERS
               for s in range(5)]  # fmt: skip
    from grafting_core.lab.runs.groups import record_runs

    ids, todo = record_runs(store, planned, group="g", kind="grid")
    assert [len(b) for b, _ in plan_batches(store, todo, workers=1)[0]] == [10, 10]
    assert [len(b) for b, _ in plan_batches(store, todo, workers=4)[0]] == [5] * 4
    assert [len(b) for b, _ in plan_batches(store, todo[:5], workers=4)[0]] == [5]


def test_a_comparison_trained_batched_equals_one_trained_run_by_run(tmp_path, monkeypatch):
    batches = []
    train = BatchedTrainer.run
    monkeypatch.setattr(BatchedTrainer, "run", lambda t: batches.append(t) or train(t))
    plan = SweepPlan(
        points=3, factor=10, extensions=1, warmups=(0.1, 0.3), tune_seeds=(100,), rung=1 / 3,
        keep=2,
    )  # fmt: skip
    stores, results = {}, {}
    for batch in (True, False):
        store = stores[batch] = RunStore(tmp_path / str(batch))
        import grafting_core.lab.experiments.common as common

        old, common.BATCH = common.BATCH, batch
        try:
            results[batch] = compare(store, RunConfig(**TINY), PAIR, seeds=(0, 1, 2), plan=plan)
        finally:
            common.BATCH = old
    got, want = results[True], results[False]
    assert len(batches) >= 4 and max(len(t.configs) for t in batches) >= 5  # it did batch
    tuned = [got.sweep[got.sweep["best"]], want.sweep[want.sweep["best"]]]
    assert tuned[0][["arm", "lr", "warmup"]].equals(tuned[1][["arm", "lr", "warmup"]])
    assert got.verdicts["verdict"].tolist() == want.verdicts["verdict"].tolist()
    runs = {b: stores[b].runs(group=results[b].group) for b in stores}
    assert len(runs[True]) == len(runs[False])
    key = ["name", "role", "config.seed", "config.warmup_steps", "config.magnitude_hparams.lr"]
    a = runs[True].sort_values(key).reset_index(drop=True)
    b = runs[False].sort_values(key).reset_index(drop=True)
    assert a[key + ["status", "last_step"]].equals(b[key + ["status", "last_step"]])
    for ra, rb in zip(a["run_id"], b["run_id"]):
        assert_same_store_run(stores[True], ra, stores[False], rb)


def test_every_member_stopped_ends_the_batch(tmp_path):
    store = RunStore(tmp_path / "runs")
    ids = [create_run(store, c) for c in MEMBERS]
    for run_id in ids:
        request_stop(store, run_id)
    assert execute_batch(store, ids) == ["stopped"] * len(MEMBERS)
    assert [store.run(r)["last_step"] for r in ids] == [TINY["log_every"]] * len(MEMBERS)
