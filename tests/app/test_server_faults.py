"""The app server, started as the README says and driven in a real browser, stopped in the
three ways a server stops: SIGTERM to the server (a service manager, ``kill PID``), Ctrl-C in
its terminal (SIGINT to the server and its workers at once), and SIGKILL (a crash, the OOM
killer). Each time: the server is gone quickly, no worker is left, every run is in a final
or resumable state, and a resumed run's rows are contiguous.

    .venv/bin/python -m pytest tests/app/test_server_faults.py -m browser
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from grafting_core.lab.store.run_store import RunStore, _pid_alive
from tests.helpers import (
    CHROMIUM,
    WAIT_S,
    enter_number,
    ready,
    resume_a_little,
    serve,
    training,
    until,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]
EXIT_S = 30  # a stopped server must be gone within this (runs stop at their next flush)


def _press_start(url: str, answer: str, magnitude_lr: str | None = None, **inputs: str) -> str:
    """Open the Graft lab, type ``inputs`` (label -> value) and M's lr, press Start; returns
    the page's text once it shows ``answer`` (a loaded machine may take seconds to rerun)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(url)
            ready(page)
            for label, value in inputs.items():
                enter_number(page, label, value)
            if magnitude_lr is not None:  # M's column comes first
                field = page.get_by_label("lr", exact=True).first
                field.fill(magnitude_lr)
                field.press("Enter")
                page.wait_for_timeout(500)
                ready(page)  # the browser shows what it made of it (1e400: 0)
            page.get_by_role("button", name="Start", exact=True).click()
            expect(page.get_by_text(answer).first).to_be_visible(timeout=WAIT_S * 1000)
            ready(page)
            return page.locator('[data-testid="stMain"]').inner_text()
        finally:
            browser.close()


def test_a_learning_rate_a_browser_cannot_hold_is_refused_and_starts_nothing(tmp_path):
    with serve(tmp_path) as (url, _, _):
        # A browser cannot hold 1e400 in a float field: it shows and sends 0, never trained.
        text = _press_start(url, "Not started", magnitude_lr="1e400", Steps="50")
    assert "Not started" in text and "lr" in text
    assert RunStore(tmp_path).runs().empty


@pytest.mark.parametrize(
    "how", ["SIGTERM to the server", "Ctrl-C (SIGINT to the group)", "SIGKILL to the server"]
)
def test_a_stopped_server_leaves_no_worker_and_every_run_resumable(tmp_path, how):
    with serve(tmp_path) as (url, server, log):
        _press_start(url, "Live: redrawn every", Width="16", Steps="1000000")
        store = RunStore(tmp_path)
        run_ids = store.runs()["run_id"].tolist()
        assert len(run_ids) >= 3
        until(lambda: any(training(store, r, past=20) for r in run_ids), "a run to train")
        workers = {int(pid) for pid in store.runs()["pid"].dropna()} - {server.pid}
        assert workers
        began = time.monotonic()
        if how.startswith("Ctrl-C"):
            os.killpg(server.pid, signal.SIGINT)
        else:
            server.send_signal(signal.SIGKILL if how.startswith("SIGKILL") else signal.SIGTERM)
        try:
            server.wait(timeout=EXIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server outlived {how} by {EXIT_S} s:\n{log.read_text()[-3000:]}")
        for pid in workers:  # after SIGKILL a worker stops its run, then exits (lifeline)
            until(lambda pid=pid: not _pid_alive(pid), f"worker {pid} to exit", EXIT_S)
        assert time.monotonic() - began < EXIT_S + 5
    RunStore(tmp_path).close()  # a new opener marks runs whose writer died
    statuses = store.runs().set_index("run_id")["status"]
    assert set(statuses) <= {"stopped", "interrupted"}, statuses
    if not how.startswith("SIGKILL"):  # a clean stop: the running runs were stopped
        assert "stopped" in set(statuses), statuses
    for run_id in run_ids:
        resume_a_little(store, run_id)
