"""A process that owns a LocalExecutor training long runs, for tests that kill it.

    python -m tests.lab.runs.reliability_parent STORE_DIR N_RUNS   (from the repository root)

Creates ``N_RUNS`` long runs, hands them to one worker each, prints their ids (one line,
space-separated) and sleeps until it is killed.
"""

from __future__ import annotations

import sys
import time

from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import LocalExecutor
from grafting_core.lab.runs.runner import create_run
from grafting_core.lab.store.run_store import RunStore

LONG = RunConfig(
    dataset="mnist1d",
    width=32,
    steps=10**6,
    batch_size=32,
    eval_every=10**6,
    eval_examples=200,
    log_every=10,
    flush_seconds=0.0,
)


def main(root: str, runs: int) -> None:
    """Start the runs, report their ids, and wait to be killed."""
    store = RunStore(root)
    run_ids = [create_run(store, LONG.replace(seed=seed)) for seed in range(runs)]
    executor = LocalExecutor(root, max_workers=runs)
    for run_id in run_ids:
        executor.submit(run_id)
    print(" ".join(run_ids), flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
