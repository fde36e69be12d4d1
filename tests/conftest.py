"""The tests' fixtures, shared from here (plain helpers: ``tests/helpers.py``)."""

import os
import socket
import sys

import pytest
import streamlit as st
import torch

from grafting_core.lab.store.run_store import RunStore
from tests.helpers import ROOT


@pytest.fixture
def no_network(monkeypatch):
    """Block every socket connection: code under test must work offline."""

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    """Generated data sets (MNIST-1D) are cached in a folder of the session's, not the
    user's ``~/.cache``; worker processes inherit it."""
    before = os.environ.get("GRAFTING_DATA_CACHE")
    os.environ["GRAFTING_DATA_CACHE"] = str(tmp_path_factory.mktemp("data_cache"))
    yield
    if before is None:
        del os.environ["GRAFTING_DATA_CACHE"]
    else:
        os.environ["GRAFTING_DATA_CACHE"] = before


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed every test; one torch thread (small ops, and no spinning against other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_main_module():
    """AppTest leaves the page it ran as ``sys.modules["__main__"]``; a later spawned process
    (workers, torch.distributed tests) would re-import that page. Put the real one back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """For the app's tests: one store directory (and so one server executor) per module,
    as ``$GRAFTING_RUNS_DIR``; its workers shut down at the module's end."""
    root = tmp_path_factory.mktemp("app_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFTING_RUNS_DIR", str(root))
        mp.syspath_prepend(str(ROOT))  # pages import the top-level ui package
        yield root
        store = RunStore(root)
        for run_id in store.runs(status="running")["run_id"]:
            store.set_status(run_id, "stopped")
        store.close()
        st.cache_resource.clear()  # on_release: executors shut down, stores close


@pytest.fixture
def store(request, tmp_path):
    """An empty run store, closed after the test: a new one under ``tmp_path / "runs"``; in
    a test marked ``app_store`` (its pages read ``$GRAFTING_RUNS_DIR``), the module's app
    store (``runs_dir``), emptied."""
    if request.node.get_closest_marker("app_store"):
        store = RunStore(request.getfixturevalue("runs_dir"))
        for run_id in store.runs()["run_id"]:
            store.delete_run(run_id)
    else:
        store = RunStore(tmp_path / "runs")
    yield store
    store.close()
