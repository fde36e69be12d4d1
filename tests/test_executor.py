"""LocalExecutor's worker start-up: workers never re-run the parent's main script."""

from __future__ import annotations

import os
import sys
import types

from grafting_core.lab.executor import LocalExecutor


def test_workers_do_not_rerun_the_parents_main_script(tmp_path, monkeypatch):
    # Streamlit (and AppTest) execute the page as __main__; spawn would re-run that file in
    # every new worker before its task. The executor must start workers without it.
    marker = tmp_path / "main-ran"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    page = types.ModuleType("__main__")
    page.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", page)
    executor = LocalExecutor(tmp_path, max_workers=1)
    try:
        (warm,) = executor.warm_up(datasets=())
        assert warm.result(timeout=120) != os.getpid()  # ran in a worker process
    finally:
        executor.shutdown()
    assert sys.modules["__main__"] is page  # restored after the worker started
    assert not marker.exists()
