"""Stop means stop (issue 28, items 3-5): Ctrl-C, SIGTERM and SIGHUP on a real ``grid`` with
worker processes stop its training runs resumably, start none of its queued runs, say how to
continue, exit non-zero without a traceback and leave no process behind; SIGHUP on ``train``
checkpoints and marks the run stopped; a Dask scheduler address that answers with something
else, or not at all, is refused in bounded time with the right reason."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from grafting_core.lab.runs.trainer import read_checkpoint
from grafting_core.lab.store.run_store import RunStore, _pid_alive
from tests.helpers import ROOT

WAIT_S = 180  # bound on every wait for another process (import torch, spawn, train)
LONG_FLAGS = [
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
    "--log-every",
    "10",
    "--flush-seconds",
    "0",
    "--checkpoint-every",
    "100000",  # the stop itself must write the checkpoint
]


def _until(condition, what: str, timeout: float = WAIT_S):
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _training(store: RunStore, past: int = 30) -> list[str]:
    """The runs training past step ``past`` in a worker."""
    runs = store.runs(status="running", flatten_config=False)
    return list(runs.loc[runs["last_step"].fillna(0) > past, "run_id"])


def _start(command: list[str]) -> subprocess.Popen:
    """The CLI in its own session, as a terminal runs it (a process group of its own)."""
    return subprocess.Popen(
        [sys.executable, "-m", "grafting_core", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _send(cli: subprocess.Popen, sig: int, to_group: bool) -> None:
    """``to_group``: as a terminal does (Ctrl-C, a closed window reach every process of the
    foreground group, the workers too); else to the CLI's process only (``kill PID``)."""
    if to_group:
        os.killpg(cli.pid, sig)
    else:
        cli.send_signal(sig)


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, True)],
    ids=["ctrl-c", "sigterm", "sighup"],
)
def test_a_signal_stops_a_grid_with_workers_and_no_queued_run_starts(tmp_path, sig, to_group):
    store = RunStore(tmp_path / "runs")
    cli = _start(
        [
            "--runs-dir",
            str(store.root),
            "grid",
            "--optimizers",
            "sgd",
            "adam",
            "--workers",
            "2",
            *LONG_FLAGS,
        ]
    )  # 4 runs on 2 workers: 2 train, 2 wait in the queue
    try:
        training = _until(lambda: len(_training(store)) == 2 and _training(store), "two runs")
        processes = _descendants(cli.pid)
        assert len(processes) >= 2  # the workers (and spawn's resource tracker)
        _send(cli, sig, to_group)
        out, err = cli.communicate(timeout=WAIT_S)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
    assert cli.returncode == 130, err
    assert "Traceback" not in err and "Traceback" not in out, err
    runs = store.runs(flatten_config=False).set_index("run_id")
    (group,) = set(runs["group"])
    assert f"grid --group {group}" in err
    assert set(runs["status"]) == {"stopped"}, runs[["status", "error"]]
    for run_id in runs.index:
        names = store.artifact_names(run_id)
        if run_id in training:  # stopped at the end of a step, checkpointed there
            step = read_checkpoint(store.get_artifact(run_id, "checkpoint"))["step"]
            assert step == runs.loc[run_id, "last_step"] > 30
        else:  # queued: never started
            assert "checkpoint" not in names and "layers" not in names
            assert store.metrics(run_id).empty and not runs.loc[run_id, "last_step"]
    _until(lambda: not any(_pid_alive(pid) for pid in processes), "the workers to exit", 30)

    # the line's command continues it: the same four runs, two resumed, none made anew
    cli = _start(["--runs-dir", str(store.root), "grid", "--group", group, "--steps", "5"])
    out, err = cli.communicate(timeout=WAIT_S)
    assert cli.returncode == 2 and "drop --steps" in err  # a continuation is the same grid
    assert len(store.runs()) == 4


def test_a_stopped_grid_continues_with_its_group_and_exits_zero_once_done(tmp_path):
    store = RunStore(tmp_path / "runs")
    tiny = ["--width", "16", "--batch-size", "16", "--steps", "8", "--eval-every", "8"]
    tiny += ["--eval-examples", "64", "--log-every", "4"]
    base = ["--runs-dir", str(store.root), "grid", "--optimizers", "sgd", "adam", "--workers"]
    cli = subprocess.run(
        [sys.executable, "-m", "grafting_core", *base, "1", *tiny],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert cli.returncode == 0, cli.stderr
    runs = store.runs(flatten_config=False)
    (group,) = set(runs["group"])
    victim, kept = runs["run_id"].iloc[0], runs["run_id"].iloc[1]
    store.set_status(victim, "stopped", step=0)  # as a Ctrl-C before it started leaves it
    listed = subprocess.run(
        [sys.executable, "-m", "grafting_core", "--runs-dir", str(store.root), "grid"]
        + ["--group", group, "--workers", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert listed.returncode == 0, listed.stderr
    after = store.runs(flatten_config=False).set_index("run_id")
    assert len(after) == 4 and set(after["status"]) == {"finished"}
    assert after.loc[victim, "last_step"] == 8
    assert after.loc[kept, "ended"] == runs.set_index("run_id").loc[kept, "ended"]  # kept


def test_a_grid_with_an_interrupted_run_exits_non_zero_and_says_how_to_continue(tmp_path):
    from grafting_core.lab.cli import main

    store = RunStore(tmp_path / "runs")
    tiny = ["--width", "16", "--batch-size", "16", "--steps", "4", "--eval-every", "4"]
    args = ["--runs-dir", str(store.root), "grid", "--optimizers", "sgd", "adam", "--workers"]
    original = RunStore.set_status

    def interrupt_one(self, run_id, status, **kwargs):  # a worker killed mid-run, say
        if status == "finished" and not getattr(interrupt_one, "done", False):
            interrupt_one.done = True
            status, kwargs = "interrupted", {**kwargs, "error": "killed"}
        return original(self, run_id, status, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunStore, "set_status", interrupt_one)
        assert main([*args, "1", *tiny]) == 1
    assert sorted(store.runs()["status"]) == ["finished"] * 3 + ["interrupted"]


def test_a_grid_group_of_another_kind_is_refused(tmp_path, capsys):
    from grafting_core.lab.cli import main

    store = RunStore(tmp_path / "runs")
    store.create_run({"steps": 1}, kind="compare", group="compare-1")
    with pytest.raises(SystemExit) as exit_:
        main(["--runs-dir", str(store.root), "grid", "--group", "compare-1"])
    assert exit_.value.code == 2
    assert "compare --group compare-1" in capsys.readouterr().err
    assert len(store.runs()) == 1


# ----------------------------------------------------------------------- 5. SIGHUP on train
def test_sighup_stops_a_cli_run_resumably_with_a_checkpoint(tmp_path):
    store = RunStore(tmp_path / "runs")
    cli = _start(["--runs-dir", str(store.root), "train", *LONG_FLAGS])
    try:
        (run_id,) = _until(lambda: _training(store, past=60), "the run to train")
        _send(cli, signal.SIGHUP, to_group=True)
        out, err = cli.communicate(timeout=WAIT_S)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
    assert cli.returncode == 130, err
    assert f"--resume {run_id}" in out and "Traceback" not in err
    run = store.run(run_id)
    assert run["status"] == "stopped" and run["error"] is None
    assert read_checkpoint(store.get_artifact(run_id, "checkpoint"))["step"] == run["last_step"]


# ------------------------------------------------------------ 4. Dask: handshakes time out
def _listener(reply: bytes | None) -> tuple[socket.socket, str]:
    """A TCP server on a free port that answers every connection with ``reply`` (an HTTP
    server, say) or never answers (None)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                with_reply = conn
                try:
                    with_reply.recv(1024)
                    with_reply.sendall(reply)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return server, f"tcp://127.0.0.1:{server.getsockname()[1]}"


HTTP = b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [(HTTP, "does not speak Dask's protocol"), (None, "no answer to Dask's handshake")],
    ids=["http-server", "silent"],
)
def test_a_scheduler_address_that_is_not_dask_is_refused_in_bounded_time(tmp_path, reply, reason):
    pytest.importorskip("distributed")
    server, address = _listener(reply)
    store = RunStore(tmp_path / "runs")
    try:
        started = time.monotonic()
        cli = subprocess.run(
            [sys.executable, "-m", "grafting_core", "--runs-dir", str(store.root), "grid"]
            + ["--executor", "dask", "--scheduler", address, "--steps", "4"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert cli.returncode == 2, cli.stderr
    assert f"Cannot reach a Dask scheduler at {address}" in cli.stderr
    assert reason in cli.stderr
    assert "Traceback" not in cli.stderr
    assert store.runs().empty
    assert elapsed < 60  # the connect timeout (5 s) covers the whole handshake


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, True)],
    ids=["ctrl-c", "sigterm", "sighup"],
)
def test_a_signal_stops_a_grid_on_a_dask_local_cluster(tmp_path, sig, to_group):
    """Ctrl-C, ``kill PID`` (SIGTERM to the command alone: its local cluster's workers hear
    nothing) and a closed terminal (SIGHUP) stop a grid on Dask as they do locally."""
    pytest.importorskip("distributed")
    store = RunStore(tmp_path / "runs")
    cli = _start(
        ["--runs-dir", str(store.root), "grid", "--optimizers", "sgd", "adam"]
        + ["--executor", "dask", "--workers", "2", *LONG_FLAGS]
    )
    try:
        training = _until(lambda: len(_training(store)) == 2 and _training(store), "two runs")
        processes = _descendants(cli.pid)
        _send(cli, sig, to_group)
        try:
            out, err = cli.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(cli.pid, signal.SIGKILL)
            out, err = cli.communicate()
            pytest.fail(f"still running {WAIT_S} s after {sig!r}:\n{err[-4000:]}")
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
    assert cli.returncode == 130, err
    assert "Traceback" not in err, err
    runs = store.runs(flatten_config=False).set_index("run_id")
    (group,) = set(runs["group"])
    assert f"grid --group {group}" in err
    assert set(runs["status"]) <= {"stopped", "interrupted"}, runs[["status", "error"]]
    for run_id in set(runs.index) - set(training):  # queued: never started
        assert store.metrics(run_id).empty and not runs.loc[run_id, "last_step"]
        assert "checkpoint" not in store.artifact_names(run_id)
    _until(lambda: not any(_pid_alive(pid) for pid in processes), "the workers to exit", 60)
