"""LocalExecutor: as many workers as usable cores; workers never re-run the parent's main
script."""

from __future__ import annotations

import os
import sys
import types

from grafting_core.lab.runs import executor as executor_module
from grafting_core.lab.runs.executor import LocalExecutor, usable_cores


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


def test_usable_cores_follow_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    # A container given 2 of a host's 64 cores must not start 64 torch workers.
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(executor_module, "CGROUP_CPU_MAX", cpu_max)
    assert usable_cores() == 2  # no cgroup file: the affinity
    cpu_max.write_text("max 100000\n")
    assert usable_cores() == 2
    cpu_max.write_text("100000 100000\n")  # a quota of one core
    assert usable_cores() == 1
    cpu_max.write_text("50000 100000\n")  # half a core still gets one worker
    assert usable_cores() == 1
    executor = LocalExecutor(tmp_path)
    assert (executor.max_workers, executor.threads) == (1, 1)
    executor.shutdown()
