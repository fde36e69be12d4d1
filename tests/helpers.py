"""Plain helpers shared by the tests (fixtures live in ``tests/conftest.py``): small models
and data for the library's tests, AppTest pages and their charts, the browser tests' server,
waits on other processes, and the tiny settings the lab's tests train with."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from grafting_core.lab.experiments.compare import compare
from grafting_core.lab.experiments.comparison_plan import SweepPlan
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run, execute_run
from grafting_core.lab.runs.trainer import read_checkpoint
from grafting_core.lab.store.run_store import RunStore

ROOT = Path(__file__).resolve().parents[1]  # the repository

# ---------------------------------------------------------------- the library's tests


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0, bias: bool = True) -> nn.Module:
    """A 3-layer MLP with readable parameter names."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(6, 16, bias=bias))
    model.add_module("act1", nn.Tanh())
    model.add_module("fc2", nn.Linear(16, 12, bias=bias))
    model.add_module("act2", nn.Tanh())
    model.add_module("out", nn.Linear(12, 3, bias=bias))
    return model.to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic regression batch for ``step``."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = torch.stack([x[:, 0] * x[:, 1], x[:, 2].sin(), x[:, 3:].sum(1)], 1)
    return x.to(dtype), y.to(dtype)


def compute_grads(model: nn.Module, step: int) -> torch.Tensor:
    """Forward/backward on the step's batch; returns the loss."""
    dtype = next(model.parameters()).dtype
    x, y = batch(step, dtype)
    model.zero_grad(set_to_none=True)
    loss = (model(x) - y).square().mean()
    loss.backward()
    return loss.detach()


def train(
    model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, start: int = 0, scheduler=None
) -> list[float]:
    """Run ``steps`` optimizer steps; returns the losses."""
    losses = []
    for step in range(start, start + steps):
        losses.append(float(compute_grads(model, step)))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return losses


def max_relative_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest ‖a_p − b_p‖ / ‖b_p‖ over the parameter tensors."""
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        a64, b64 = pa.detach().double(), pb.detach().double()
        worst = max(worst, float((a64 - b64).norm() / b64.norm()))
    return worst


class CountLocalScalarDense(TorchDispatchMode):
    """Counts aten._local_scalar_dense: every .item()/float(t)/bool(t) host sync."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- tiny settings
#: The app tests' inline runs (``train_inline``).
APP_TINY = {"width": 8, "steps": 20, "log_every": 5, "eval_every": 10, "eval_examples": 200}

#: A comparison small enough to tune and judge inline (the protocol's tests).
COMPARISON_TINY = dict(
    dataset="digits",
    model="mlp",
    width=8,
    steps=15,
    batch_size=32,
    eval_every=15,
    eval_examples=64,
    log_every=5,
    flush_seconds=0.0,
)

#: The search's tests: a warm-up schedule to search, and the sgd/adam pair.
SEARCH_TINY = {**COMPARISON_TINY, "schedule": "warmup_cosine", "warmup_steps": 2}
PAIR = {"sgd": ("sgd", {"lr": 1e-2, "momentum": 0.9}), "adam": ("adam", {"lr": 3e-3})}

STUDY_BASE = {  # a comparison small enough to train inline in a few seconds
    **COMPARISON_TINY,
    "steps": 20,
    "eval_every": 20,
    "schedule": "warmup_cosine",
    "warmup_steps": 4,
}


def tiny_comparison(store: RunStore, settings: dict | None = None) -> str:
    """A tuned sgd/adam comparison (one seed) trained in this process with ``settings``
    (``STUDY_BASE`` unless given); returns its group."""
    return compare(
        store,
        RunConfig(**(settings or STUDY_BASE)),
        PAIR,
        seeds=(0,),
        plan=SweepPlan(points=2, factor=10, extensions=0),
    ).group


# ---------------------------------------------------------------- AppTest pages
TIMEOUT = 60  # seconds per script run: the first imports torch, plotly and the engine


def page(path: str, **query: str) -> AppTest:
    """A page run once (``query``: URL query parameters)."""
    at = AppTest.from_file(str(ROOT / path), default_timeout=TIMEOUT)
    at.query_params.update(query)
    return at.run()


def _decoded(value):
    """Plotly's JSON packs numeric arrays as {"dtype", "bdata"(, "shape")}: unpack them (also
    inside nested settings such as ``error_y``)."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(n) for n in shape.split(",")]
        return array.reshape(shape) if shape else array
    if isinstance(value, dict):
        return {key: _decoded(item) for key, item in value.items()}
    return value


def page_figures(at: AppTest) -> list[dict]:
    """The figure of every chart on the page, in page order: plotly charts and live charts
    (``ui.charts``' component) alike (reads AppTest's internal protos)."""
    figures = []
    for node in at.main:
        if node.type == "plotly_chart":
            figures.append(json.loads(node.proto.spec))
        elif node.type == "component_instance":
            figures.append(json.loads(json.loads(node.proto.json_args)["spec"]))
    return figures


def chart_traces(at: AppTest, index: int) -> list[dict]:
    """The plotly traces of the page's ``index``-th chart."""
    traces = page_figures(at)[index]["data"]
    return [{key: _decoded(value) for key, value in trace.items()} for trace in traces]


def train_inline(store: RunStore, group: str = "", **changes) -> str:
    """A tiny run trained in this process; returns its id."""
    config = RunConfig(**{**APP_TINY, **changes})
    run_id = create_run(store, config, kind="lab", group=group or None)
    try:
        execute_run(store, run_id)
    except Exception:
        pass  # a failing config is recorded as failed, which some tests want
    return run_id


# ---------------------------------------------------------------- waits on other processes
WAIT_S = 120  # bound on every wait for another process (import torch, spawn, train)


def until(condition, what: str, timeout: float = WAIT_S):
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def training(store: RunStore, run_id: str, past: int = 60) -> int | None:
    """The pid of the process training ``run_id`` once it is past step ``past``."""
    run = store.run(run_id)
    if run["status"] == "running" and (run["last_step"] or 0) > past:
        return int(run["pid"])
    return None


def assert_contiguous(store: RunStore, run_id: str) -> None:
    """Every step 0..last has one train_loss row and one row of layer norms."""
    last = store.run(run_id)["last_step"]
    losses = store.metrics(run_id, names=["train_loss"])["step"].tolist()
    assert losses == list(range(last))
    assert sorted(store.layer_norms(run_id)["step"].unique().tolist()) == list(range(last))


def resume_a_little(store: RunStore, run_id: str) -> None:
    """Resume ``run_id`` here for one flush; it must continue from its checkpoint (from
    step 0 without one)."""
    names = store.artifact_names(run_id)
    checkpoint_step = (
        read_checkpoint(store.get_artifact(run_id, "checkpoint"))["step"]
        if "checkpoint" in names
        else 0
    )
    starts = []
    assert (
        execute_run(
            store,
            run_id,
            resume=True,
            should_stop=lambda: True,
            callbacks={"on_start": lambda trainer: starts.append(trainer.step)},
        )
        == "stopped"
    )  # at its first flush
    assert starts == [checkpoint_step] and store.run(run_id)["last_step"] > checkpoint_step
    assert_contiguous(store, run_id)


# ---------------------------------------------------------------- the app in a browser
CHROMIUM = Path("/usr/bin/chromium")
READY = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(runs: Path) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``./tasks app`` on a free port over the store at ``runs``; yields (url, server, server
    log) once it answers, and stops it after (if the test has not)."""
    port = free_port()
    log_path = runs / "server.log"
    log = open(log_path, "w")  # closed below, after the server
    server = subprocess.Popen(
        ["./tasks", "app", "--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT,
        env={**os.environ, "GRAFTING_RUNS_DIR": str(runs)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # its own group: killed as one
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # set-up is a no-op when .venv is current
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app did not start: {log_path.read_text()}")
            time.sleep(0.5)
        yield url, server, log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def ready(page, timeout: float = 60_000) -> None:
    """Wait until the page's script has run."""
    from playwright.sync_api import expect

    expect(page.locator(READY)).to_have_count(1, timeout=timeout)


def enter_number(page, label: str, value: str) -> None:
    """Type ``value`` into a number field, press Enter, and wait for the rerun it starts to
    end with the value still there (a rerun still in flight can redraw the old value)."""
    from playwright.sync_api import expect

    field = page.get_by_label(label, exact=True)
    for _ in range(3):
        field.fill(value)
        field.press("Enter")
        page.wait_for_timeout(500)  # the rerun starts
        ready(page)
        if field.input_value() == value:
            return
    expect(field).to_have_value(value)


def sweep_run(store, lr: float, status: str, loss: float | None = None, group: str = "g") -> str:
    """A hand-made sweep point of arm ``sgd`` at ``lr`` in ``group``, ended with ``status``
    and (when given) a final ``val_loss``: the search's tables read from such runs."""
    run_id = store.create_run(
        {"magnitude_hparams": {"lr": lr}}, group=group, arm=("sweep_point", "sgd", "", "")
    )
    if loss is not None:
        store.log_metrics(run_id, 9, {"val_loss": loss})
    store.set_status(run_id, status)
    return run_id
