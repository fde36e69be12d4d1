"""Shared test fixtures."""

import socket
import sys

import pytest
import torch


@pytest.fixture
def no_network(monkeypatch):
    """Block every socket connection: code under test must work offline."""

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


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
