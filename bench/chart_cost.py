"""What redrawing the Graft lab's four live charts once a second costs the browser, three ways.

    .venv/bin/python bench/chart_cost.py            # ~2 minutes; needs /usr/bin/chromium

The four figures of a live Graft lab (training loss, validation, one layer's norm
trajectories, the heatmap; built by ``grafting_core.lab.figures`` from synthetic runs that
grow by 800 steps a frame up to 30,000) are redrawn every second in headless Chromium:

- ``plotly.js alone``: a static page calls ``Plotly.react`` on four divs (no Streamlit): the
  floor any Plotly-based live page pays;
- ``st.plotly_chart``: a Streamlit fragment with ``run_every=1`` draws them with
  ``st.plotly_chart`` (what the live pages did before ``ui/charts.py``);
- ``charts.show(live=True)``: the same fragment with the app's in-place live chart.

For each it prints the cores used by Chromium's renderer and GPU processes and by the
Streamlit server over 15 s, after 10 s of warm-up. The machine is shared: the load average
is printed with every figure.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from grafting_core.lab.figures import runs as run_figures  # noqa: E402

LAYERS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
RUNS = {"a": "adam", "b": "sgd", "c": "adam#sgd", "d": "sgd#adam"}
PAGE = """<!doctype html><html><head><script src="plotly.min.js"></script></head><body>
<div id="c0"></div><div id="c1"></div><div id="c2"></div><div id="c3"></div><script>
fetch("frames.json").then(r => r.json()).then(frames => {
  let k = 0;
  const draw = () => { frames[k++ % frames.length].forEach((f, i) =>
    Plotly.react("c" + i, f.data, f.layout, {displaylogo: false})); };
  draw(); setInterval(draw, 1000);
});
</script></body></html>"""
APP = """import json, sys, time
import plotly.graph_objects as go
import streamlit as st
sys.path.insert(0, {root!r})
from ui import charts

@st.cache_resource
def frames():
    return [[go.Figure(f) for f in frame] for frame in json.load(open({frames!r}))]

@st.fragment(run_every=1.0)
def panel():
    frame = frames()[int(time.time()) % len(frames())]
    for i, fig in enumerate(frame):
        charts.show(fig, key=f"c{{i}}", live=st.query_params.get("live") == "1")

panel()
"""


def frames(count: int = 25) -> list[list[dict]]:
    """The four live figures of a Graft lab at ``count`` moments of four growing runs."""
    rng = np.random.default_rng(0)
    colors = run_figures.run_colors(list(RUNS))
    out = []
    for k in range(count):
        steps = np.arange(3000 + 800 * k)
        metrics = pd.concat(
            [
                pd.DataFrame(
                    {
                        "run_id": r,
                        "step": steps,
                        "name": "train_loss",
                        "value": 2 * np.exp(-steps / 5000) + 0.1 * rng.random(len(steps)),
                    }
                )
                for r in RUNS
            ]
            + [
                pd.DataFrame(
                    {"run_id": r, "step": steps[::200], "name": "val_accuracy", "value": 0.5}
                )
                for r in RUNS
            ]
        )
        norms = pd.concat(
            [
                pd.DataFrame(
                    {
                        "run_id": r,
                        "step": np.repeat(steps, len(LAYERS)),
                        "layer": np.tile(LAYERS, len(steps)),
                        "field": field,
                        "value": rng.random(len(steps) * len(LAYERS)) + 0.1,
                    }
                )
                for r in RUNS
                for field in ("magnitude_norm", "direction_norm")
            ],
            ignore_index=True,
        )
        layer = norms[norms["layer"] == LAYERS[0]]
        figs = [
            run_figures.metric_curves(
                metrics, metric="train_loss", labels=RUNS, colors=colors, smoothing=0.6, x_max=30000
            ),
            run_figures.metric_curves(
                metrics, metric="val_accuracy", labels=RUNS, colors=colors, x_max=30000
            ),
            run_figures.norm_trajectories(
                layer, layer=LAYERS[0], labels=RUNS, colors=colors, plain=["a", "b"], x_max=30000
            ),
            run_figures.norm_heatmap(
                norms[norms["run_id"] == "c"].drop(columns="run_id"), x_max=30000
            ),
        ]
        out.append([json.loads(f.to_json()) for f in figs])
    return out


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of Chromium's renderer and GPU processes, and of Streamlit."""
    used: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if "chrom" in command and ("type=renderer" in command or "type=gpu" in command):
            kind = "browser"
        elif "streamlit" in command:
            kind = "server"
        else:
            continue
        ticks = int(stat[11]) + int(stat[12])
        used[kind] = used.get(kind, 0.0) + ticks / os.sysconf("SC_CLK_TCK")
    return used


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no line per request
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    print(f"load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "frames.json").write_text(json.dumps(frames()))
        (folder / "index.html").write_text(PAGE)
        shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", folder)
        (folder / "app.py").write_text(
            APP.format(root=str(ROOT), frames=str(folder / "frames.json"))
        )
        handler = functools.partial(QuietHandler, directory=tmp)
        static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=static.serve_forever, daemon=True).start()
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(folder / "app.py"),
                "--server.port",
                str(port),
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(8)
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    headless=True,
                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
                )
                for name, url in (
                    ("plotly.js alone", f"http://127.0.0.1:{static.server_port}/"),
                    ("st.plotly_chart", f"http://127.0.0.1:{port}/?live=0"),
                    ("charts.show(live=True)", f"http://127.0.0.1:{port}/?live=1"),
                ):
                    page = browser.new_page(viewport={"width": 1400, "height": 2000})
                    page.goto(url)
                    time.sleep(10)
                    before, start = cpu_seconds(), time.perf_counter()
                    time.sleep(15)
                    after, seconds = cpu_seconds(), time.perf_counter() - start
                    print(
                        f"  {name:24s} "
                        + ", ".join(
                            f"{kind} {(after[kind] - before.get(kind, 0.0)) / seconds:.2f}"
                            for kind in sorted(after)
                        )
                        + f" cores (load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
                    page.close()
                browser.close()
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            static.shutdown()


if __name__ == "__main__":
    main()
