"""Tests for grafting_core.lab.tasks.custom: the example loads; each bad spec is a clear error."""

import sys
import textwrap

import pytest
import torch

from grafting_core.lab.tasks.custom import load_custom, parse_spec
from grafting_core.lab.tasks.data import Dataset
from grafting_core.lab.tasks.models import loss_fn
from tests.helpers import ROOT

EXAMPLE = ROOT / "examples" / "custom_task.py"


GOOD_TASK = """
    import torch
    from torch import nn
    from grafting_core.lab.tasks.data import Dataset

    def build(n=16, classes=3):
        x = torch.randn(n, 4)
        y = torch.arange(n) % classes
        ds = Dataset("tiny", "classification", x, y, x, y, (4,), classes)
        return nn.Linear(4, classes), ds

    def wrong_pair():
        return nn.Linear(4, 3)

    def wrong_model():
        return "model", build()[1]

    def wrong_dataset():
        return nn.Linear(4, 3), {"x": 1}

    def misfit():
        return nn.Linear(5, 3), build()[1]

    def too_many_classes():
        return nn.Linear(4, 7), build()[1]

    not_a_function = 42
"""


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "tiny_task.py"
    path.write_text(textwrap.dedent(GOOD_TASK))
    return path


def test_example_loads_and_trains():
    model, ds = load_custom(f"{EXAMPLE}:sine_task", n_train=256, n_val=64)
    assert isinstance(ds, Dataset) and ds.task == "regression" and len(ds.x_train) == 256
    assert [n for n, _ in model.named_parameters() if n.endswith("weight")] == [
        "hidden1.weight", "hidden2.weight", "out.weight"
    ]  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lossf = loss_fn(ds.task)
    losses = []
    for step in range(150):
        x, y = ds.batch("train", 64, step=step, seed=0)
        loss = lossf(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_example_is_seeded_and_takes_kwargs():
    m1, d1 = load_custom(f"{EXAMPLE}:sine_task", seed=3, width=8)
    m2, d2 = load_custom(f"{EXAMPLE}:sine_task", seed=3, width=8)
    assert torch.equal(d1.x_train, d2.x_train)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert m1.hidden1.out_features == 8


def test_relative_file_path_and_module_spec(task_file, monkeypatch):
    monkeypatch.chdir(task_file.parent)
    model, ds = load_custom("tiny_task.py:build", n=10)
    assert len(ds.x_train) == 10
    monkeypatch.syspath_prepend(str(task_file.parent))
    model, ds = load_custom("tiny_task:build", classes=4)
    assert ds.output_dim == 4 and model.out_features == 4
    sys.modules.pop("tiny_task", None)


def test_parse_spec():
    assert parse_spec("pkg.mod:fn") == ("pkg.mod", "fn")
    assert parse_spec(r"C:\tasks\t.py:fn") == (r"C:\tasks\t.py", "fn")  # Windows drive letter


@pytest.mark.parametrize(
    "spec,error,message",
    [
        ("no_colon", ValueError, "Invalid custom task spec 'no_colon'"),
        (":fn", ValueError, "Invalid custom task spec"),
        ("mod:", ValueError, "Invalid custom task spec"),
        ("mod:not-a-name", ValueError, "Invalid function name 'not-a-name'"),
        ("no_such_module_xyz:fn", ValueError, "module not found: 'no_such_module_xyz'"),
        ("missing/file.py:fn", ValueError, "file not found: 'missing/file.py'"),
    ],
)
def test_bad_specs(spec, error, message):
    with pytest.raises(error, match=message):
        load_custom(spec)


def test_spec_must_be_a_string():
    with pytest.raises(TypeError, match="must be a str"):
        load_custom(42)


@pytest.mark.parametrize(
    "func,error,message",
    [
        (
            "nope",
            ValueError,
            "Function 'nope' not found.*it defines: build, misfit, too_many",
        ),
        ("not_a_function", TypeError, "'not_a_function'.* is not callable: 42"),
        ("wrong_pair", TypeError, "must return a \\(model, dataset\\) pair; got Linear"),
        ("wrong_model", TypeError, "returned a str as model; expected torch.nn.Module"),
        ("wrong_dataset", TypeError, "returned a dict as dataset; expected .*Dataset"),
        ("misfit", ValueError, "fails on a batch of its dataset \\(x \\(2, 4\\)"),
        ("too_many_classes", ValueError, "outputs 7 scores per example.*output_dim 3"),
    ],
)
def test_bad_task_functions(task_file, func, error, message):
    with pytest.raises(error, match=message):
        load_custom(f"{task_file}:{func}")


def test_import_errors_inside_the_user_module_are_not_hidden(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import package_that_does_not_exist_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="package_that_does_not_exist_xyz"):
        load_custom(f"{path}:build")
