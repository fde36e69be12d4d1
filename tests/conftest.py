"""Shared test fixtures."""

import socket

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
