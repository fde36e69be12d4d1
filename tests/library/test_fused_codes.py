"""The fused kernels' op, guard and rule codes are written twice, in ``grafting_core/fused.py``
and in ``grafting_core/fused_kernels.c``: read both sources and check they agree (no compiler
needed), so a code added or reordered on one side only fails here, not as wrong arithmetic."""

import ast
import ctypes
import re
from pathlib import Path

import pytest

from grafting_core import fused
from tests.helpers import ROOT

LIBRARY = ROOT / "grafting_core"
C_SOURCE = (LIBRARY / "fused_kernels.c").read_text()
#: C enum constants with no Python twin: the kernels' own block and segment sizes.
C_ONLY = {"BLOCK", "SOLO"}


def c_enums(source: str) -> dict[str, int]:
    """Every ``enum { A, B = 5, C }`` constant of a C source, with its value (C's rules: one
    more than the previous, from 0)."""
    source = re.sub(r"/\*.*?\*/|//[^\n]*", " ", source, flags=re.S)
    constants = {}
    for body in re.findall(r"\benum\s*\{([^}]*)\}", source):
        value = -1
        for item in filter(None, (x.strip() for x in body.split(","))):
            name, _, given = (part.strip() for part in item.partition("="))
            value = int(given, 0) if given else value + 1
            assert name not in constants, f"{name} in two enums"
            constants[name] = value
    return constants


def python_codes(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """A Python module's codes numbered with ``A, B, C = range(n)`` (or ``(A, B) = range(n)``),
    and its other constants set to a number (``NCOEF = 10``)."""
    numbered, numbers = {}, {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign):
            continue
        target, value = node.targets[0], node.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            if type(value.value) is int:
                numbers[target.id] = value.value
        elif (
            isinstance(target, ast.Tuple)
            and isinstance(value, ast.Call)
            and ast.unparse(value.func) == "range"
        ):
            names = [element.id for element in target.elts]
            (count,) = (ast.literal_eval(a) for a in value.args)
            assert len(names) == count, f"{names} = range({count})"
            numbered.update({name: i for i, name in enumerate(names)})
    return numbered, numbers


def mismatches(c: dict[str, int], numbered: dict[str, int], numbers: dict[str, int]) -> list[str]:
    """Each C constant (C_ONLY aside) that Python has not with the same value, and each code
    Python numbers that the C file lacks."""
    python = {**numbers, **numbered}
    found = [
        f"{n}: C {c[n]}, Python {python.get(n)}"
        for n in c
        if n not in C_ONLY and c[n] != python.get(n)
    ]
    return found + [
        f"{n}: Python {v}, not in the C file" for n, v in numbered.items() if n not in c
    ]


def test_the_readers_find_every_code():
    c, (python, numbers) = c_enums(C_SOURCE), python_codes(LIBRARY / "fused.py")
    ops = ("SUMSQ_COPY", "DIFF_SUMSQ_RESTORE", "DIFF_SUMSQ", "BLEND", "PROPOSE", "APPLY")
    kinds = ("PLAIN", "MOMENTUM", "ADAM", "ADAGRAD", "RMSPROP", "SIGN", "SIGN_MOMENTUM", "LION")
    for name in (*ops, *kinds, "ZERO_IF", "PROPOSE_M", "PROPOSE_D", "SUMSQ", "SKIP_NONFINITE"):
        assert name in c and name in python
    assert c["NCOEF"] == numbers["NCOEF"] == 10 and c["LION"] == 8 and python["SUMSQ"] == 9


def test_c_and_python_codes_are_equal():
    """Ops, guard modes and rule kinds: the same names with the same numbers on both sides,
    and the module's constants are the ones read from its source."""
    c, (numbered, numbers) = c_enums(C_SOURCE), python_codes(LIBRARY / "fused.py")
    assert mismatches(c, numbered, numbers) == []
    assert {n: getattr(fused, n) for n in numbered} == numbered
    assert fused.NCOEF == c["NCOEF"]


def test_a_code_changed_on_one_side_is_caught():
    """The comparison fails when the C file numbers the rule kinds differently."""
    swapped = C_SOURCE.replace("enum { PLAIN, MOMENTUM,", "enum { MOMENTUM, PLAIN,", 1)
    assert swapped != C_SOURCE
    assert mismatches(c_enums(swapped), *python_codes(LIBRARY / "fused.py")) == [
        "MOMENTUM: C 0, Python 1",
        "PLAIN: C 1, Python 0",
    ]
    assert c_enums("enum { A = 3, B, C = 0x10, D }; /* enum { X } */") == {
        "A": 3,
        "B": 4,
        "C": 16,
        "D": 17,
    }


def test_the_kernels_in_apply_are_lions_in_both():
    """``IN_APPLY(K)`` of the C file: the kinds whose state advances in the apply pass."""
    (body,) = re.findall(r"#define IN_APPLY\(K\)\s*(.+)", C_SOURCE)
    kinds = re.findall(r"\(K\) == (\w+)", body)
    assert tuple(getattr(fused, k) for k in kinds) == fused.IN_APPLY_KINDS


def test_the_coefficient_rows_and_the_chunk_size_agree():
    """A row of coefficients is NCOEF numbers, the C struct Coef's fields; CHUNK reaches the
    C file only from the compiler flags fused.py gives it."""
    (coef,) = re.findall(r"typedef struct \{([^}]*)\} F\(Coef\);", C_SOURCE)
    coef = re.sub(r"/\*.*?\*/", " ", coef, flags=re.S)
    fields = [f.strip() for line in coef.split(";") for f in line.replace("REAL", "").split(",")]
    assert len([f for f in fields if f]) == fused.NCOEF
    assert f"-DCHUNK={fused.CHUNK}" in fused._FLAGS
    assert not re.search(r"#define\s+CHUNK\b", C_SOURCE)


C_TYPES = {
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
}


def test_the_task_struct_is_laid_out_alike():
    """fused._Task (ctypes) has the C Task's fields in its order, with matching types:
    ints as ints, pointers as pointers, the six pointer tables as an array of six."""
    (body,) = re.findall(r"typedef struct \{(.*?)\} Task;", C_SOURCE, flags=re.S)
    body = re.sub(r"/\*.*?\*/", " ", body, flags=re.S)
    c_fields = []
    for declaration in filter(None, (d.strip() for d in body.split(";"))):
        words = declaration.split()
        base = next(w for w in words if w in ("int", "int64_t", "void", "double"))
        rest = declaration.split(base, 1)[1]
        for name in rest.split(","):
            name = name.strip()
            pointer = "*" in name
            match = re.fullmatch(r"(?:\*|\s|const\b)*(\w+)(?:\[(\d+)\])?", name)
            assert match, name
            kind = "pointer" if pointer else base
            c_fields.append((match[1], kind, int(match[2]) if match[2] else None))
    python = fused._Task._fields_
    assert [name for name, _, _ in c_fields] == [name for name, _ in python]
    for (name, kind, length), (_, ctype) in zip(c_fields, python):
        if length is not None:
            assert ctype._length_ == length and ctype._type_ is ctypes.c_void_p, name
        elif kind == "pointer":
            assert ctype is ctypes.c_void_p, name
        else:
            assert ctype is C_TYPES[kind], name


@pytest.mark.skipif(not fused.available(), reason="no C compiler")
def test_the_built_kernels_agree_with_the_codes():
    """The library built from the source read here exports the entry points fused.py calls."""
    assert fused._SOURCE == LIBRARY / "fused_kernels.c"
    for tag in fused._DTYPES.values():
        assert hasattr(fused._library, f"graft_pass_{tag}")
