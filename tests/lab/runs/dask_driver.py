"""A process that drives long runs on Dask workers, for tests that kill it.

    python -m tests.lab.runs.dask_driver STORE_DIR SCHEDULER N_RUNS   (from the repository root)

SCHEDULER is an address, or ``local`` for a LocalCluster of this process's own. Creates
``N_RUNS`` long runs, hands them to the Dask executor, prints one line
``<run ids> | <worker pids>`` and sleeps until it is killed.
"""

from __future__ import annotations

import os
import sys
import time

from grafting_core.lab.runs.dask_executor import DaskExecutor
from grafting_core.lab.runs.runner import create_run
from grafting_core.lab.store.run_store import RunStore
from tests.lab.runs.reliability_parent import LONG  # the same long run as the local parent's


def main(root: str, scheduler: str, runs: int) -> None:
    """Start the runs, report their ids and the workers' pids, and wait to be killed."""
    store = RunStore(root)
    run_ids = [create_run(store, LONG.replace(seed=seed)) for seed in range(runs)]
    executor = DaskExecutor(
        root,
        None if scheduler == "local" else scheduler,
        n_workers=2 if scheduler == "local" else None,
    )
    for run_id in run_ids:
        executor.submit(run_id)
    pids = executor.client.run(os.getpid).values()
    print(" ".join(run_ids), "|", " ".join(map(str, pids)), flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
