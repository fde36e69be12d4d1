"""bench/step.py runs end to end on a small model and prints its table and ratios."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_benchmark_quick_run_prints_ratios():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "step.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for path in ("torch Adam fused", "torch SGD-m foreach", "Graft native fused",
                 "Graft black-box (reference)"):
        assert path in out
    ratios = [line for line in out.splitlines() if line.startswith("ratio ")]
    assert len(ratios) == 8  # four Graft paths over two sums of torch steps
    assert any("Graft native fused / (Adam + SGD-m fused)" in r and "target <= 1.5" in r
               for r in ratios)
    assert any("Graft black-box fused / (Adam + SGD-m fused)" in r and "target <= 2.5" in r
               for r in ratios)
