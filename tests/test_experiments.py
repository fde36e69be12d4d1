"""Experiments end to end on tiny settings, inline and through worker processes."""

import pytest

from grafting_core.lab.config import RunConfig
from grafting_core.lab.executor import LocalExecutor
from grafting_core.lab.experiments import (
    LAB_OPTIMIZERS,
    grid,
    grid_matrix,
    schedule_transfer,
    static_ratio_experiment,
)
from grafting_core.lab.store import RunStore

BASE = RunConfig(dataset="mnist1d", width=16, steps=40, batch_size=32, eval_every=20,
                 eval_examples=100, log_every=10)
SGD, ADAM = ("sgd", LAB_OPTIMIZERS["sgd"]), ("adam", LAB_OPTIMIZERS["adam"])


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


def test_grid_runs_every_pair_in_worker_processes(store):
    executor = LocalExecutor(store.path.parent, max_workers=2)
    seen = []
    try:
        group, table = grid(store, BASE, dict([SGD, ADAM]), seeds=[0, 1], executor=executor,
                            progress=lambda done, total: seen.append((done, total)))
    finally:
        executor.shutdown()
    assert len(table) == 8 and (table["status"] == "finished").all()
    assert seen[-1] == (8, 8)
    assert set(table["name"]) == {"sgd#sgd", "sgd#adam", "adam#sgd", "adam#adam"}
    plain = store.run(table.set_index("name").loc["adam#adam", "run_id"].iloc[0])
    assert plain["config"]["direction"] == ""  # A#A is plain A
    matrix = grid_matrix(table)
    assert list(matrix.index) == ["sgd", "adam"] and matrix.notna().all().all()


def test_schedule_transfer_replays_m_alone_step_sizes_onto_d(store):
    group, table = schedule_transfer(store, BASE, ADAM, SGD)
    by_name = table.set_index("name")
    assert set(by_name.index) == {"adam#adam", "sgd#sgd", "adam#sgd", "replay(adam)#sgd"}
    assert (table["status"] == "finished").all()
    adam = store.layer_norms(by_name.loc["adam#adam", "run_id"], fields=["magnitude_norm"])
    replay = store.layer_norms(by_name.loc["replay(adam)#sgd", "run_id"], fields=["step_norm"])
    assert len(adam) == len(replay) > 0
    assert replay["value"].to_numpy() == pytest.approx(adam["value"].to_numpy(), rel=1e-5)


def test_static_ratio_experiment_reports_memory(store):
    group, table = static_ratio_experiment(store, BASE, ADAM, window=(5, 20), sgd_lrs=(0.03, 0.3))
    by_name = table.set_index("name")
    assert (table["status"] == "finished").all()
    assert "sgd+ratios(adam)" in by_name.index and table["best_sgd"].sum() == 1
    adam_bytes = by_name.loc["adam#adam", "optimizer_state_bytes"]
    ratio_bytes = by_name.loc["sgd+ratios(adam)", "optimizer_state_bytes"]
    assert ratio_bytes == pytest.approx(adam_bytes / 2)  # one momentum buffer vs m and v


def test_bad_window_is_refused(store):
    with pytest.raises(ValueError, match="window"):
        static_ratio_experiment(store, BASE, ADAM, window=(30, 400))
