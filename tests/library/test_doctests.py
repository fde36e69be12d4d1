"""The examples in the optimizer library's docstrings run and print what they say.

Each module of ``grafting_core/`` (not the lab) with a ``>>>`` example is run by ``doctest``
in empty globals, so every example carries its own imports and can be pasted as it is."""

import doctest
import importlib

import pytest

from tests.helpers import ROOT

LIBRARY = ROOT / "grafting_core"
WITH_EXAMPLES = sorted(p.stem for p in LIBRARY.glob("*.py") if ">>>" in p.read_text())
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_the_library_has_examples_to_run():
    """At least the modules known to carry examples (else the test below runs nothing)."""
    assert {"graft", "layer_kinds"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    # import_module: ``grafting_core.layer_kinds`` the attribute is the function
    module = importlib.import_module(f"grafting_core.{name}")
    results = doctest.testmod(module, globs={}, optionflags=FLAGS, report=True)
    assert results.attempted > 0
    assert results.failed == 0, f"{results.failed} example(s) of {name}.py failed (see above)"
