"""What one redraw of the Graft lab costs the server, for a group of long runs.

    .venv/bin/python bench/redraw.py              # 4 runs x 30,000 steps, ~1 minute
    .venv/bin/python bench/redraw.py --steps 3000

Fills a temporary store with four "running" runs (random losses and per-layer norms of the
default MLP's six tensors, every step), renders ``pages/graft_lab.py`` on that group with
Streamlit's ``AppTest`` (the page's script only: no browser) and prints the median wall time
of a full rerun, and the time spent in the functions that read and draw, per rerun.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from grafting_core.lab.experiments.common import new_group  # noqa: E402
from grafting_core.lab.figures import runs as run_figures  # noqa: E402
from grafting_core.lab.runs.config import RunConfig  # noqa: E402
from grafting_core.lab.runs.runner import create_run  # noqa: E402
from grafting_core.lab.store.run_store import RunStore  # noqa: E402

LAYERS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
FIELDS = ["magnitude_norm", "direction_norm", "step_norm", "grad_norm", "weight_norm"]


def fill(store: RunStore, steps: int) -> str:
    """A lab group of four running runs with every step's metrics and norms; its id."""
    rng = np.random.default_rng(0)
    group = new_group("lab")
    step = np.arange(steps)
    for name, direction in (("adam", ""), ("sgd", ""), ("adam#sgd", "sgd"), ("sgd#adam", "adam")):
        config = RunConfig(
            steps=steps, magnitude=name.split("#")[0], direction=direction, name=name
        )
        run_id = create_run(store, config, kind="lab", group=group)
        loss = 2 * np.exp(-step / 5000) + 0.1 * rng.random(steps)
        store.log_metrics_many(
            run_id,
            [(int(s), "train_loss", float(v)) for s, v in zip(step, loss)]
            + [(int(s), "val_accuracy", 0.5) for s in step[::200]],
        )
        store.log_layer_norms(
            run_id,
            step.tolist(),
            LAYERS,
            FIELDS,
            rng.random((steps, len(LAYERS), len(FIELDS))) + 0.1,
        )
        store.set_status(run_id, "running", step=steps // 2)
    return group


def timed(totals: collections.Counter, owner, name: str) -> None:
    """Wrap ``owner.name`` to add its wall time to ``totals``."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[f"{owner.__name__}.{name}"] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--reruns", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        os.environ["GRAFTING_RUNS_DIR"] = root
        store = RunStore(root)
        group = fill(store, args.steps)
        from streamlit.testing.v1 import AppTest

        from ui import live

        totals: collections.Counter = collections.Counter()
        for name in ("metric_curves", "norm_trajectories", "norm_heatmap"):
            timed(totals, run_figures, name)
        for name in ("group_runs", "poll_metrics", "poll_norms"):
            timed(totals, live, name)
        page = AppTest.from_file(str(ROOT / "pages" / "graft_lab.py"), default_timeout=300)
        page.query_params["group"] = group
        page.run()  # the first run reads everything once
        totals.clear()
        took = []
        for _ in range(args.reruns):
            start = time.perf_counter()
            page.run()
            took.append(time.perf_counter() - start)
        assert not page.exception, page.exception
        print(
            f"4 runs x {args.steps} steps: a rerun of the Graft lab takes "
            f"{statistics.median(took):.2f} s (median of {args.reruns})"
        )
        for name, seconds in totals.most_common():
            print(f"  {name:28s} {1000 * seconds / args.reruns:7.1f} ms per rerun")
        store.close()


if __name__ == "__main__":
    main()
