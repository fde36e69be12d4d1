"""Experiments end to end on tiny settings, inline and through worker processes."""

import time
from concurrent.futures import CancelledError, Future

import pandas as pd
import pytest

from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from grafting_core.lab.experiments.grid import (
    grid,
    grid_configs,
    grid_matrix,
    grid_reading,
    grid_spreads,
)
from grafting_core.lab.experiments.static_ratios import (
    static_ratio_configs,
    static_ratio_experiment,
)
from grafting_core.lab.experiments.transfer import schedule_transfer, submit_after
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import LocalExecutor
from grafting_core.lab.runs.runner import create_run, request_stop

BASE = RunConfig(
    dataset="mnist1d",
    width=16,
    steps=40,
    batch_size=32,
    eval_every=20,
    eval_examples=100,
    log_every=10,
)
SGD, ADAM = ("sgd", LAB_OPTIMIZERS["sgd"]), ("adam", LAB_OPTIMIZERS["adam"])


def test_grid_runs_every_pair_in_worker_processes(store):
    executor = LocalExecutor(store.path.parent, max_workers=2)
    seen = []
    try:
        group, table = grid(
            store,
            BASE,
            dict([SGD, ADAM]),
            seeds=[0, 1],
            executor=executor,
            progress=lambda done, total: seen.append((done, total)),
        )
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


def test_grid_configs_are_every_pair_per_seed_and_refuse_bad_input():
    planned = grid_configs(BASE, dict([SGD, ADAM]), seeds=[0, 3])
    assert [(c.name, c.seed) for c, _ in planned] == [
        ("sgd#sgd", 0),
        ("sgd#sgd", 3),
        ("sgd#adam", 0),
        ("sgd#adam", 3),
        ("adam#sgd", 0),
        ("adam#sgd", 3),
        ("adam#adam", 0),
        ("adam#adam", 3),
    ]
    assert [(a.role, a.magnitude, a.direction) for _, a in planned[::2]] == [
        ("plain", "sgd", ""),
        ("graft", "sgd", "adam"),
        ("graft", "adam", "sgd"),
        ("plain", "adam", ""),
    ]
    with pytest.raises(ValueError, match="at least two optimizers"):
        grid_configs(BASE, dict([SGD]))
    with pytest.raises(ValueError, match="seed"):
        grid_configs(BASE, dict([SGD, ADAM]), seeds=[1, 1])


def _table(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = [
        {"magnitude": m, "direction": d, "seed": s, "status": "finished", "val_loss": v}
        for (m, d), seeds in values.items()
        for s, v in enumerate(seeds)
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "values, verdict",
    [
        (
            {("a", "a"): [1.0], ("a", "b"): [1.1], ("b", "a"): [2.0], ("b", "b"): [2.2]},
            "Rows look alike",
        ),  # rows spread 0.15, columns 1.05
        (
            {("a", "a"): [1.0], ("a", "b"): [2.0], ("b", "a"): [1.1], ("b", "b"): [2.2]},
            "Columns look alike",
        ),
        ({("a", "a"): [1.0], ("a", "b"): [2.0], ("b", "a"): [2.0], ("b", "b"): [1.0]}, "Neither"),
    ],
)
def test_grid_reading_compares_spread_within_rows_and_columns(values, verdict):
    reading = grid_reading(_table(values))
    assert reading.startswith(verdict)
    assert "One seed" in reading


def test_grid_reading_says_when_seeds_move_cells_as_much():
    noisy = {
        ("a", "a"): [1.0, 1.6],
        ("a", "b"): [1.1, 1.7],
        ("b", "a"): [2.0, 1.4],
        ("b", "b"): [2.2, 1.6],
    }
    spreads = grid_spreads(_table(noisy))
    assert spreads["seeds"] == pytest.approx(0.6)  # each cell's two seeds differ by 0.6
    assert "not reliable" in grid_reading(_table(noisy))
    one_cell = _table({("a", "a"): [1.0], ("a", "b"): [1.1]})
    assert grid_reading(one_cell).startswith("Not enough finished runs")


class _RecordingExecutor:
    """Runs nothing; remembers what was submitted."""

    def __init__(self):
        self.submitted = []

    def submit(self, run_id, *, resume=False):
        self.submitted.append(run_id)
        future = Future()
        future.set_result("finished")
        return future

    def shutdown(self, *, wait=True):
        pass


def _wait(future):
    try:
        return future.result(timeout=10)
    except CancelledError:
        return "cancelled"


@pytest.mark.parametrize(
    "source_status, expected",
    [("finished", "finished"), ("diverged", "failed"), ("stopped", "stopped")],
)
def test_submit_after_starts_the_replay_only_after_its_source_finished(
    store, source_status, expected
):
    executor = _RecordingExecutor()
    source = create_run(store, BASE, kind="transfer")
    replay = create_run(store, BASE, kind="transfer")
    gate = Future()
    result = submit_after(store, executor, replay, gate, source)
    time.sleep(0.1)
    assert executor.submitted == [] and not result.done()  # waits for its source
    store.set_status(source, source_status)
    gate.set_result(source_status)
    assert _wait(result) == expected
    assert executor.submitted == ([replay] if expected == "finished" else [])
    if expected != "finished":
        record = store.run(replay)
        assert record["status"] == expected
        assert (source in record["error"]) if expected == "failed" else True


def test_submit_after_honours_a_stop_requested_while_waiting(store):
    executor = _RecordingExecutor()
    source = create_run(store, BASE, kind="transfer")
    replay = create_run(store, BASE, kind="transfer")
    gate = Future()
    result = submit_after(store, executor, replay, gate, source)
    request_stop(store, replay)
    store.set_status(source, "finished")
    gate.set_result("finished")
    assert _wait(result) == "stopped" and executor.submitted == []
    assert store.run(replay)["status"] == "stopped"


def test_static_ratio_configs_refuse_bad_learning_rates():
    with pytest.raises(ValueError, match="sgd_lrs"):
        static_ratio_configs(BASE, ADAM, SGD[1], source_run="x", sgd_lrs=[0.1, -1.0])
    planned = static_ratio_configs(BASE, ADAM, SGD[1], source_run="x", sgd_lrs=[0.1])
    assert [c.name for c, _ in planned] == ["sgd+ratios(adam)", "adam#adam", "sgd(lr=0.1)"]
    assert [a.role for _, a in planned] == ["static_ratios", "plain", "sweep_point"]
