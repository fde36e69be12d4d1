"""The command line end to end on tiny settings (in-process, inline runs)."""

import json
import subprocess
import sys

import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.store import RunStore

TINY = ["--width", "16", "--steps", "30", "--batch-size", "32", "--eval-every", "15",
        "--eval-examples", "100"]


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFTING_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_train_then_runs_subcommands(runs_dir, tmp_path, capsys):
    assert main(["train", *TINY, "--magnitude", "adam", "--direction", "sgd"]) == 0
    run_id = RunStore(runs_dir).runs()["run_id"].iloc[0]
    assert "finished" in capsys.readouterr().out
    assert main(["runs", "list"]) == 0
    assert run_id in capsys.readouterr().out
    assert main(["runs", "show", run_id]) == 0
    assert '"direction": "sgd"' in capsys.readouterr().out
    assert main(["runs", "export", run_id, "-o", str(tmp_path / "m.csv")]) == 0
    header = (tmp_path / "m.csv").read_text().splitlines()[0]
    assert header.startswith("step,") and "train_loss" in header
    assert main(["runs", "schedule", run_id, "-o", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["format"].endswith("schedule")
    assert main(["runs", "ratios", run_id, "--window", "5", "25",
                 "-o", str(tmp_path / "r.json")]) == 0
    assert "fc1.weight" in json.loads((tmp_path / "r.json").read_text())["parameters"]
    assert main(["train", *TINY, "--direction", "sgd", "--replay", str(tmp_path / "s.json")]) == 0
    assert main(["runs", "delete", run_id, "--yes"]) == 0
    assert run_id not in RunStore(runs_dir).runs()["run_id"].tolist()


def test_config_file_and_flags(runs_dir, tmp_path, capsys):
    (tmp_path / "cfg.toml").write_text('magnitude = "sgd"\nsteps = 20\n'
                                       '[magnitude_hparams]\nlr = 0.05\n')
    assert main(["train", "--config", str(tmp_path / "cfg.toml"), "--width", "16"]) == 0
    config = RunStore(runs_dir).runs(flatten_config=False)["config"].iloc[0]
    assert config["magnitude_hparams"] == {"lr": 0.05} and config["steps"] == 20


@pytest.mark.parametrize("argv", [["grid", *TINY, "--optimizers", "sgd", "adam", "--workers", "1"],
                                  ["schedule-transfer", *TINY, "--workers", "1"],
                                  ["static-ratios", *TINY, "--window", "5", "20",
                                   "--sgd-lrs", "0.1", "--workers", "1"]])
def test_experiment_subcommands(runs_dir, argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "group" in out and "finished" in out


@pytest.mark.parametrize("argv,message", [
    (["train", "--steps", "x"], "steps"),
    (["train", "--magnitude", "adamm"], "Unknown optimizer"),
    (["train", "--magnitude-hparams", '{"lr": -1}'], "lr"),
    (["train", "--bogus"], "unrecognized"),
    (["grid", "--optimizers", "sgd", "nadam"], "Unknown optimizer"),
    (["grid", "--optimizers", "sgd", 'adam={"lr": -1}'], "lr"),
    (["static-ratios", "--window", "10", "900", "--steps", "100"], "window"),
    (["runs", "show", "no-such-run"], "unknown run id"),
])
def test_bad_flags_exit_2_with_a_clear_message(runs_dir, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "grafting_core", "train", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--magnitude-hparams" in result.stdout and "step sizes" in result.stdout
