"""The Dask executor on a LocalCluster of 2 worker processes: a grid's numbers equal the local
executor's, workers never open the store, rows stream while a run trains, and a killed
worker, a killed driver or an unreachable scheduler leave every run final or resumable."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

import pandas as pd
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from grafting_core.lab.cli import main
from grafting_core.lab.experiments import common
from grafting_core.lab.experiments.common import final_metrics
from grafting_core.lab.runs import executor as executor_module
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.dask_executor import DaskExecutor
from grafting_core.lab.runs.runner import create_run, request_stop
from grafting_core.lab.runs.trainer import read_checkpoint
from grafting_core.lab.store.run_store import RunStore, _pid_alive
from tests.helpers import ROOT, WAIT_S, assert_contiguous, resume_a_little, training, until
from tests.lab.runs.dask_driver import LONG

distributed = pytest.importorskip("distributed")

GRID_FLAGS = [
    "--optimizers",
    "sgd",
    "adam",
    "--seeds",
    "0",
    "1",
    "--dataset",
    "mnist1d",
    "--width",
    "32",
    "--steps",
    "60",
    "--batch-size",
    "32",
    "--eval-every",
    "30",
    "--eval-examples",
    "200",
    "--flush-seconds",
    "0",
    "--checkpoint-every",
    "25",
]


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and 2 worker processes (one thread each), closed at the module's end."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as client:
        yield client


def _refuse_sqlite() -> None:
    """In a worker: opening any SQLite file raises (workers must never open the store)."""
    import sqlite3

    def refuse(*args, **kwargs):
        raise RuntimeError(f"a Dask worker opened an SQLite file: {args}")

    sqlite3.connect = refuse


def _runs_training() -> int:
    """In a worker: how many runs train in this process now."""
    from grafting_core.lab.runs import lifeline

    return len(lifeline._ACTIVE)


def _worker_pid(client, run_id: str) -> int:
    """The pid of the worker process whose task trains ``run_id``."""
    (address,) = [
        address
        for address, keys in client.processing().items()
        if any(run_id in str(key) for key in keys)
    ]
    return client.run(os.getpid, workers=[address])[address]


def _by_arm(store: RunStore) -> dict[tuple[str, int], str]:
    runs = store.runs()
    return {
        (name, int(seed)): run_id
        for name, seed, run_id in zip(runs["name"], runs["config.seed"], runs["run_id"])
    }


def test_a_grid_on_dask_workers_equals_the_local_executors_and_never_opens_the_store(
    tmp_path, cluster, client, monkeypatch, capsys
):
    client.run(_refuse_sqlite)
    monkeypatch.setattr(executor_module, "usable_cores", lambda: 2)  # one torch thread each
    # run by run on both sides, to compare to the bit: the local executor would batch the
    # plain runs (equal to a float32 ulp, test_batched_store.py); Dask trains runs one by one
    monkeypatch.setattr(common, "BATCH", False)
    local, remote = RunStore(tmp_path / "local"), RunStore(tmp_path / "dask")
    assert main(["--runs-dir", str(local.root), "grid", "--workers", "2", *GRID_FLAGS]) == 0
    assert (
        main(
            [
                "--runs-dir",
                str(remote.root),
                "grid",
                "--executor",
                "dask",
                "--scheduler",
                cluster.scheduler_address,
                *GRID_FLAGS,
            ]
        )
        == 0
    )
    capsys.readouterr()
    local_runs, remote_runs = _by_arm(local), _by_arm(remote)
    assert sorted(local_runs) == sorted(remote_runs) and len(local_runs) == 8
    for arm, local_id in local_runs.items():
        remote_id = remote_runs[arm]
        assert local.run(local_id)["status"] == remote.run(remote_id)["status"] == "finished"
        assert remote.run(remote_id)["pid"] == os.getpid()  # written by the driver only
        # every metric at every step, to the bit (wall-clock throughput aside)
        ours, theirs = (
            store.metrics_wide(run_id).drop(columns="steps_per_second")
            for store, run_id in ((local, local_id), (remote, remote_id))
        )
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
        assert len(ours) == 60 and ours["val_loss"].notna().sum() == 2
        pd.testing.assert_frame_equal(
            local.layer_norms(local_id), remote.layer_norms(remote_id), check_exact=True
        )
        assert local.get_artifact(local_id, "layers") == remote.get_artifact(remote_id, "layers")
        weights = [
            read_checkpoint(store.get_artifact(run_id, "checkpoint"))["model"]
            for store, run_id in ((local, local_id), (remote, remote_id))
        ]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_comparison_on_dask_workers_equals_the_local_executors(
    tmp_path, cluster, monkeypatch, capsys
):
    monkeypatch.setattr(executor_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(common, "BATCH", False)  # to the bit: run by run on both sides
    flags = [
        "--optimizers",
        "sgd",
        "adam",
        "--seeds",
        "0",
        "--points",
        "2",
        "--extensions",
        "0",
        "--dataset",
        "digits",
        "--width",
        "16",
        "--steps",
        "30",
        "--eval-every",
        "30",
        "--eval-examples",
        "64",
        "--flush-seconds",
        "0",
        *("--warmups", "--tune-seeds", "--rung", "0", "--no-control"),  # the lr alone: 6 runs
    ]
    finals = []
    for name, executor in (
        ("local", ["--workers", "2"]),
        ("dask", ["--executor", "dask", "--scheduler", cluster.scheduler_address]),
    ):
        store = RunStore(tmp_path / name)
        assert main(["--runs-dir", str(store.root), "compare", *executor, *flags]) == 0
        runs = store.runs()
        table = final_metrics(store, runs["run_id"], runs=runs).assign(
            lr=runs["config.magnitude_hparams.lr"].values, seed=runs["config.seed"].values
        )
        finals.append(
            table.drop(columns="run_id").sort_values(["name", "role", "lr"]).reset_index(drop=True)
        )
    capsys.readouterr()
    assert len(finals[0]) == 6 and (finals[0]["status"] == "finished").all()  # 2 × 2 lrs, 2 grafts
    pd.testing.assert_frame_equal(finals[0], finals[1], check_exact=True)


def test_a_remote_run_streams_while_it_trains_stops_from_the_store_and_resumes(tmp_path, cluster):
    store = RunStore(tmp_path)
    run_id = create_run(store, LONG)
    executor = DaskExecutor(store.root, cluster.scheduler_address)
    try:
        future = executor.submit(run_id)
        # rows, norms and a checkpoint reach the store while the run trains on a worker
        until(
            lambda: training(store, run_id, past=LONG.checkpoint_every + 10),
            "the run to pass its first checkpoint",
        )
        assert not future.done() and len(store.layer_norms(run_id)) > 0
        assert read_checkpoint(store.get_artifact(run_id, "checkpoint"))["step"] >= 200
        request_stop(store, run_id)  # as the app's Stop does, from any process
        assert future.result(timeout=WAIT_S) == "stopped"
        stopped_at = store.run(run_id)["last_step"]
        assert read_checkpoint(store.get_artifact(run_id, "checkpoint"))["step"] == stopped_at
        assert_contiguous(store, run_id)
        again = executor.submit(run_id, resume=True)  # on the cluster, from that checkpoint
        until(lambda: training(store, run_id, past=stopped_at + 50), "the resumed run")
        request_stop(store, run_id)
        assert again.result(timeout=WAIT_S) == "stopped"
        assert_contiguous(store, run_id)
    finally:
        executor.shutdown(wait=False)


def test_a_run_that_fails_on_a_worker_is_failed_with_its_traceback(tmp_path, cluster):
    store = RunStore(tmp_path)
    run_id = create_run(store, RunConfig(custom="no_such_module_here:build", steps=10))
    executor = DaskExecutor(store.root, cluster.scheduler_address)
    try:
        assert executor.submit(run_id).result(timeout=WAIT_S) == "failed"
    finally:
        executor.shutdown()
    assert "no_such_module_here" in store.run(run_id)["error"]
    assert "Traceback" in store.get_artifact(run_id, "traceback")


def test_a_killed_worker_leaves_its_run_interrupted_with_its_rows_and_resumable(
    tmp_path, cluster, client
):
    store = RunStore(tmp_path)
    victim, sibling = (create_run(store, LONG.replace(seed=seed)) for seed in (0, 1))
    executor = DaskExecutor(store.root, cluster.scheduler_address)
    try:
        futures = [executor.submit(run_id) for run_id in (victim, sibling)]
        until(
            lambda: training(store, victim, past=LONG.checkpoint_every + 10),
            "the run to pass its first checkpoint",
        )
        until(lambda: training(store, sibling), "the second run to train")
        os.kill(_worker_pid(client, victim), signal.SIGKILL)  # as the out-of-memory killer
        assert futures[0].result(timeout=WAIT_S) == "interrupted"
        assert "Dask worker died" in store.run(victim)["error"]
        assert not futures[1].done()  # its sibling trains on
        request_stop(store, sibling)
        assert futures[1].result(timeout=WAIT_S) == "stopped"
    finally:
        executor.shutdown(wait=False)
    checkpoint = read_checkpoint(store.get_artifact(victim, "checkpoint"))["step"]
    assert checkpoint >= 200
    assert len(store.metrics(victim, names=["train_loss"])) >= checkpoint  # what it streamed
    resume_a_little(store, victim)  # elsewhere: in this process


@pytest.mark.parametrize("where", ["cluster", "local"])
def test_a_killed_driver_leaves_no_worker_training_and_every_run_resumable(
    tmp_path, where, cluster, client
):
    store = RunStore(tmp_path / "runs")
    scheduler = cluster.scheduler_address if where == "cluster" else "local"
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.lab.runs.dask_driver", str(store.root), scheduler, "2"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        ids, _, pids = driver.stdout.readline().partition("|")
        run_ids, workers = ids.split(), [int(pid) for pid in pids.split()]
        assert len(run_ids) == 2 and len(workers) == 2
        for run_id in run_ids:
            until(lambda run_id=run_id: training(store, run_id), "the runs to train")
    finally:
        driver.kill()  # SIGKILL: the driver gets no chance to clean up
        driver.wait()
    if where == "local":  # its own LocalCluster's workers exit with it
        for pid in workers:
            until(lambda pid=pid: not _pid_alive(pid), f"worker {pid} to exit")
    else:  # the cluster's workers stay, and stop training the dead driver's runs
        until(
            lambda: not any(client.run(_runs_training).values()),
            "the cluster's workers to stop training",
        )
        assert sorted(client.run(os.getpid).values()) == sorted(workers)
    RunStore(store.root).close()  # a new opener marks runs whose writer (the driver) died
    for run_id in run_ids:
        run = store.run(run_id)
        assert run["status"] == "interrupted" and f"writer process {driver.pid}" in run["error"]
        resume_a_little(store, run_id)


def test_the_apps_sidebar_sends_runs_to_a_dask_scheduler(runs_dir, cluster):
    store = RunStore(runs_dir)
    at = AppTest.from_file(str(ROOT / "pages" / "graft_lab.py"), default_timeout=60).run()
    at.radio(key="shared.executor").set_value("dask").run()
    assert "enter its address" in at.sidebar.error[0].value and not at.button
    at.text_input(key="shared.scheduler").set_value(_unreachable()).run()
    assert at.sidebar.error[0].value.startswith("Cannot reach a Dask scheduler at tcp://")
    assert not at.button and store.runs().empty  # nothing can start
    at.text_input(key="shared.scheduler").set_value(cluster.scheduler_address).run()
    try:
        assert not at.exception and not at.error
        assert any(cluster.scheduler_address in c.value for c in at.sidebar.caption)
        at.number_input(key="lab.width.mlp").set_value(16)
        at.number_input(key="lab.steps").set_value(60)
        at.checkbox(key="lab.reverse").uncheck()
        at.button(key="lab.start").click().run()
        group = at.query_params["group"]
        until(
            lambda: (store.runs(group=group)["status"] == "finished").all(),
            "the page's runs to finish on the cluster",
        )
        at.run()
        assert not at.exception
        runs = store.runs(group=group)
        assert len(runs) == 3 and set(runs["pid"]) == {os.getpid()}  # this server wrote them
        assert all(len(store.metrics(r, names=["train_loss"])) == 60 for r in runs["run_id"])
    finally:
        st.cache_resource.clear()  # the server's Dask executor lets go of the cluster


def _unreachable() -> str:
    """The address of a free local port, with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def test_an_unreachable_scheduler_is_one_line_and_nothing_is_started(tmp_path, capsys):
    address = _unreachable()
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--runs-dir",
                str(tmp_path),
                "grid",
                "--executor",
                "dask",
                "--scheduler",
                address,
                "--steps",
                "10",
            ]
        )
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert f"Cannot reach a Dask scheduler at {address}" in err
    assert RunStore(tmp_path).runs().empty


def test_importing_the_lab_does_not_import_dask():
    code = (
        "import sys, grafting_core, grafting_core.lab.cli, grafting_core.lab.experiments; "
        "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
