"""Every notebook in notebooks/ runs top to bottom at small settings and is kept without outputs.

The notebooks read ``GRAFTING_QUICK=1`` (tiny runs), ``GRAFTING_NOTEBOOK_RUNS`` (their run
store) and ``GRAFTING_NOTEBOOK_OUT`` (exported files) from the environment; here they point
into the test's temporary directory. The kernel is this interpreter (the venv with torch),
whatever kernelspecs are installed elsewhere.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from tests.helpers import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_grafting_grid",
    "02_implicit_schedules",
    "03_static_ratios",
    "04_graft_in_your_training_loop",
    "05_grafting_in_2d",
]
CELL_TIMEOUT_S = 600  # one cell at quick settings takes seconds; this only catches a hang
CLEAR_HINT = "clear them: jupyter nbconvert --clear-output --inplace notebooks/*.ipynb"


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose kernel is ``sys.executable`` (never a system python)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "grafting-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "grafting test kernel",
                "language": "python",
            }
        )
    )
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="grafting-test", kernel_spec_manager=specs)


def assert_handout_keeps_every_figure(nb, path: Path, out: Path) -> None:
    """``jupyter nbconvert --to html`` of the executed notebook draws every plotly figure it
    shows, offline: each figure output carries HTML next to plotly's JSON (an output with
    the JSON alone vanishes from the export), and plotly.js is inlined, not fetched."""
    from nbconvert import HTMLExporter

    figures = [
        output
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if "application/vnd.plotly.v1+json" in output.get("data", {})
    ]
    assert figures, f"{path.name} shows no plotly figure"
    html, _ = HTMLExporter().from_notebook_node(nb)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{path.stem}.html").write_text(html)
    drawn = html.count('class="plotly-graph-div"')
    assert drawn == len(figures), f"{path.name}: {drawn} of {len(figures)} figures in the HTML"
    assert "window.Plotly = Plotly" in html  # plotly.js inlined once: opens offline
    assert '<script src="https://cdn.plot.ly' not in html


def test_every_planned_notebook_exists():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; {CLEAR_HINT}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_opens_with_purpose_runtime_seed_and_quick_switch(path):
    nb = nbformat.read(path, as_version=4)
    first_code = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert nb.cells[0].cell_type == "markdown" and "runtime" in nb.cells[0].source.lower()
    assert "manual_seed" in first_code.source
    assert 'os.environ.get("GRAFTING_QUICK") == "1"' in first_code.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom_at_quick_settings(path, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {
        **os.environ,
        "GRAFTING_QUICK": "1",
        "GRAFTING_NOTEBOOK_RUNS": str(tmp_path / "runs"),
        "GRAFTING_NOTEBOOK_OUT": str(tmp_path / "out"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
    }  # like conftest: no thread spinning against other jobs
    km = _kernel_manager(tmp_path)
    client = NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    try:
        client.execute(env=env)  # raises CellExecutionError with the cell and traceback
    finally:  # a kernel manager we pass in is ours to stop: nbclient leaves its kernel running
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    errors = [
        o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    assert_handout_keeps_every_figure(
        nb, path, Path(os.environ.get("GRAFTING_HANDOUT_DIR") or tmp_path)
    )
    if any("RunStore(RUNS_DIR)" in cell.source for cell in nb.cells):
        assert (tmp_path / "runs" / "runs.sqlite").exists(), "runs must go to the given store"
