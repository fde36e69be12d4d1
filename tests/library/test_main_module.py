"""``python -m grafting_core`` on a library-only install: without the lab's extras it names the
extra to install and exits with status 2; with them it is the lab's command line."""

import subprocess
import sys
import tomllib

import grafting_core.__main__ as entry
from tests.helpers import ROOT


def _run_blocking(blocked: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m grafting_core ARGS`` in a fresh interpreter where ``import <blocked>``
    fails as it does when the package is not installed."""
    code = (
        "import runpy, sys\n"
        f"sys.modules[{blocked!r}] = None  # import raises ModuleNotFoundError(name=...)\n"
        f"sys.argv = ['grafting_core', *{list(args)!r}]\n"
        "runpy.run_module('grafting_core', run_name='__main__', alter_sys=True)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_without_the_lab_extras_it_names_the_extra_and_exits_2():
    done = _run_blocking("pandas", "--help")
    assert done.returncode == 2, done.stderr
    assert "pip install 'grafting-core[lab]'" in done.stderr
    assert "missing here: pandas" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_missing_module_of_the_project_itself_is_not_taken_for_an_extra():
    done = _run_blocking("grafting_core.lab.cli", "--help")
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr
    assert "grafting-core[lab]" not in done.stderr


def test_the_extra_it_names_is_the_projects():
    """The message names an extra that pyproject.toml declares, under the project's name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = entry.LAB_INSTALL.partition("[")[2].partition("]")[0]
    assert extra in project["optional-dependencies"]
    assert entry.LAB_INSTALL == f"pip install '{project['name']}[{extra}]'"


def test_with_the_extras_it_is_the_lab_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "grafting_core", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
