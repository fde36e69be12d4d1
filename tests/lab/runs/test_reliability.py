"""Faults a careful user meets: planted checkpoints, killed parents and workers, signals,
resumes of interrupted runs. Every run must end in a final or resumable state, with every
step's rows, and no process may be left behind."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grafting_core import StaticRatios
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import LocalExecutor
from grafting_core.lab.runs.runner import create_run, execute_run, request_stop
from grafting_core.lab.runs.trainer import Trainer, read_checkpoint
from grafting_core.lab.store.run_store import _pid_alive
from tests.helpers import ROOT, WAIT_S, assert_contiguous, resume_a_little, training, until

TINY = dict(
    dataset="mnist1d",
    width=32,
    steps=60,
    batch_size=32,
    eval_every=30,
    eval_examples=200,
    log_every=10,
    flush_seconds=0.0,
)
LONG = RunConfig(**{**TINY, "steps": 10**6, "eval_every": 10**6})  # default checkpoint cadence


# ---------------------------------------------------------------- 1. no code from data
class _Payload:
    """Pickles as a call of os.mkdir: loading it fully would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_runs(store, tmp_path):
    run_id = create_run(store, RunConfig(**TINY, magnitude="adam"))
    assert execute_run(store, run_id) == "finished"
    real = read_checkpoint(store.get_artifact(run_id, "checkpoint"))
    planted, marker = io.BytesIO(), tmp_path / "payload-ran"
    torch.save({**real, "extra": _Payload(marker)}, planted)
    store.put_artifact(run_id, "checkpoint", planted.getvalue(), kind="checkpoint")
    with pytest.raises(ValueError, match="Refused to load the checkpoint.*could run code"):
        execute_run(store, run_id, resume=True)
    assert not marker.exists()
    run = store.run(run_id)  # refused before anything was written: the run is as it was
    assert run["status"] == "finished" and run["error"] is None


# ---------------------------------------------------------------- 2. no orphans
def test_killing_the_parent_ends_its_worker_and_interrupts_the_run(store):
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.lab.runs.reliability_parent", str(store.root), "1"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        (run_id,) = parent.stdout.readline().split()
        worker = until(lambda: training(store, run_id), "the run to train in a worker")
        assert worker != parent.pid
    finally:
        parent.kill()  # SIGKILL: the parent gets no chance to clean up
        parent.wait()
    until(lambda: not _pid_alive(worker), "the orphaned worker to exit")
    run = store.run(run_id)
    assert run["status"] == "interrupted" and f"({parent.pid}) ended" in run["error"]
    resume_a_little(store, run_id)


def test_a_killed_worker_costs_only_its_own_run_and_the_pool_recovers(store):
    victim, sibling = (create_run(store, LONG.replace(seed=s)) for s in (0, 1))
    queued = create_run(store, RunConfig(**TINY, magnitude="sgd"))
    executor = LocalExecutor(store.root, max_workers=2)
    try:
        futures = [executor.submit(run_id) for run_id in (victim, sibling, queued)]
        # past its first periodic checkpoint (the default cadence): SIGKILL loses only the
        # steps after it
        pid = until(
            lambda: training(store, victim, past=LONG.checkpoint_every + 10),
            "the first run to pass its first checkpoint",
        )
        until(lambda: training(store, sibling), "the second run to train")
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer does
        assert futures[0].result(timeout=WAIT_S) == "interrupted"
        assert store.run(victim)["status"] == "interrupted"
        assert futures[2].result(timeout=WAIT_S) == "finished"  # on the replacement worker
        assert store.run(sibling)["status"] == "running" and not futures[1].done()
        request_stop(store, sibling)
        assert futures[1].result(timeout=WAIT_S) == "stopped"
    finally:
        executor.shutdown(wait=False)
    assert read_checkpoint(store.get_artifact(victim, "checkpoint"))["step"] >= 200
    resume_a_little(store, victim)


def test_an_idle_worker_that_died_is_replaced_when_work_comes(store):
    executor = LocalExecutor(store.root, max_workers=1)
    try:
        (warm,) = executor.warm_up(datasets=())
        pid = warm.result(timeout=WAIT_S)
        os.kill(pid, signal.SIGKILL)  # e.g. a Ctrl-C in the terminal reached it between runs
        # the worker's pool has seen it die (a private flag of concurrent.futures)
        until(lambda: executor._workers[0]._broken, "the pool to notice its dead worker")
        run_id = create_run(store, RunConfig(**TINY, magnitude="sgd"))
        assert executor.submit(run_id).result(timeout=WAIT_S) == "finished"
    finally:
        executor.shutdown(wait=False)


# ---------------------------------------------------------------- 4, 5. signals
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_a_cli_run_resumably_with_every_row(store, sig):
    command = [
        sys.executable,
        "-m",
        "grafting_core",
        "--runs-dir",
        str(store.root),
        "train",
        "--width",
        "32",
        "--batch-size",
        "32",
        "--steps",
        str(10**6),
        "--eval-every",
        str(10**6),
        "--eval-examples",
        "200",
        "--flush-seconds",
        "0",
        "--checkpoint-every",
        "100000",
    ]  # the stop itself must write the checkpoint
    cli = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        run_id = until(lambda: next(iter(store.runs()["run_id"]), None), "the run's row")
        until(lambda: training(store, run_id, past=120), "the run to train")
        cli.send_signal(sig)
        out, err = cli.communicate(timeout=WAIT_S)
    finally:
        cli.kill()
    assert cli.returncode == 130, err
    assert f"--resume {run_id}" in out
    run = store.run(run_id)
    assert run["status"] == "stopped"
    assert read_checkpoint(store.get_artifact(run_id, "checkpoint"))["step"] == run["last_step"]
    assert_contiguous(store, run_id)  # the stop flushed before it checkpointed
    resume_a_little(store, run_id)


def test_stop_soon_ends_the_run_after_its_step_flushed_and_checkpointed():
    class StopAt23(Trainer):
        def _train_step(self):
            loss = super()._train_step()
            self.stop_soon = self.step == 23  # as a signal handler sets it
            return loss

    # no flush would come before step 50: the stop must force one
    trainer = StopAt23(RunConfig(**{**TINY, "log_every": 50, "flush_seconds": 10.0}))
    losses, checkpoints = [], []
    trainer.add_callback(
        "on_metrics",
        lambda t, rows: losses.extend(step for step, name, _ in rows if name == "train_loss"),
    )
    trainer.add_callback(
        "on_checkpoint", lambda t, blob: checkpoints.append(read_checkpoint(blob)["step"])
    )
    assert trainer.run() == "stopped" and trainer.step == 23
    assert losses == list(range(23)) and checkpoints == [23]


def test_periodic_checkpoints_come_after_a_flush():
    trainer = Trainer(
        RunConfig(**{**TINY, "log_every": 50, "flush_seconds": 10.0}, checkpoint_every=7)
    )
    flushed = [-1]
    trainer.add_callback(
        "on_metrics",
        lambda t, rows: flushed.append(
            max([step for step, name, _ in rows if name == "train_loss"], default=flushed[-1])
        ),
    )
    at_checkpoint = []
    trainer.add_callback(
        "on_checkpoint",
        lambda t, blob: at_checkpoint.append((read_checkpoint(blob)["step"], flushed[-1])),
    )
    trainer.run()
    # each checkpoint at step s comes with the rows of steps < s (the last is the final one)
    assert at_checkpoint == [(s, s - 1) for s in range(7, 60, 7)] + [(60, 59)]


# ---------------------------------------------------------------- 4. resuming
def test_resuming_an_interrupted_run_keeps_its_error_and_never_marks_it_failed(store):
    run_id = create_run(store, RunConfig(**TINY, magnitude="adam"))
    store.set_status(run_id, "interrupted", error="writer process 1 ended", step=17)
    # no checkpoint yet (killed before the first one): the resume starts from step 0
    assert execute_run(store, run_id, resume=True) == "finished"
    assert store.run(run_id)["status"] == "finished"
    history = store.get_artifact(run_id, "history")
    assert history == "interrupted at step 17: writer process 1 ended\n"
    assert_contiguous(store, run_id)


def test_resuming_a_run_that_trains_elsewhere_is_refused_and_leaves_it_alone(store):
    run_id = create_run(store, RunConfig(**TINY, magnitude="adam"))
    store.heartbeat(run_id, step=5)  # this (live) process trains it
    with pytest.raises(ValueError, match="is training in process"):
        execute_run(store, run_id, resume=True)
    run = store.run(run_id)
    assert (run["status"], run["last_step"], run["error"]) == ("running", 5, None)


# ---------------------------------------------------------------- 7. bad ratio and schedule files
@pytest.mark.parametrize("ratio", [-0.5, float("nan"), float("inf")])
def test_a_static_ratio_that_is_negative_or_not_finite_is_refused_at_load(ratio):
    data = {
        "format": "grafting-lab/static-ratios",
        "version": 1,
        "base_lr": 0.1,
        "parameters": {"w": {"ratio": 2.0, "shape": [3]}, "b": {"ratio": ratio, "shape": []}},
    }
    data = json.loads(json.dumps(data))  # as read from a file (JSON NaN/Infinity included)
    with pytest.raises(ValueError, match=r"Invalid static ratios \{'b'"):
        StaticRatios.from_dict(data)


def test_a_replayed_schedule_must_come_from_the_same_model_and_data(store):
    graft = create_run(store, RunConfig(**TINY, magnitude="adam", direction="sgd"))
    execute_run(store, graft)
    for change, message in (
        ({"width": 16}, "recorded on another model"),
        ({"dataset": "digits", "width": 32}, "recorded on 'mnist1d'"),
    ):
        replay = create_run(
            store, RunConfig(**{**TINY, **change}, direction="sgd", replay=f"run:{graft}")
        )
        with pytest.raises(ValueError, match=message):
            execute_run(store, replay)
        assert store.metrics(replay).empty  # refused before any step
    same = create_run(store, RunConfig(**TINY, direction="sgd", replay=f"run:{graft}"))
    assert execute_run(store, same) == "finished"
