"""The Graft lab page run by AppTest in a process of its own, for a test that kills it.

    python -m tests.reliability_app STORE_DIR   (from the repository root)

Presses Start with a very long run, prints the ids of the runs it queued (one line) and
sleeps until it is killed: its executor and workers are those of a real server process.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def main(root: str) -> None:
    """Start the page's runs, report their ids, and wait to be killed."""
    os.environ["GRAFTING_RUNS_DIR"] = root
    sys.path.insert(0, str(ROOT))  # pages import the top-level ui package
    at = AppTest.from_file(str(ROOT / "pages" / "graft_lab.py"), default_timeout=120).run()
    at.number_input(key="lab.steps").set_value(10**6)
    at.button(key="lab.start").click().run()
    from grafting_core.lab.store import RunStore

    print(" ".join(RunStore(root).runs()["run_id"]), flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1])
