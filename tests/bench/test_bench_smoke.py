"""Benchmarks stay runnable: bench/step.py and bench/step_overhead.py end to end on a small
model; bench/device_check.py on the CPU, and its parity check fails when Graft is wrong;
bench/chart_cost.py
builds the live figures it redraws; bench/compare_wall.py times a tiny comparison;
bench/dask_grid.py times a tiny grid on both executors and one streamed run."""

import importlib.util
import json
import os
import subprocess
import sys

import torch

from tests.helpers import ROOT


def _bench(script: str, *args: str, timeout: float = 300, **options) -> str:
    """Run ``bench/<script>`` with ``args`` from the repository root; its stdout."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **options,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_step_benchmark_quick_run_prints_ratios():
    out = _bench("step.py", "--quick")
    for path in (
        "torch Adam fused",
        "torch SGD-m foreach",
        "Graft native, default",
        "Graft black-box, reference",
    ):
        assert path in out
    assert "backends: Graft native, default: reference" in out  # a small model: no kernels
    for regime in ("back to back", "from memory"):
        ratios = [line for line in out.splitlines() if line.startswith(f"ratio [{regime}] ")]
        assert len(ratios) == 10  # five Graft paths over two sums of torch steps
        assert any(
            "Graft native, default / (Adam + SGD-m fused)" in r and "target <= 1.0" in r
            for r in ratios
        )
        assert any(
            "Graft black-box, default / (Adam + SGD-m fused)" in r and "target <= 2.0" in r
            for r in ratios
        )
        pairs = out.split(f"other rule pairs, {regime}")[1].splitlines()[1:6]
        assert [line.split(":")[0] for line in pairs] == [
            "adagrad#rmsprop-m",
            "adamw#nesterov",
            "lion#signum",
            "lamb#sgd-m",
            "sgd-m#lars",
        ]


def test_from_memory_regime_reads_the_flush_buffer_before_every_timed_step():
    step = _load("step")
    reads = []
    before = step.regimes(1)
    assert list(before) == ["back to back", "from memory"] and step.regimes(0).keys() == {
        "back to back"
    }
    opts = {"a": torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)}
    times = step.time_steps(opts, rounds=3, per_round=2, prepare=lambda: reads.append(1))
    assert len(times["a"]) == len(reads) == 6  # once per timed step, not in the warm-up


def _load(script: str):
    spec = importlib.util.spec_from_file_location(script, ROOT / "bench" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_on_the_cpu_passes_every_case_and_times_the_paths():
    out = _bench("device_check.py", "--device", "cpu", "--quick")
    device_check = _load("device_check")
    cases = [*device_check.CASES, "adam#adam vs torch Adam"]
    for dtype in ("float64", "float32"):
        for case in cases:
            assert f"parity {case} [{dtype}]: weights" in out and "FAILED" not in out
    assert "all checks ok" in out
    assert "ratio Graft native, default / (Adam + SGD-m fused)" in out


def test_device_check_fails_a_graft_that_steps_wrong(monkeypatch):
    """The device side (Graft as a user writes it, no ``fused=``) taking 1.5× its step must
    fail every case against the reference; A#A against torch's Adam is untouched."""
    device_check = _load("device_check")
    build = device_check.build

    def wrong(case, model, **options):
        opt = build(case, model, **options)
        if not options:
            opt.param_groups[0]["lr"] *= 1.5
        return opt

    monkeypatch.setattr(device_check, "build", wrong)
    failed = device_check.check_parity(torch.device("cpu"), [torch.float64])
    assert [line.split(" [")[0].removeprefix("parity ") for line in failed] == list(
        device_check.CASES
    )


def test_step_overhead_quick_run_takes_every_measure():
    out = _bench("step_overhead.py", "--quick", "--threads", "1")
    assert out.count("Graft: kernel passes") == 2  # the model, then the same tensors in cache
    for measure in ("first small op after a kernel pass", "propose, guarded", "the scan alone"):
        assert measure in out


def test_chart_cost_builds_the_four_live_figures_of_a_growing_group():
    chart_cost = _load("chart_cost")
    frames = chart_cost.frames(count=2)
    assert len(frames) == 2 and all(len(frame) == 4 for frame in frames)
    loss, _, norms, heat = frames[1]
    assert [t["name"] for t in loss["data"]] == list(chart_cost.RUNS.values())
    assert heat["data"][0]["type"] == "heatmap" and len(norms["data"]) == 8
    assert len(json.dumps(frames[1])) > len(json.dumps(frames[0]))  # the runs grow


def test_checkpoint_cost_measures_a_step_and_a_checkpoint():
    checkpoint_cost = _load("checkpoint_cost")
    step_s, checkpoint_s, size = checkpoint_cost.measure("mnist1d", 32, steps=40, repeats=3)
    assert step_s > 0 and checkpoint_s > 0
    assert size > 4 * 15_000  # the MLP's weights and Adam's two moments, as float32


def test_compare_wall_benchmark_quick_run_times_each_worker_count():
    out = _bench("compare_wall.py", "--quick", "--dataset", "digits", timeout=600)
    lines = [line for line in out.splitlines() if line.startswith("workers ")]
    assert [line.split(":")[0] for line in lines] == ["workers 1", "workers 2"]
    assert all("for 6 runs" in line for line in lines)  # 2 × 2 lrs × 1 seed + 2 grafts


def test_dask_grid_benchmark_quick_run_times_both_executors_and_the_stream():
    out = _bench(
        "dask_grid.py", "--quick", timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert "round 1 local:" in out and "round 1 dask:" in out and "dask/local" in out
    assert "streaming one run (20 steps):" in out and "driver writing" in out
