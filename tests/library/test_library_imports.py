"""How the optimizer library's modules import each other (read from their source with ``ast``):
no import cycle, so each module can be read, tested and replaced from the bottom up
(DESIGN.md §3, §6)."""

import ast
from pathlib import Path

from tests.helpers import ROOT

LIBRARY = ROOT / "grafting_core"
PACKAGE = "grafting_core"


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The library modules ``path`` imports anywhere in its source (at the top, inside a
    function, under ``if TYPE_CHECKING``), the lab's left out."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative to the package (the library is one flat package)
                base = PACKAGE if not node.module else f"{PACKAGE}.{node.module}"
            else:
                base = node.module or ""
            # ``from . import fused``: a module; ``from .core import Proposal``: a name in one
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:  # grafting_core.x.y -> grafting_core.x
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(_module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the library modules it imports, for every ``grafting_core/*.py``."""
    paths = sorted(LIBRARY.glob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_must():
    """The reader of imports finds relative, absolute and in-function imports (else an empty
    graph would pass the test below)."""
    graph = import_graph()
    assert {"grafting_core.reference", "grafting_core.dtensor"} <= graph["grafting_core.sharded"]
    assert "grafting_core.fused" in graph["grafting_core.graft"]  # from . import fused as ...
    assert "grafting_core.dtensor" in graph["grafting_core.native"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_takes_part_in_an_import_cycle():
    assert cycles(import_graph()) == []


def test_dtensor_helpers_are_a_leaf_importing_torch_only():
    """native.py and sharded.py both take the DTensor helpers from dtensor.py, which imports
    no other module of the library."""
    assert import_graph()["grafting_core.dtensor"] == set()
    tree = ast.parse((LIBRARY / "dtensor.py").read_text())
    roots = {
        alias.name.partition(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").partition(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert roots <= {"__future__", "sys", "dataclasses", "typing", "torch"}
