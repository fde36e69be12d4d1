"""Batched grafted runs through the store: ``execute_batch`` and ``run_all`` write for each
M#D member what its own ``execute_run`` writes (metrics, norms, status, checkpoints), a
batched graft paused at a rung resumes as a batch or alone, and a comparison with its
controls (the negative control's nested graft too) trained batched equals one trained run by
run (``GRAFTING_BATCH=0``).

Tolerance: ``test_batched.py``'s (``test_batched_store.assert_same_store_run``).
"""

import numpy as np

import grafting_core.lab.experiments.common as common
from grafting_core.lab.experiments.common import graft_run, plan_batches, run_all
from grafting_core.lab.experiments.compare import NESTED_GRAFT, compare
from grafting_core.lab.experiments.comparison_plan import SweepPlan
from grafting_core.lab.runs.batched import BatchedTrainer
from grafting_core.lab.runs.groups import record_runs
from grafting_core.lab.runs.runner import execute_batch, execute_run
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import PAIR
from tests.helpers import SEARCH_TINY as TINY
from tests.lab.runs.test_batched_store import (
    BASE,
    assert_same_store_run,
    paused_alone_as_straight,
    paused_batch,
    twin_stores,
)

SGD, ADAM = PAIR["sgd"], PAIR["adam"]
GRAFTS = [
    BASE.replace(magnitude="adam", magnitude_hparams={"lr": lr}, direction="sgd",
                 direction_hparams={"lr": d_lr, "momentum": 0.9}, seed=seed, warmup_steps=w)
    for lr, d_lr, seed, w in ((1e-3, 1e-2, 0, 2), (3e-3, 1e-2, 1, 2), (1e-2, 3e-2, 0, 6),
                              (3e-2, 1e-1, 2, 0))
]  # fmt: skip


def batches_seen(monkeypatch) -> list[BatchedTrainer]:
    """The BatchedTrainers that run from now on."""
    seen = []
    train = BatchedTrainer.run
    monkeypatch.setattr(BatchedTrainer, "run", lambda t: seen.append(t) or train(t))
    return seen


def test_grafted_members_write_what_their_own_runs_write(tmp_path, monkeypatch):
    seen = batches_seen(monkeypatch)
    batched, alone, b_ids, a_ids = twin_stores(tmp_path, GRAFTS)
    assert execute_batch(batched, b_ids) == ["finished"] * len(GRAFTS)
    assert [len(t.configs) for t in seen] == [len(GRAFTS)]  # one batch
    for run_id in a_ids:
        execute_run(alone, run_id)
    for b, a in zip(b_ids, a_ids):
        assert_same_store_run(batched, b, alone, a)


def test_a_paused_batched_graft_resumes_as_a_batch_and_alone(tmp_path):
    batched, alone, b_ids, a_ids = twin_stores(tmp_path, GRAFTS)
    paused_batch(batched, b_ids, 7)
    # the first member resumes alone in Trainer, the others as a batch
    assert execute_run(batched, b_ids[0], resume=True) == "finished"
    assert execute_batch(batched, b_ids[1:], resume=True) == ["finished"] * 3
    paused_alone_as_straight(tmp_path, alone, GRAFTS, a_ids, 7)
    for b, a in zip(b_ids, a_ids):
        assert_same_store_run(batched, b, alone, a)


def test_run_all_batches_grafts_by_pair_and_equals_run_by_run(tmp_path, monkeypatch):
    base = BASE.replace(warmup_steps=2)
    slow = ("sgd@lr/10", ("sgd", {**SGD[1], "lr": SGD[1]["lr"] / 10}))
    planned = [
        run
        for seed in (0, 1, 2)
        for run in (
            graft_run(base, ("adam", ADAM), ("sgd", SGD), seed=seed),
            graft_run(base, ("sgd", SGD), ("adam", ADAM), seed=seed),
            graft_run(base, slow, ("sgd", SGD), seed=seed, role="control_graft"),  # sgd#sgd
            graft_run(base, ("adam", ADAM), None, seed=seed),
        )
    ]
    store = RunStore(tmp_path / "plan")
    _, todo = record_runs(store, planned, group="p", kind="grid")
    batches, alone = plan_batches(store, todo)
    assert [len(ids) for ids, _ in batches] == [3, 3, 3, 3] and not alone
    labels = [{store.run(r)["name"] for r in ids} for ids, _ in batches]
    assert sorted(map(sorted, labels)) == [["adam#adam"], ["adam#sgd"], ["sgd#adam"],
                                           ["sgd@lr/10#sgd"]]  # fmt: skip
    stores, ids = {}, {}
    seen = batches_seen(monkeypatch)
    for batch in (True, False):  # False: GRAFTING_BATCH=0
        monkeypatch.setattr(common, "BATCH", batch)
        stores[batch] = RunStore(tmp_path / str(batch))
        ids[batch] = run_all(stores[batch], planned, group="g", kind="grid")
    assert len(seen) == 4
    for a, b in zip(ids[True], ids[False]):
        assert stores[True].run(a)["name"] == stores[False].run(b)["name"]
        assert_same_store_run(stores[True], a, stores[False], b)


def test_a_comparison_with_controls_trained_batched_equals_one_trained_run_by_run(
    tmp_path, monkeypatch
):
    """The protocol's shape: the grafts, the positive control's sgd#sgd and the negative
    control's nested graft (X#Y)#X train batched."""
    seen = batches_seen(monkeypatch)
    plan = SweepPlan(points=3, factor=10, warmups=(0.1,), tune_seeds=(100,), control=True)
    stores, results = {}, {}
    for batch in (True, False):
        monkeypatch.setattr(common, "BATCH", batch)
        store = stores[batch] = RunStore(tmp_path / str(batch))
        results[batch] = compare(store, BASE.replace(**TINY), PAIR, seeds=(0, 1, 2), plan=plan)
    grafted = [t for t in seen if t.configs[0].direction]
    assert {t.configs[0].label for t in grafted} >= {"adam#sgd", "sgd#adam", "sgd#sgd"}
    negative = [t for t in grafted if t.configs[0].magnitude == NESTED_GRAFT]
    assert [len(t.configs) for t in negative] == [3]  # its three seeds: one batch
    got, want = results[True], results[False]
    assert got.verdicts["verdict"].tolist() == want.verdicts["verdict"].tolist()
    assert list(got.controls.columns) == list(want.controls.columns)
    for column in got.controls.columns:  # the judgments; their numbers to the tolerance
        a, b = got.controls[column], want.controls[column]
        if a.dtype.kind == "f":
            assert np.allclose(a, b, rtol=1e-4, atol=1e-7, equal_nan=True), column
        else:
            assert a.tolist() == b.tolist(), column
    key = ["name", "role", "config.seed", "config.warmup_steps", "config.magnitude_hparams.lr"]
    runs = {b: stores[b].runs(group=results[b].group) for b in stores}
    a = runs[True].sort_values(key).reset_index(drop=True)
    b = runs[False].sort_values(key).reset_index(drop=True)
    assert a[key + ["status", "last_step"]].equals(b[key + ["status", "last_step"]])
    assert {"negative_control", "control_graft"} <= set(a["role"])
    for ra, rb in zip(a["run_id"], b["run_id"]):
        assert_same_store_run(stores[True], ra, stores[False], rb)
