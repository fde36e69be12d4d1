"""Tests for the persistent run store (grafting_core.lab.store)."""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grafting_core.lab.store import sqlite_file
from grafting_core.lab.store.run_store import STATUSES, RunStore, default_runs_dir
from grafting_core.lab.store.schema import SCHEMA_VERSION

SPAWN = mp.get_context("spawn")


def _raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, independent of the code under test."""
    return sqlite3.connect(path, timeout=30)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- location ---------------------------------------------------------------------------------


def test_default_dir_env_var_and_explicit_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRAFTING_RUNS_DIR", raising=False)
    assert default_runs_dir() == tmp_path / "runs"
    with RunStore() as s:
        assert s.path == tmp_path / "runs" / "runs.sqlite" and s.path.exists()

    monkeypatch.setenv("GRAFTING_RUNS_DIR", str(tmp_path / "from-env"))
    assert default_runs_dir() == tmp_path / "from-env"
    with RunStore() as s:
        assert s.path == tmp_path / "from-env" / "runs.sqlite" and s.path.exists()
    with RunStore(tmp_path / "explicit") as s:  # the argument beats the environment
        assert s.path == tmp_path / "explicit" / "runs.sqlite" and s.path.exists()

    with _raw(tmp_path / "explicit" / "runs.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- runs -------------------------------------------------------------------------------------


def test_create_run_and_read_it_back(store):
    config = {"optimizer": {"magnitude": "adam", "direction": "sgd", "lr": 0.1}, "seed": 3}
    before = pd.Timestamp.now(tz="UTC")
    run_id = store.create_run(config, name="adam#sgd", kind="train", group="grid-1")
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    run = store.run(run_id)
    assert run["config"] == config
    assert (run["run_id"], run["name"], run["kind"], run["group"]) == (
        run_id,
        "adam#sgd",
        "train",
        "grid-1",
    )
    assert run["status"] == "running" and run["ended"] is None and run["error"] is None
    assert run["pid"] == os.getpid() and run["host"]
    assert before - pd.Timedelta(seconds=1) <= run["created"] <= pd.Timestamp.now(tz="UTC")

    assert store.create_run({}, run_id="my-run") == "my-run"
    with pytest.raises(ValueError, match="my-run"):
        store.create_run({}, run_id="my-run")
    ids = {store.create_run({"i": i}) for i in range(300)}  # same second: suffixes must differ
    assert len(ids) == 300


def test_config_must_be_json(store):
    run_id = store.create_run({"data_dir": Path("/tmp/x"), "lr": np.float32(0.5)})
    assert store.run(run_id)["config"] == {"data_dir": "/tmp/x", "lr": 0.5}
    with pytest.raises(TypeError, match="config.*object"):
        store.create_run({"bad": object()})
    with pytest.raises(TypeError, match="dict"):
        store.create_run([1, 2])  # type: ignore[arg-type]


def test_runs_frame_filters_order_and_dtypes(store):
    a = store.create_run({"lr": 0.1, "model": {"width": 8}}, name="a", group="g")
    time.sleep(0.01)
    b = store.create_run({"lr": 0.2, "layers": [4, 4]}, name="b", kind="grid", group="g")
    time.sleep(0.01)
    c = store.create_run({"lr": 0.3}, name="c")
    store.set_status(b, "finished")

    frame = store.runs()
    assert frame["run_id"].tolist() == [c, b, a]  # newest first
    expected = [
        "run_id",
        "name",
        "kind",
        "group",
        "role",
        "magnitude_arm",
        "direction_arm",
        "arm_variant",
        "status",
        "created",
        "ended",
        "last_step",
    ]
    assert frame.columns[: len(expected)].tolist() == expected
    assert {"error", "pid", "host", "heartbeat"} <= set(frame.columns)
    assert pd.api.types.is_string_dtype(frame["run_id"])
    assert isinstance(frame["created"].dtype, pd.DatetimeTZDtype)
    assert str(frame["last_step"].dtype) == "Int64"
    assert frame["config.lr"].tolist() == [0.3, 0.2, 0.1]
    assert frame.set_index("run_id").loc[a, "config.model.width"] == 8
    assert frame.set_index("run_id").loc[b, "config.layers"] == "[4, 4]"

    assert store.runs(kind="grid")["run_id"].tolist() == [b]
    assert store.runs(group="g")["run_id"].tolist() == [b, a]
    assert store.runs(status="running")["run_id"].tolist() == [c, a]
    assert store.runs(status="finished", group="g")["run_id"].tolist() == [b]
    assert isinstance(store.runs(flatten_config=False)["config"].iloc[0], dict)

    empty = store.runs(kind="nothing")
    assert empty.empty and "status" in empty.columns
    assert isinstance(empty["created"].dtype, pd.DatetimeTZDtype)
    with pytest.raises(ValueError, match="allowed: running, finished"):
        store.runs(status="done")


def test_status_transitions_and_errors(store):
    run_id = store.create_run({})
    store.heartbeat(run_id, step=7)
    run = store.run(run_id)
    assert run["last_step"] == 7 and run["heartbeat"] >= run["created"]

    for status in STATUSES[1:]:
        store.set_status(run_id, status, error=f"why {status}", step=12)
        run = store.run(run_id)
        assert (run["status"], run["error"], run["last_step"]) == (status, f"why {status}", 12)
        assert run["ended"] is not None
    store.set_status(run_id, "running")  # resumed: not ended any more, owned by us
    run = store.run(run_id)
    assert run["status"] == "running" and run["ended"] is None and run["last_step"] == 12
    store.set_status(run_id, "diverged", step=40)
    assert store.run(run_id)["last_step"] == 40

    with pytest.raises(ValueError, match=r"'done'.*running, finished, stopped"):
        store.set_status(run_id, "done")
    for call in (
        lambda: store.set_status("nope-1", "finished"),
        lambda: store.heartbeat("nope-1", step=1),
        lambda: store.run("nope-1"),
        lambda: store.log_metrics("nope-1", 0, {"loss": 1.0}),
        lambda: store.metrics(["nope-1"]),
        lambda: store.metrics_wide("nope-1"),
        lambda: store.log_layer_norms("nope-1", [0], ["a"], ["f"], [[[1.0]]]),
        lambda: store.layer_norms("nope-1"),
        lambda: store.put_artifact("nope-1", "x", b""),
        lambda: store.get_artifact("nope-1", "x"),
        lambda: store.artifact_names("nope-1"),
        lambda: store.delete_run("nope-1"),
    ):
        with pytest.raises(KeyError, match="nope-1"):
            call()


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_round_trip(store):
    a, b = store.create_run({}), store.create_run({})
    store.log_metrics(a, 0, {"loss": 2.0, "acc": 0.1})
    store.log_metrics(a, 1, {"loss": float("nan"), "acc": float("inf")})
    store.log_metrics_many(a, [(2, "loss", 1.5), (2, "acc", 0.3), (3, "loss", 1.0)])
    store.log_metrics(a, 3, {"loss": 0.9})  # a repeat replaces the earlier value
    store.log_metrics_many(b, [(5, "loss", 7.0)])
    store.log_metrics_many(b, [])

    long = store.metrics(a)
    assert long.columns.tolist() == ["run_id", "step", "name", "value"]
    assert [str(t) for t in long.dtypes] == ["str", "int64", "str", "float64"]
    rows = list(long.itertuples(index=False, name=None))
    assert rows[:2] == [(a, 0, "acc", 0.1), (a, 0, "loss", 2.0)]
    assert rows[2] == (a, 1, "acc", math.inf) and rows[3][:3] == (a, 1, "loss")
    assert math.isnan(rows[3][3])
    assert rows[4:] == [(a, 2, "acc", 0.3), (a, 2, "loss", 1.5), (a, 3, "loss", 0.9)]

    assert store.metrics(a, ["loss"])["step"].tolist() == [0, 1, 2, 3]
    assert store.metrics(a, since_step=1)["step"].tolist() == [2, 2, 3]  # strictly after
    both = store.metrics([b, a], ["loss"])
    assert both["run_id"].tolist() == sorted([a] * 4 + [b]) and len(both) == 5
    empty = store.metrics(a, ["nothing"])
    assert empty.empty and [str(t) for t in empty.dtypes] == ["str", "int64", "str", "float64"]

    wide = store.metrics_wide(a)
    assert wide.index.name == "step" and wide.index.tolist() == [0, 1, 2, 3]
    assert sorted(wide.columns) == ["acc", "loss"]
    assert wide.loc[3, "loss"] == 0.9 and math.isnan(wide.loc[3, "acc"])
    assert store.metrics_wide(a, since_step=2).index.tolist() == [3]
    assert store.metrics_wide(store.create_run({})).empty


def test_threads_share_one_store(store):
    run_id = store.create_run({})

    def work(t: int) -> None:
        for step in range(100):
            store.log_metrics(run_id, step, {f"t{t}": float(step)})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.metrics(run_id)) == 400


def test_write_retries_while_another_writer_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_file, "BUSY_TIMEOUT_S", 0.05)  # lock outlives SQLite's own wait
    s = RunStore(tmp_path)
    run_id = s.create_run({})
    blocker = sqlite3.connect(s.path, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.4, blocker.rollback)
    releaser.start()
    s.log_metrics(run_id, 0, {"loss": 1.0})  # without retries: 'database is locked'
    releaser.join()
    assert len(s.metrics(run_id)) == 1
    s.close()


# --- layer norms ------------------------------------------------------------------------------


def _long_by_hand(steps, layers, fields, values) -> list[tuple]:
    return [
        (s, layer, f, values[i][j][k])
        for i, s in enumerate(steps)
        for j, layer in enumerate(layers)
        for k, f in enumerate(fields)
    ]


def _same(rows_a: list[tuple], rows_b: list[tuple]) -> bool:
    return len(rows_a) == len(rows_b) and all(
        a[:3] == b[:3] and (a[3] == b[3] or (math.isnan(a[3]) and math.isnan(b[3])))
        for a, b in zip(rows_a, rows_b)
    )


def test_layer_norms_round_trip(store):
    run_id = store.create_run({})
    rng = np.random.default_rng(0)
    steps, layers, fields = [0, 1, 2, 5], ["fc1.weight", "fc1.bias", "fc2.weight"], ["m", "d"]
    values = rng.random((4, 3, 2)).tolist()
    values[1][2] = [float("nan"), float("nan")]  # fc2 not stepped at step 1
    store.log_layer_norms(run_id, steps, layers, fields, values)

    frame = store.layer_norms(run_id)
    assert frame.columns.tolist() == ["step", "layer", "field", "value"]
    assert [str(t) for t in frame.dtypes] == ["int64", "category", "category", "float64"]
    assert frame["layer"].cat.categories.tolist() == layers  # logged order, not alphabetical
    got = list(frame.itertuples(index=False, name=None))
    assert _same(got, _long_by_hand(steps, layers, fields, values))

    part = store.layer_norms(run_id, fields=["d"], layers=["fc2.weight"], since_step=1)
    assert _same(
        list(part.itertuples(index=False, name=None)),
        [(2, "fc2.weight", "d", values[2][2][1]), (5, "fc2.weight", "d", values[3][2][1])],
    )
    assert store.layer_norm_names(run_id) == (layers, fields)

    # A later call may use another layout; a repeated step replaces the earlier matrix.
    store.log_layer_norms(run_id, [3], ["head"], ["m"], np.array([[[9.0]]]))
    store.log_layer_norms(run_id, [5], layers, fields, np.zeros((1, 3, 2)))
    frame = store.layer_norms(run_id, fields=["m"])
    assert frame["step"].is_monotonic_increasing
    assert frame[frame.layer == "head"]["value"].tolist() == [9.0]
    assert frame[frame.step == 5]["value"].tolist() == [0.0, 0.0, 0.0]
    assert store.layer_norm_names(run_id) == (layers + ["head"], fields)

    with pytest.raises(ValueError, match=r"\(2, 3, 2\).*\(3, 3, 2\)"):
        store.log_layer_norms(run_id, [7, 8, 9], layers, fields, np.zeros((2, 3, 2)))
    with pytest.raises(KeyError, match="ratio"):
        store.layer_norms(run_id, fields=["ratio"])
    fresh = store.create_run({})  # nothing logged yet: an empty, typed frame
    empty = store.layer_norms(fresh, fields=["m"], since_step=3)
    assert empty.empty and [str(t) for t in empty.dtypes] == [
        "int64",
        "category",
        "category",
        "float64",
    ]


def test_layer_norms_are_stored_compactly(store):
    run_id = store.create_run({})
    values = np.arange(50 * 100 * 3, dtype=float).reshape(50, 100, 3)
    layers = [f"layer{i}" for i in range(100)]
    store.log_layer_norms(run_id, list(range(50)), layers, ["a", "b", "c"], values)
    with _raw(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM norm_rows").fetchone()[0] == 50  # one per step
    frame = store.layer_norms(run_id, layers=["layer42"], fields=["b"])
    assert frame["value"].tolist() == values[:, 42, 1].tolist()


# --- artifacts and deletion -------------------------------------------------------------------


def test_a_group_request_round_trips_and_the_last_one_counts(store):
    assert store.group_request("compare-1") is None
    store.set_group_request("compare-1", "compare", {"seeds": [0], "plan": {"points": 5}})
    store.set_group_request("compare-1", "compare", {"seeds": [0, 1], "plan": {"points": 5}})
    assert store.group_request("compare-1") == {"seeds": [0, 1], "plan": {"points": 5}}
    with pytest.raises(TypeError, match="request"):
        store.set_group_request("compare-2", "compare", {"bad": object()})
    assert store.group_request("compare-2") is None


def test_artifacts_round_trip(store):
    run_id = store.create_run({})
    store.put_artifact(run_id, "ratios", {"fc1.weight": 0.5, "fc2.weight": 2.0}, kind="ratios")
    store.put_artifact(run_id, "notes", "hello")
    store.put_artifact(run_id, "ckpt", bytes(range(256)) * 10, kind="checkpoint")
    assert store.get_artifact(run_id, "ratios") == {"fc1.weight": 0.5, "fc2.weight": 2.0}
    assert store.get_artifact(run_id, "notes") == "hello"
    assert store.get_artifact(run_id, "ckpt") == bytes(range(256)) * 10
    store.put_artifact(run_id, "notes", b"\x00replaced")
    assert store.get_artifact(run_id, "notes") == b"\x00replaced"
    assert store.artifact_names(run_id) == ["ckpt", "notes", "ratios"]
    table = store.artifacts(run_id).set_index("name")
    assert table.loc["ckpt", "kind"] == "checkpoint" and table.loc["ckpt", "size"] == 2560
    assert table.loc["ratios", "encoding"] == "json"

    with pytest.raises(KeyError, match=rf"{run_id}.*'missing'"):
        store.get_artifact(run_id, "missing")
    with pytest.raises(TypeError, match="bytes, str or dict"):
        store.put_artifact(run_id, "x", 3.0)  # type: ignore[arg-type]


def test_delete_run_removes_everything(store):
    keep, drop = store.create_run({}), store.create_run({})
    for run_id in (keep, drop):
        store.log_metrics(run_id, 0, {"loss": 1.0})
        store.log_layer_norms(run_id, [0], ["a"], ["m"], [[[1.0]]])
        store.put_artifact(run_id, "x", b"1")
    store.delete_run(drop)
    with _raw(store.path) as conn:
        for table in ("runs", "metrics", "norm_layouts", "norm_rows", "artifacts"):
            ids = {r[0] for r in conn.execute(f"SELECT run_id FROM {table}")}
            assert ids == {keep}, table
    with pytest.raises(KeyError):
        store.run(drop)


def test_close_and_pickle(tmp_path):
    s = RunStore(tmp_path)
    run_id = s.create_run({"a": 1})
    copy = pickle.loads(pickle.dumps(s))
    assert copy.run(run_id)["config"] == {"a": 1}
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.run(run_id)
    copy.close()


def _forked_child(store: RunStore, run_id: str) -> None:
    for step in range(300):
        store.log_metrics(run_id, step, {"child": float(step)})
    store.close()
    gc.collect()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_can_use_an_inherited_store(store):
    run_id = store.create_run({})
    store.log_metrics(run_id, 0, {"parent": 0.0})  # the parent holds an open connection
    proc = mp.get_context("fork").Process(target=_forked_child, args=(store, run_id))
    proc.start()
    step = 0
    while proc.is_alive():  # both write at once: the child must not share our connection
        step += 1
        store.log_metrics(run_id, step, {"parent": float(step)})
    proc.join()
    assert proc.exitcode == 0
    store.log_metrics(run_id, 0, {"after": 0.0})  # ours still works after the child closed
    counts = store.metrics(run_id)["name"].value_counts().to_dict()
    assert counts == {"child": 300, "parent": step + 1, "after": 1}
    with _raw(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- interrupted runs -------------------------------------------------------------------------


def test_mark_interrupted_only_touches_dead_local_writers(store):
    dead, alive, remote = (store.create_run({}) for _ in range(3))
    with _raw(store.path) as conn:
        conn.execute("UPDATE runs SET pid = ? WHERE run_id = ?", (_dead_pid(), dead))
        conn.execute("UPDATE runs SET pid = ?, host = 'elsewhere' WHERE run_id = ?", (1, remote))
    assert store.mark_interrupted() == [dead]
    with RunStore(store.root) as reopened:  # the on-open check finds nothing more to do
        assert reopened.run(dead)["status"] == "interrupted"
        assert "ended without finishing" in reopened.run(dead)["error"]
        assert reopened.run(alive)["status"] == "running"
        assert reopened.run(remote)["status"] == "running"
        assert reopened.mark_interrupted(stale_after=3600) == []
        assert reopened.mark_interrupted(stale_after=0) == [remote]


def _wait_for_zombie(pid: int) -> None:
    """Wait until a killed, unreaped child shows as a zombie (Linux /proc; else a pause)."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.time() + 10
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline, "killed process did not die"
        time.sleep(0.01)
    if not stat.exists():
        time.sleep(0.5)


def _killed_writer(root: str, started) -> None:
    store = RunStore(root)
    run_id = store.create_run({"lr": 0.1}, name="victim")
    step = 0
    while True:
        store.log_metrics(run_id, step, {"loss": 1 / (step + 1), "acc": 0.5, "lr": 0.1})
        store.log_layer_norms(run_id, [step], ["a", "b"], ["m"], [[[1.0], [float(step)]]])
        store.heartbeat(run_id, step=step)
        if step == 30:
            started.set()
        step += 1


def test_sigkill_mid_run_leaves_store_readable_and_run_interrupted(tmp_path):
    started = SPAWN.Event()
    proc = SPAWN.Process(target=_killed_writer, args=(str(tmp_path), started))
    proc.start()
    assert started.wait(60), "writer never got going"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    _wait_for_zombie(proc.pid)  # killed but not yet reaped, as under a parent that hasn't looked

    with RunStore(tmp_path) as s:
        (run,) = s.runs().to_dict("records")
        assert run["status"] == "interrupted" and str(proc.pid) in run["error"]
        metrics = s.metrics(run["run_id"])
        per_step = metrics.groupby("step")["name"].apply(sorted)
        assert len(per_step) > 30
        assert per_step.index.tolist() == list(range(len(per_step)))
        assert all(names == ["acc", "loss", "lr"] for names in per_step)  # whole transactions
        norms = s.layer_norms(run["run_id"], layers=["b"])
        assert norms["value"].tolist() == [float(x) for x in norms["step"]]
    with _raw(tmp_path / "runs.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    proc.join()
    assert proc.exitcode == -signal.SIGKILL


# --- concurrency ------------------------------------------------------------------------------

N_WORKERS, N_ROWS, LAYERS, FIELDS = 4, 500, [f"l{i}" for i in range(20)], ["m", "d"]


def _grid_worker(root: str, worker: int, barrier) -> None:
    store = RunStore(root)
    barrier.wait()
    runs = [store.create_run({"worker": worker, "i": i}, group=f"w{worker}") for i in range(2)]
    for step in range(N_ROWS):  # one single-row transaction each
        store.log_metrics(runs[step % 2], step, {"loss": worker * 1000 + step})
        if step % 50 == 0:
            values = np.full((1, len(LAYERS), len(FIELDS)), float(worker * 1000 + step))
            store.log_layer_norms(runs[0], [step], LAYERS, FIELDS, values)
    for run_id in runs:
        store.set_status(run_id, "finished")
    store.close()


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    reader = RunStore(tmp_path)
    barrier = SPAWN.Barrier(N_WORKERS)
    procs = [
        SPAWN.Process(target=_grid_worker, args=(str(tmp_path), w, barrier))
        for w in range(N_WORKERS)
    ]
    for proc in procs:
        proc.start()
    polls = 0
    while any(p.is_alive() for p in procs):  # a live page polling while the grid writes
        ids = reader.runs()["run_id"].tolist()
        if ids:
            reader.metrics(ids)
        polls += 1
        time.sleep(0.05)
    for proc in procs:
        proc.join()
    assert [p.exitcode for p in procs] == [0] * N_WORKERS

    runs = reader.runs()
    assert len(runs) == 2 * N_WORKERS and set(runs["status"]) == {"finished"}
    for worker in range(N_WORKERS):
        group = runs[runs["group"] == f"w{worker}"].sort_values("config.i")
        metrics = reader.metrics(group["run_id"].tolist())
        assert sorted(metrics["value"]) == [worker * 1000 + s for s in range(N_ROWS)]
        norms = reader.layer_norms(group["run_id"].iloc[0])
        assert len(norms) == (N_ROWS // 50) * len(LAYERS) * len(FIELDS)
        assert (norms["value"] == worker * 1000 + norms["step"]).all()
    with _raw(reader.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == N_WORKERS * N_ROWS
    assert polls > 0
    reader.close()


# --- schema migration -------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT, kind TEXT NOT NULL,
    status TEXT NOT NULL, config TEXT NOT NULL, created REAL NOT NULL, ended REAL,
    last_step INTEGER, error TEXT, pid INTEGER, host TEXT, heartbeat REAL);
CREATE INDEX runs_created ON runs (created);
CREATE TABLE metrics (run_id TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL,
    value REAL, PRIMARY KEY (run_id, step, name)) WITHOUT ROWID;
CREATE TABLE norm_layouts (layout_id INTEGER PRIMARY KEY, run_id TEXT NOT NULL,
    layers TEXT NOT NULL, fields TEXT NOT NULL, UNIQUE (run_id, layers, fields));
CREATE TABLE norm_rows (run_id TEXT NOT NULL, layout_id INTEGER NOT NULL,
    step INTEGER NOT NULL, data BLOB NOT NULL, UNIQUE (run_id, layout_id, step));
CREATE TABLE artifacts (run_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    encoding TEXT NOT NULL, data BLOB NOT NULL, created REAL NOT NULL, UNIQUE (run_id, name));
PRAGMA user_version = 1;
"""


def test_opening_a_v1_file_migrates_it_and_keeps_data(tmp_path):
    with _raw(tmp_path / "runs.sqlite") as conn:  # a version-1 store, built by hand
        conn.executescript(V1_SCHEMA)
        conn.executemany(
            "INSERT INTO runs (run_id, name, kind, status, config, created) VALUES (?,?,?,?,?,?)",
            [
                (
                    "old-1",
                    "in a group",
                    "grid",
                    "finished",
                    '{"group": "sweep", "magnitude": "adam", "direction": "sgd"}',
                    1e9,
                ),
                ("old-2", "no group", "train", "stopped", '{"lr": 0.2}', 1e9 + 1),
            ],
        )
        conn.executemany(
            "INSERT INTO metrics VALUES (?, ?, ?, ?)",
            [("old-1", s, "loss", 1.0 / (s + 1)) for s in range(10)],
        )
        conn.execute("INSERT INTO norm_layouts VALUES (1, 'old-1', '[\"a\", \"b\"]', '[\"m\"]')")
        conn.execute(
            "INSERT INTO norm_rows VALUES ('old-1', 1, 0, ?)",
            (np.array([3.0, 4.0], dtype="<f8").tobytes(),),
        )
        conn.execute(
            "INSERT INTO artifacts VALUES ('old-1', 'ratios', 'r', 'json', '{\"a\": 1}', 0)"
        )
    with _raw(tmp_path / "runs.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1

    with RunStore(tmp_path) as s:
        assert s.run("old-1")["group"] == "sweep" and s.run("old-2")["group"] is None
        assert s.runs(group="sweep")["run_id"].tolist() == ["old-1"]
        assert s.metrics("old-1")["value"].tolist() == [1.0 / (k + 1) for k in range(10)]
        assert s.layer_norms("old-1")["value"].tolist() == [3.0, 4.0]
        assert s.get_artifact("old-1", "ratios") == {"a": 1}
        old = s.run("old-1")  # an older grid's arms come from its configs' optimizers
        assert (old["role"], old["magnitude_arm"], old["direction_arm"]) == ("graft", "adam", "sgd")
        assert s.run("old-2")["role"] is None
        new = s.create_run({}, group="sweep", arm=("plain", "sgd", "", ""))
        assert s.runs(group="sweep")["run_id"].tolist() == [new, "old-1"]
        assert s.run(new)["role"] == "plain"
        s.set_role(new, "tuned")
        assert s.runs(group="sweep")["role"].tolist() == ["tuned", "graft"]
    with _raw(tmp_path / "runs.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        indexes = {r[1] for r in conn.execute("PRAGMA index_list('runs')")}
        assert "runs_group" in indexes


def test_newer_schema_is_refused(tmp_path):
    RunStore(tmp_path).close()
    with _raw(tmp_path / "runs.sqlite") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="99.*newer"):
        RunStore(tmp_path)


def test_an_empty_database_file_is_refused_not_made_a_new_store(tmp_path, capsys):
    (tmp_path / "runs.sqlite").write_bytes(b"")  # a failed copy, a truncation
    with pytest.raises(RuntimeError, match="empty file"):
        RunStore(tmp_path)
    assert (tmp_path / "runs.sqlite").stat().st_size == 0  # left as found
    from grafting_core.lab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--runs-dir", str(tmp_path), "runs", "list"])
    assert exit_info.value.code == 2 and "empty file" in capsys.readouterr().err


def test_stores_opened_at_once_on_a_new_folder_share_one_whole_file(tmp_path):
    root, errors, stores = tmp_path / "new", [], []
    root.mkdir()

    def open_store():
        try:
            stores.append(RunStore(root))
        except Exception as error:  # collected, asserted below
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(stores) == 8
    run_id = stores[0].create_run({"a": 1})
    assert all(s.run(run_id)["config"] == {"a": 1} for s in stores)
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".new")) == []
    for store in stores:
        store.close()
