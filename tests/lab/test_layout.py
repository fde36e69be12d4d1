"""The house's layout keeps its direction: the lab's folders import only downwards, the
library knows nothing of the lab or the app, and no engine module knows Streamlit."""

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

LAB = ROOT / "grafting_core" / "lab"
FOLDERS = ("tasks", "store", "runs", "experiments", "figures")

#: What each of the lab's folders may import of the lab besides itself.
MAY_IMPORT = {
    "tasks": set(),
    "store": set(),
    "runs": {"tasks", "store"},
    "experiments": {"tasks", "store", "runs"},
    "figures": {"tasks", "store", "runs", "experiments"},
}


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a file imports (absolute names; relative ones resolved from its package)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def lab_folder(module: str) -> str | None:
    """The lab folder a module name lies in (``grafting_core.lab.runs.trainer`` -> runs)."""
    parts = module.split(".")
    if parts[:2] == ["grafting_core", "lab"] and len(parts) > 2:
        return parts[2]
    return None


def test_the_lab_has_its_folders_and_no_loose_modules():
    assert all((LAB / folder / "__init__.py").is_file() for folder in FOLDERS)
    loose = sorted(p.name for p in LAB.glob("*.py") if p.name not in {"__init__.py", "cli.py"})
    assert loose == [], f"modules outside the lab's folders: {loose}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_lab_folder_imports_only_downwards(folder):
    wrong = []
    for path in sorted((LAB / folder).rglob("*.py")):
        for module in imported_modules(path):
            target = lab_folder(module)
            if target and target != folder and target not in MAY_IMPORT[folder]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_the_engine_and_library_know_no_app():
    wrong = []
    for path in sorted((ROOT / "grafting_core").rglob("*.py")):
        for module in imported_modules(path):
            if module.split(".")[0] in {"ui", "pages", "streamlit", "app"}:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_the_library_does_not_import_the_lab():
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / "grafting_core").glob("*.py"))
        if path.name != "__main__.py"  # the command line: the lab's CLI, when installed
        for module in imported_modules(path)
        if module.startswith("grafting_core.lab")
    ]
    assert wrong == []


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The direction checks above are not vacuous: an upward import is found."""
    fake = tmp_path / "grafting_core" / "lab" / "store" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "from grafting_core.lab.experiments.verdict import closer_to\nfrom . import x\n"
    )
    modules = imported_modules(fake, tmp_path)
    assert "grafting_core.lab.experiments.verdict" in modules
    assert "grafting_core.lab.store.x" in modules
    assert lab_folder("grafting_core.lab.experiments.verdict") == "experiments"


#: What only the engine writes: a page or ui module that calls one of these writes the store
#: around the engine's actions.
STORE_WRITES = ("create_run", "record_runs", "put_artifact", "set_status", "set_group_request")
STORE_WRITES += ("set_role", "request_stop", "execute_run")


def app_files() -> list[Path]:
    return sorted([*(ROOT / "pages").glob("*.py"), *(ROOT / "ui").glob("*.py"), ROOT / "app.py"])


def test_pages_stay_small():
    long = {
        p.name: n
        for p in (ROOT / "pages").glob("*.py")
        if (n := len(p.read_text().splitlines())) > 350
    }
    assert long == {}


def test_pages_and_ui_write_the_store_only_through_the_engines_actions():
    wrong = []
    for path in app_files():
        for node in ast.walk(ast.parse(path.read_text())):
            name = (
                node.attr
                if isinstance(node, ast.Attribute)
                else node.id
                if isinstance(node, ast.Name)
                else None
            )
            if name in STORE_WRITES:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert wrong == []
