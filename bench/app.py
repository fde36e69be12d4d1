"""The app in a real browser: latency of the Graft lab's first live point, and what an open
page costs a training run.

    .venv/bin/python bench/app.py                 # ~15 minutes on 2 cores
    .venv/bin/python bench/app.py --quick         # smoke run
    .venv/bin/python bench/app.py --cpu-windows 3 # only 3. below (~1 minute)
    .venv/bin/python bench/app.py --cpu-windows 1 --js-profile
    .venv/bin/python bench/app.py --all-cores     # 4. below (~1 minute)

1. Latency: ``./tasks app`` on a fresh store; Chromium opens the Graft lab, sets nothing but
   the steps, clicks Start and waits for the first point of the training-loss chart. "cold"
   is the first click right after the page loaded (the worker processes are still importing
   torch); "warm" repeats once the previous group finished.
2. Throughput: the same run (Adam#SGD on the default MLP) three ways, interleaved, compared
   by the median of the trainer's ``steps_per_second`` metric (one value per flush):
   - ``cli``: ``python -m grafting_core train`` with one torch thread (as an app worker has);
   - ``app``: the app trains that config again (Runs page, "Re-run this config") while the
     Graft lab page shows it live in Chromium (redrawn every second: ``ui.live``), over
     the whole run and after its first 30 s (the page's first load left out);
   - ``app, page closed``: the same, with no browser attached (the server idles).
3. With ``--cpu-windows N``: the cores each kind of process uses (Chromium's renderer and
   GPU process, the server, the worker; from ``/proc/<pid>/stat``) in N windows of 10 s
   while the Graft lab shows a 200,000-step run live, and how busy the renderer's main
   thread is (Chrome's ``Performance.getMetrics``); ``--js-profile`` then samples the
   renderer's JavaScript for 8 s and prints where it spends its time.
4. With ``--all-cores``: the Graft lab's default group (four runs, two at a time, so every
   core trains): how often the live loss chart is redrawn, and the runs' steps/s with the
   page open and closed.
Needs /usr/bin/chromium (Debian's). The machine is shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from grafting_core.lab.runs.config import RunConfig  # noqa: E402
from grafting_core.lab.runs.executor import usable_cores  # noqa: E402
from grafting_core.lab.runs.runner import create_run, request_stop  # noqa: E402
from grafting_core.lab.store.run_store import RunStore  # noqa: E402
from ui.charts import LIVE_CHART_FRAME as LIVE_CHART  # noqa: E402

READY = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# True once the page shows a group other than ``old`` (URL) and its loss chart has a line
# with fewer points than a whole run (``steps``): the new group's, not the last one's.
FIRST_POINT = """([old, steps]) => {
  const group = new URLSearchParams(location.search).get('group');
  if (!group || group === old) return false;
  const frame = document.querySelector('LIVE_CHART');
  const chart = frame && frame.contentDocument;  // the live loss chart
  if (!chart) return false;
  return Array.from(chart.querySelectorAll('.scatterlayer path.js-line')).some(path => {
    const points = ((path.getAttribute('d') || '').match(/[ML]/g) || []).length;
    return points > 0 && points < steps;
  });
}""".replace("LIVE_CHART", LIVE_CHART)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class App:
    """``./tasks app`` on a free port with its own store (a process group, killed on exit)."""

    def __init__(self, runs: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(runs / f"server-{self.port}.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(
            ["./tasks", "app", "--server.port", str(self.port), "--server.headless", "true"],
            cwd=ROOT,
            env={**os.environ, "GRAFTING_RUNS_DIR": str(runs)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the app did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def ready(page) -> None:
    expect(page.locator(READY)).to_have_count(1, timeout=120_000)


def launch(p):
    return p.chromium.launch(
        executable_path="/usr/bin/chromium",
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    )


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    ready(page)


@contextlib.contextmanager
def app_in_browser() -> Iterator[tuple[Path, App, Any, RunStore]]:
    """A fresh run store, ``./tasks app`` serving it and Chromium showing the app; yields
    (store directory, app, page, store) and stops all three after."""
    with tempfile.TemporaryDirectory() as root, sync_playwright() as p:
        app = App(Path(root))
        browser = launch(p)
        store = RunStore(root)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(app.url)
            ready(page)
            yield Path(root), app, page, store
        finally:
            store.close()
            browser.close()
            app.stop()


def latency(repeats: int, steps: int) -> list[tuple[str, float]]:
    """Seconds from the Start click to the first point on the loss chart."""
    out = []
    with app_in_browser() as (_, _, page, store):
        set_number(page, "Steps", steps)
        for i in range(repeats + 1):
            # The last group must have ended in the store first: while a group starts,
            # the page briefly still shows Start enabled, and a click then is ignored
            # (the next script run draws it disabled) or waits for the group to end.
            while (store.runs()["status"] == "running").any():
                time.sleep(0.2)
            start = page.get_by_role("button", name="Start", exact=True)
            expect(start).to_be_enabled(timeout=300_000)
            ready(page)
            old = page.evaluate("() => new URLSearchParams(location.search).get('group')")
            clicked = time.perf_counter()
            start.click()
            page.wait_for_function(FIRST_POINT, arg=[old or "", steps], timeout=300_000, polling=50)
            out.append(("cold" if i == 0 else "warm", time.perf_counter() - clicked))
            print(
                f"  {out[-1][0]}: {out[-1][1]:.2f} s  (load {os.getloadavg()[0]:.1f})", flush=True
            )
    return out


def cli_run(root: Path, steps: int) -> str:
    """One Adam#SGD run from the command line with one torch thread; returns its id."""
    store = RunStore(root)
    before = set(store.runs()["run_id"])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grafting_core",
            "--runs-dir",
            str(root),
            "train",
            "--magnitude",
            "adam",
            "--direction",
            "sgd",
            "--direction-hparams",
            '{"lr": 0.1, "momentum": 0.9}',
            "--steps",
            str(steps),
            "--name",
            "bench",
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (run_id,) = set(store.runs()["run_id"]) - before
    store.close()
    return run_id


def app_rerun(app: App, page, store: RunStore, source: str, *, watch: bool) -> str:
    """Re-run ``source`` from the Runs page; with ``watch``, follow it on the Graft lab."""
    before = set(store.runs()["run_id"])
    page.goto(f"{app.url}/saved-runs")
    ready(page)
    detail = page.get_by_role("combobox", name="Run", exact=True)
    detail.click()
    page.get_by_role("option", name=source).click()
    ready(page)
    page.get_by_role("button", name="Re-run this config").click()
    ready(page)
    expect(page.get_by_text("Started run")).to_be_visible(timeout=60_000)
    (run_id,) = set(store.runs()["run_id"]) - before
    if watch:
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Graft lab").click()
        expect(page.locator(LIVE_CHART).first).to_be_visible(timeout=60_000)
    else:
        page.goto("about:blank")  # no session attached while it trains
    return run_id


def wait_done(store: RunStore, run_id: str) -> None:
    while store.run(run_id)["status"] == "running":
        time.sleep(0.5)


def median_speed(store: RunStore, run_id: str, after: float = 0.0) -> float:
    """Median steps/s over the run's flushes (the first one, start-up, left out); ``after``:
    only flushes that began that many seconds into the training."""
    rows = store.metrics(run_id, names=["steps_per_second"]).sort_values("step")
    steps, speeds = rows["step"].to_numpy(), rows["value"].to_numpy()
    lengths = [steps[0] + 1, *(steps[1:] - steps[:-1])]
    began = 0.0
    kept = []
    for i, (length, speed) in enumerate(zip(lengths, speeds)):
        if i > 0 and began >= after:
            kept.append(speed)
        began += length / speed
    return statistics.median(kept) if kept else float("nan")


def throughput(rounds: int, steps: int) -> dict[str, list[float]]:
    speeds: dict[str, list[float]] = {
        "cli": [],
        "app, page open": [],
        "app, page open, after 30 s": [],
        "app, page closed": [],
    }
    with app_in_browser() as (root, app, page, store):
        source = cli_run(root, 50)  # the config the app re-runs
        time.sleep(20)  # let the workers finish warming up (not part of any figure)
        store_source = store.run(source)
        assert store_source["status"] == "finished"
        for r in range(rounds):
            cli = cli_run(root, steps)
            speeds["cli"].append(median_speed(store, cli))
            for watch, key in ((True, "app, page open"), (False, "app, page closed")):
                run_id = app_rerun(app, page, store, cli, watch=watch)
                wait_done(store, run_id)
                speeds[key].append(median_speed(store, run_id))
                if watch:  # also without the page's first load
                    speeds[f"{key}, after 30 s"].append(median_speed(store, run_id, after=30.0))
            print(
                f"  round {r + 1}: "
                + ", ".join(f"{k} {v[-1]:.0f}" for k, v in speeds.items())
                + f" steps/s (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return speeds


def process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (kind, CPU seconds so far) for the browser's, the server's and the workers'
    processes (kind: renderer, gpu, chromium, server, worker)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        if "chrom" in command:
            kind = next((k for k in ("renderer", "gpu") if f"type={k}" in command), "chromium")
        elif "streamlit" in command:
            kind = "server"
        elif "multiprocessing" in command:
            kind = "worker"
        else:
            continue
        out[int(pid)] = (kind, (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"))
    return out


# The length of the path of the live loss chart's first line: it changes at every redraw.
FIRST_LINE = """() => {
  const frame = document.querySelector('LIVE_CHART');
  const line = frame && frame.contentDocument &&
    frame.contentDocument.querySelector('.scatterlayer path.js-line');
  return line ? line.getAttribute('d').length : -1;
}""".replace("LIVE_CHART", LIVE_CHART)


def all_cores_busy(seconds: float = 20.0) -> None:
    """The Graft lab's default group (four runs, two at a time: every core trains) with
    50,000 steps: over ``seconds`` with the page open, how often the live loss chart changes,
    the training runs' steps/s and what the page says about its redraws; then the steps/s
    over as long with no page attached."""
    with app_in_browser() as (_, app, page, store):
        set_number(page, "Steps", 50_000)
        page.get_by_role("button", name="Start", exact=True).click()
        time.sleep(15)  # the workers start, the page loads its charts

        def steps() -> dict[str, int]:
            """Steps done by each run that is training (queued ones have none yet)."""
            runs = store.runs(status="running").dropna(subset=["last_step"])
            return dict(zip(runs["run_id"], runs["last_step"].astype(int)))

        before, start = steps(), time.perf_counter()
        last, changes = None, 0
        while time.perf_counter() - start < seconds:
            length = page.evaluate(FIRST_LINE)
            changes += length != last
            last = length
            time.sleep(0.05)
        open_speeds = [(n - before[r]) / seconds for r, n in steps().items() if r in before]
        captions = page.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
        page.goto("about:blank")
        before, start = steps(), time.perf_counter()
        time.sleep(seconds)
        closed_speeds = [
            (n - before[r]) / (time.perf_counter() - start)
            for r, n in steps().items()
            if r in before
        ]
        print(
            f"  page open: loss chart redrawn {changes / seconds:.2f} times a second, runs "
            f"{', '.join(f'{v:.0f}' for v in open_speeds)} steps/s; page closed: runs "
            f"{', '.join(f'{v:.0f}' for v in closed_speeds)} steps/s "
            f"(load {os.getloadavg()[0]:.1f})"
        )
        print("  the page said:", *[c for c in captions if c.startswith("Live")])
        for run_id in store.runs(status="running")["run_id"]:
            request_stop(store, run_id)


def page_cpu(windows: int, steps: int, js_profile: bool = False) -> None:
    """Cores used by each kind of process, in 10-s windows, while the Graft lab shows one long
    Adam#SGD run live (re-run from the Runs page), and the renderer's main-thread time."""
    with app_in_browser() as (_, app, page, store):
        time.sleep(15)  # the workers warm up
        config = RunConfig(
            magnitude="adam",
            direction="sgd",
            steps=steps,
            name="bench",
            direction_hparams={"lr": 0.1, "momentum": 0.9},
        )
        store.set_status(create_run(store, config, kind="train"), "finished", step=0)
        run_id = app_rerun(app, page, store, "bench", watch=True)
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        for window in range(windows):
            before, metrics = process_cpu(), cdp.send("Performance.getMetrics")
            start = time.perf_counter()
            time.sleep(10)
            after, metrics_after = process_cpu(), cdp.send("Performance.getMetrics")
            seconds = time.perf_counter() - start
            used: dict[str, float] = {}
            for pid, (kind, cpu) in after.items():
                used[kind] = used.get(kind, 0.0) + (cpu - before.get(pid, (kind, 0.0))[1])
            main = {m["name"]: m["value"] for m in metrics_after["metrics"]}
            main0 = {m["name"]: m["value"] for m in metrics["metrics"]}
            busy = (main["TaskDuration"] - main0["TaskDuration"]) / seconds
            print(
                f"  seconds {10 * window:3d}-{10 * window + 10:3d}, step "
                f"{store.run(run_id)['last_step']}: "
                + ", ".join(f"{k} {v / seconds:.2f}" for k, v in sorted(used.items()))
                + f" cores; renderer main thread busy {busy:.0%} "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        if js_profile:
            js_hotspots(cdp)
        request_stop(store, run_id)


def js_hotspots(cdp, seconds: float = 8.0, top: int = 25) -> None:
    """Sample the renderer's JavaScript for ``seconds`` (Chrome's Profiler domain) and print
    the functions with the largest share of samples, callees included."""
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": 500})
    cdp.send("Profiler.start")
    time.sleep(seconds)
    profile = cdp.send("Profiler.stop")["profile"]
    nodes = {node["id"]: node for node in profile["nodes"]}
    parent = {child: node["id"] for node in profile["nodes"] for child in node.get("children", [])}
    share: dict[str, float] = {}
    for sample, delta in zip(profile["samples"], profile["timeDeltas"]):
        seen, node = set(), sample
        while node is not None:
            frame = nodes[node]["callFrame"]
            name = (
                f"{frame['functionName'] or '(anonymous)'} {frame['url'].rsplit('/', 1)[-1][:32]}"
            ).strip()
            if name not in seen:
                seen.add(name)
                share[name] = share.get(name, 0.0) + delta
            node = parent.get(node)
    total = sum(profile["timeDeltas"])
    print(f"  renderer JS over {seconds:g} s, share of samples (callees included):")
    for name, value in sorted(share.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * value / total:5.1f}%  {name}")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the app server on kill
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--cpu-windows",
        type=int,
        default=0,
        metavar="N",
        help="only measure what each process uses while the page is live, in N windows of 10 s",
    )
    parser.add_argument(
        "--all-cores",
        action="store_true",
        help="only: how often the page redraws while every core trains",
    )
    parser.add_argument(
        "--only",
        choices=["latency", "throughput"],
        help="measure only 1. (latency) or only 2. (throughput)",
    )
    parser.add_argument(
        "--js-profile",
        action="store_true",
        help="with --cpu-windows: then sample the renderer's JavaScript",
    )
    args = parser.parse_args()
    if args.cpu_windows or args.all_cores:
        print(f"machine: {usable_cores()} cores, load average {os.getloadavg()}")
        if args.all_cores:
            all_cores_busy()
        else:
            page_cpu(args.cpu_windows, 200_000, args.js_profile)
        return
    repeats, rounds, steps = (1, 1, 300) if args.quick else (4, 3, 30000)
    print(f"machine: {usable_cores()} cores, load average {os.getloadavg()}")
    if args.only != "throughput":
        print("1. Start click -> first point on the Graft lab's loss chart (800 steps per run)")
        times = latency(repeats, 800)
        warm = [t for kind, t in times if kind == "warm"]
        print(
            f"   cold {times[0][1]:.2f} s; warm median {statistics.median(warm):.2f} s "
            f"(min {min(warm):.2f}, max {max(warm):.2f})"
        )
    if args.only == "latency":
        return
    print(f"2. Throughput of one Adam#SGD run, {steps} steps, median steps/s per run")
    speeds = throughput(rounds, steps)
    cli = statistics.median(speeds["cli"])
    for key, values in speeds.items():
        med = statistics.median(values)
        print(
            f"   {key:27s} {med:7.1f} steps/s  ({', '.join(f'{v:.0f}' for v in values)})"
            f"  {100 * (med / cli - 1):+.1f}% vs cli"
        )
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
