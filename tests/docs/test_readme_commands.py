"""The command lines of the README and of its reference pages (``docs/*.md``) run as printed
from a clean clone (the tracked files only; the clone's ``.venv`` sees this checkout's
packages and the clone's own code, as ``./tasks setup`` would have left it), and
``repr(Graft)`` says what is grafted."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grafting_core import Graft
from tests.helpers import ROOT

#: The README and its reference pages, read as one text.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = "\n".join(page.read_text() for page in PAGES)
#: What a README command may start with: everything goes through ./tasks (which sets up .venv
#: first), except the library-only install in a venv of its own and Dask on other machines.
ALLOWED = ("./tasks ", "GRAFTING_QUICK=1 ./tasks ", "GRAFTING_RUNS_DIR=", "python3 -m venv ",
           "graft-env/bin/", "dask ")  # fmt: skip


def commands() -> list[str]:
    """Every command line of the ```bash blocks of the README and docs/, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def printed(start: str) -> str:
    """The one command line of the README and docs/ that starts with ``start``, as printed."""
    found = [c for c in commands() if c.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The tracked files as they are now, in a fresh folder, with this checkout's venv."""
    out = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source, target = ROOT / name.decode(), out / name.decode()
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    _venv_over(out / ".venv", out)
    return out


def _venv_over(venv: Path, root: Path) -> None:
    """A venv for the clone that sees this interpreter's packages and the clone's own code,
    its ``./tasks`` stamp current, so ``./tasks`` in the clone installs nothing. (It once
    shared this checkout's venv: a ``./tasks`` whose stamp was stale then re-pointed that
    venv's editable install at the clone, which the test then deleted.)"""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    packages = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    # the clone's code first; this venv's packages after, their .pth files left out (this
    # checkout's editable install among them: it would import this checkout's code)
    (site / "clone.pth").write_text(f"{root}\n{packages}\n")
    for script in Path(sys.prefix, "bin").iterdir():  # console scripts: torchrun, streamlit...
        mine = venv / "bin" / script.name
        head, _, body = script.read_bytes().partition(b"\n") if script.is_file() else (b"",) * 3
        if not mine.exists() and head.startswith(b"#!") and b"python" in head:
            mine.write_bytes(f"#!{venv / 'bin' / 'python'}\n".encode() + body)
            mine.chmod(0o755)
    parts = ("requirements.txt", "requirements-dev.txt", "pyproject.toml")
    text = b"".join((root / part).read_bytes() for part in parts)
    (venv / ".requirements.sha").write_text(hashlib.sha256(text).hexdigest() + "\n")


def run(line: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    words = shlex.split(line)
    assigned = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, _, value = words.pop(0).partition("=")
        assigned[key] = value
    full = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        # ./tasks registers a Jupyter kernel: in the clone's folder, not the user's
        "JUPYTER_DATA_DIR": str(cwd / ".jupyter"),
        **assigned,
        **env,
    }
    full.pop("VIRTUAL_ENV", None)
    return subprocess.run(words, cwd=cwd, env=full, capture_output=True, text=True, timeout=600)


def test_every_readme_command_runs_from_a_clone_without_activating_a_venv():
    found = commands()
    assert len(found) > 15
    bare = [c for c in found if not c.startswith(ALLOWED)]
    assert not bare, f"commands that need an activated venv or a set-up machine: {bare}"


def test_an_example_runs_via_its_printed_command(clone):
    line = printed("./tasks python examples/factory_graft.py")
    done = run(line, clone)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_cli_runs_via_its_printed_command(clone, tmp_path):
    line = printed("./tasks python -m grafting_core runs list")
    done = run(line, clone, GRAFTING_RUNS_DIR=str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_the_distributed_example_runs_via_its_printed_command(clone):
    line = printed("./tasks torchrun --nproc-per-node 2 examples/ddp_fsdp_graft.py")
    done = run(line, clone)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_the_library_installs_alone_with_the_cpu_torch_in_a_fresh_venv(clone):
    """The README's four library-install lines, in order, in the clone (about a minute from
    the local wheel mirror): CPU torch 2.13.0, no CUDA packages, and Graft's repr prints."""
    block = next(
        b for b in re.findall(r"```bash\n(.*?)```", README, flags=re.S) if "graft-env" in b
    )
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    for line in filter(None, lines):
        done = run(line, clone)
        assert done.returncode == 0, (line, done.stderr[-2000:])
    assert "Graft(M=adam(" in done.stdout and "D=sgd(" in done.stdout
    listed = run("graft-env/bin/pip list --format=freeze", clone).stdout.lower()
    assert "torch==2.13.0" in listed
    assert "nvidia" not in listed and "triton" not in listed, listed


def test_every_relative_link_of_the_readme_and_docs_names_a_file_that_exists():
    """Links and pictures between the README, docs/ and the tree (anchors dropped) resolve."""
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"^[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_graft_repr_names_both_children_their_hyperparameters_granularity_and_grafting():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    graft = Graft(
        model.named_parameters(),
        ("adam", {"lr": 1e-3}),
        ("sgd", {"lr": 0.1, "momentum": 0.9}),
        granularity="module",
    )
    text = repr(graft)
    assert "M=adam(lr=0.001" in text and "betas=(0.9, 0.999)" in text
    assert "D=sgd(lr=0.1" in text and "momentum=0.9" in text
    assert "granularity='module'" in text and "grafted=all 2 layers" in text
    assert str(graft) == text
    partial = Graft(
        model.named_parameters(), "adam", torch.optim.SGD(model.parameters(), lr=0.1),
        grafted=lambda name: name.startswith("0."),
    )  # fmt: skip
    assert "D=SGD(lr=0.1" in repr(partial) and "grafted=2 of 4 layers" in repr(partial)
