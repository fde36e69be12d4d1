"""Odd input that must not slip through (issue 28, items 7-10): every bad file, flag or store
is refused before anything is written, in one line naming the file, the flag and the value;
damaged checkpoints and stores are called damaged; foreign or newer stores are left as they
were. Through the command line, as a user meets them."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from grafting_core import MagnitudeSchedule
from grafting_core.lab.cli import main
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run, execute_run
from grafting_core.lab.store.run_store import DB_FILENAME, RunStore
from grafting_core.lab.store.schema import SCHEMA_VERSION
from tests.helpers import ROOT

TINY = ["--width", "16", "--batch-size", "16", "--eval-examples", "64", "--log-every", "2"]


def _cli(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr of ``python -m grafting_core ARGS`` (in this process)."""
    try:
        code = main([*args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- 7. schedules: finite only
def _schedule_file(tmp_path: Path, store: RunStore, bad: float) -> Path:
    """A schedule recorded from a real adam run, one norm replaced by ``bad``."""
    config = RunConfig(dataset="mnist1d", width=16, batch_size=16, steps=4, eval_every=4)
    run_id = create_run(store, config.replace(magnitude="adam", direction="sgd"))
    execute_run(store, run_id)
    from grafting_core.lab.store.norms import schedule_from_run

    data = schedule_from_run(store, run_id).to_dict()
    data["norms"][2][0] = bad
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(data))  # json writes Infinity / NaN, as another tool might
    return path


@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_a_schedule_with_a_norm_that_is_not_finite_is_refused_naming_it(
    tmp_path, store, capsys, bad
):
    path = _schedule_file(tmp_path, store, bad)
    with pytest.raises(ValueError, match="not finite.*at step 2"):
        MagnitudeSchedule.load(path)
    before = len(store.runs())
    code, err = _cli(
        capsys,
        *("--runs-dir", str(store.root), "train", "--replay", str(path)),
        *("--direction", "sgd", "--steps", "4", *TINY),
    )
    assert code == 2 and f"--replay {path}" in err and "not finite" in err
    assert len(store.runs()) == before  # no failed row left behind


# ------------------------------------------------ 8. errors name the file, flag and value
def test_a_bad_ratio_file_is_refused_before_a_run_is_recorded_naming_the_file(
    tmp_path, store, capsys
):
    for text, reason in (
        ('{"format": "grafting-lab/static-ratios"}', "no 'parameters' entry"),
        ("not json at all", "not a JSON file"),
    ):
        path = tmp_path / "ratios.json"
        path.write_text(text)
        code, err = _cli(
            capsys,
            *("--runs-dir", str(store.root), "train", "--static-ratios", str(path), *TINY),
        )
        assert code == 2 and f"--static-ratios {path}" in err and reason in err, err
    missing = tmp_path / "nothing.json"
    code, err = _cli(
        capsys,
        *("--runs-dir", str(store.root), "train", "--replay", str(missing), "--direction", "sgd"),
    )
    assert code == 2 and f"--replay {missing}: no such file" in err
    assert store.runs().empty


def test_resume_of_an_unknown_run_is_refused_and_records_nothing(store, capsys):
    code, err = _cli(capsys, "--runs-dir", str(store.root), "train", "--resume", "nosuchrun")
    assert code == 2 and "--resume nosuchrun: no run with this id" in err
    assert store.runs().empty


def test_a_malformed_config_file_or_flag_is_named(tmp_path, store, capsys):
    for name, text, what in (
        ("bad.json", '{"steps": ', "not valid JSON"),
        ("bad.toml", "steps = = 3", "not valid TOML"),
        ("list.json", "[1, 2]", "expected a table of settings"),
    ):
        path = tmp_path / name
        path.write_text(text)
        code, err = _cli(capsys, "--runs-dir", str(store.root), "train", "--config", str(path))
        assert code == 2 and f"--config {path}: {what}" in err, err
    code, err = _cli(
        capsys, "--runs-dir", str(store.root), "train", "--magnitude-hparams", "{lr: 1"
    )
    assert code == 2 and "--magnitude-hparams '{lr: 1': not valid JSON" in err
    assert store.runs().empty


# ------------------------------------------------------------ 9. damaged checkpoints
@pytest.mark.parametrize(
    "damage",
    [lambda blob: blob[: len(blob) // 2], lambda blob: bytes(100)],
    ids=["truncated", "zeros"],
)
def test_a_damaged_checkpoint_is_called_damaged_and_the_run_stays_stopped(store, capsys, damage):
    config = RunConfig(dataset="mnist1d", width=16, batch_size=16, steps=40, eval_every=40)
    run_id = create_run(store, config.replace(log_every=2, flush_seconds=0.0))
    calls = iter(range(10**6))
    assert execute_run(store, run_id, should_stop=lambda: next(calls) >= 3) == "stopped"
    blob = store.get_artifact(run_id, "checkpoint")
    store.put_artifact(run_id, "checkpoint", damage(blob), kind="checkpoint")
    code, err = _cli(capsys, "--runs-dir", str(store.root), "train", "--resume", run_id)
    assert code == 2 and f"--resume {run_id}" in err and "checkpoint is damaged" in err, err
    assert "could run code" not in err and "miniz" not in err
    assert store.run(run_id)["status"] == "stopped"


# -------------------------------------------------------------------- 10. stores
def _store_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grafting_core", "--runs-dir", str(root), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_another_programs_database_is_refused_and_left_as_it_was(tmp_path):
    root = tmp_path / "other"
    root.mkdir()
    with sqlite3.connect(root / DB_FILENAME) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    before = _digest(root / DB_FILENAME)
    for args in (["runs", "list"], ["train", "--steps", "1"]):
        cli = _store_cli(root, *args)
        assert cli.returncode == 2, cli.stderr
        assert "another program's SQLite database (tables: invoices)" in cli.stderr
        assert _digest(root / DB_FILENAME) == before
        assert sorted(p.name for p in root.iterdir()) == [DB_FILENAME]


def test_a_newer_store_is_refused_and_left_as_it_was(tmp_path, store):
    store.close()
    with sqlite3.connect(store.root / DB_FILENAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = _digest(store.root / DB_FILENAME)
    cli = _store_cli(store.root, "runs", "list")
    assert cli.returncode == 2 and "newer than this code supports" in cli.stderr
    assert _digest(store.root / DB_FILENAME) == before


def test_a_rolled_back_schema_version_is_called_a_mismatch_and_left_as_it_was(tmp_path, store):
    store.close()
    with sqlite3.connect(store.root / DB_FILENAME) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA user_version = 2")
    before = _digest(store.root / DB_FILENAME)
    cli = _store_cli(store.root, "runs", "list")
    assert cli.returncode == 2, cli.stderr
    assert "do not match that version" in cli.stderr and "schema version 2" in cli.stderr
    assert "Traceback" not in cli.stderr
    assert _digest(store.root / DB_FILENAME) == before


def test_a_store_with_damaged_pages_is_called_damaged_in_one_line(tmp_path, store):
    for seed in range(40):  # enough rows for several pages
        store.create_run({"seed": seed, "pad": "x" * 2000}, name=f"run{seed}")
    run_id = store.runs()["run_id"].iloc[-1]
    store.close()
    with sqlite3.connect(store.root / DB_FILENAME) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
    path = store.root / DB_FILENAME
    data = bytearray(path.read_bytes())
    page = 4096
    for start in range(2 * page, len(data), page):  # every page after the schema's
        data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    cli = _store_cli(store.root, "runs", "show", run_id)
    assert cli.returncode in (1, 2), cli.stderr
    assert "damaged" in cli.stderr and "Traceback" not in cli.stderr


def test_a_missing_folder_level_creates_no_store_for_a_read(tmp_path, capsys):
    missing = tmp_path / "runs"  # the user meant tmp_path / "runs" / "mine", say: a typo
    code, err = _cli(capsys, "--runs-dir", str(missing), "runs", "show", "x")
    assert code == 2 and "no run store there" in err
    code, _ = _cli(capsys, "--runs-dir", str(missing), "runs", "list")
    assert code == 0 and not missing.exists()


# ------------------------------------------------------- 6, 12. sizes have bounds
@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--seed", str(2**70), "Invalid seed"),
        ("--steps", str(10**12), "Invalid steps"),
        ("--batch-size", str(2_000_000), "more than the 4000 training examples of mnist1d"),
    ],
)
def test_sizes_out_of_bounds_are_refused_before_a_run(store, capsys, flag, value, reason):
    code, err = _cli(capsys, "--runs-dir", str(store.root), "train", flag, value)
    assert code == 2 and reason in err, err
    assert store.runs().empty


def test_the_graft_lab_refuses_steps_out_of_bounds_and_starts_nothing(runs_dir):
    from streamlit.testing.v1 import AppTest

    store = RunStore(runs_dir)
    before = len(store.runs())
    at = AppTest.from_file(str(ROOT / "pages/graft_lab.py"), default_timeout=60).run()
    at.number_input(key="lab.steps").set_value(10**12)
    at.button(key="lab.start").click().run()
    assert any("Invalid steps" in e.value for e in at.error), [e.value for e in at.error]
    assert len(store.runs()) == before
    store.close()
