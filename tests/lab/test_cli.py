"""The command line end to end on tiny settings (in-process, inline runs)."""

import json
import subprocess
import sys

import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.store.run_store import RunStore

TINY = [
    "--width",
    "16",
    "--steps",
    "30",
    "--batch-size",
    "32",
    "--eval-every",
    "15",
    "--eval-examples",
    "100",
]


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
    assert (
        main(["runs", "ratios", run_id, "--window", "5", "25", "-o", str(tmp_path / "r.json")]) == 0
    )
    assert "fc1.weight" in json.loads((tmp_path / "r.json").read_text())["parameters"]
    assert main(["train", *TINY, "--direction", "sgd", "--replay", str(tmp_path / "s.json")]) == 0
    assert main(["runs", "delete", run_id, "--yes"]) == 0
    assert run_id not in RunStore(runs_dir).runs()["run_id"].tolist()


def test_config_file_and_flags(runs_dir, tmp_path, capsys):
    (tmp_path / "cfg.toml").write_text(
        'magnitude = "sgd"\nsteps = 20\n[magnitude_hparams]\nlr = 0.05\n'
    )
    assert main(["train", "--config", str(tmp_path / "cfg.toml"), "--width", "16"]) == 0
    config = RunStore(runs_dir).runs(flatten_config=False)["config"].iloc[0]
    assert config["magnitude_hparams"] == {"lr": 0.05} and config["steps"] == 20


@pytest.mark.parametrize(
    "argv",
    [
        ["grid", *TINY, "--optimizers", "sgd", "adam", "--workers", "1"],
        ["schedule-transfer", *TINY, "--workers", "1"],
        ["static-ratios", *TINY, "--window", "5", "20", "--sgd-lrs", "0.1", "--workers", "1"],
    ],
)
def test_experiment_subcommands(runs_dir, argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "group" in out and "finished" in out


def test_an_optimizer_with_overrides_is_labelled_by_what_it_changes(runs_dir):
    argv = [
        "--runs-dir",
        str(runs_dir),
        "grid",
        "--optimizers",
        "sgd",
        'adam={"lr": 0.003, "betas": [0.9, 0.95]}',
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--width",
        "8",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    runs = RunStore(runs_dir).runs().set_index("name")
    adam = "adam(lr=0.003, betas=[0.9, 0.95])"
    assert set(runs.index) == {f"{m}#{d}" for m in ("sgd", adam) for d in ("sgd", adam)}
    config = RunStore(runs_dir).run(runs.loc[f"{adam}#sgd", "run_id"])["config"]
    assert config["magnitude_hparams"] == {"lr": 0.003, "betas": [0.9, 0.95]}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--steps", "x"], "steps"),
        (["train", "--magnitude", "adamm"], "Unknown optimizer"),
        (["train", "--magnitude-hparams", '{"lr": -1}'], "lr"),
        (["train", "--bogus"], "unrecognized"),
        (["grid", "--optimizers", "sgd", "nadam"], "Unknown optimizer"),
        (["grid", "--optimizers", "sgd", 'adam={"lr": -1}'], "lr"),
        (["grid", "--optimizers", "sgd", "adam=[1]"], "overrides must be a JSON object"),
        (["static-ratios", "--window", "10", "900", "--steps", "100"], "window"),
        (["runs", "show", "no-such-run"], "no run store there (nothing was created)"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(runs_dir, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "grafting_core", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert "--magnitude-hparams" in result.stdout and "step sizes" in result.stdout


# ------------------------------------------------ user errors: one line, status 2, no run
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A store with a plain run and a grafted one (30 steps each), and their ids."""
    root = tmp_path_factory.mktemp("cli_errors") / "runs"
    for extra in ([], ["--direction", "sgd"]):
        assert main(["--runs-dir", str(root), "train", *TINY, *extra]) == 0
    runs = RunStore(root).runs()
    return root, dict(zip(runs["config.direction"].replace("", "plain"), runs["run_id"]))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["runs", "list", "--status", "bogus"], "argument --status: invalid choice: 'bogus'"),
        (["runs", "ratios", "{plain}"], "is a plain adam run"),
        (["runs", "ratios", "{sgd}", "--window", "500", "600"], "window"),
        (["runs", "export", "{sgd}", "-o", "/missing/dir/x.csv"], "-o /missing/dir/x.csv"),
        (["grid", "--optimizers", "sgd"], "--optimizers sgd: a grid pairs at least two"),
        (["grid", "--seeds", "-1"], "argument --seeds: '-1' is not a seed >= 0"),
        (["compare", "--seeds", "-1"], "argument --seeds: '-1' is not a seed >= 0"),
        (["compare", "--group", "compare-nope"], "--group compare-nope: no runs in this group"),
        (["grid", "--workers", "-3"], "argument --workers: '-3' is not a number of workers"),
        (["static-ratios", "--sgd-lrs", "0.1", "-1"], "argument --sgd-lrs: '-1' is not a learning"),
        (["static-ratios", "--sgd-lrs", "inf"], "argument --sgd-lrs: 'inf' is not a learning"),
        (["train", "--batch-size", "1000000000000"], "1000000000000 is more than the 4000"),
        (["grid", "--batch-size", "1000000000000"], "1000000000000 is more than the 4000"),
        (["train", "--width", "10000000"], "Invalid width/depth"),
        (["train", "--dataset", "mnist1d", "--model", "transformer"], "does not fit dataset"),
        (["train", "--custom", "no_such_module:build"], "Custom task module not found"),
        (["train", "--custom", "missing/task.py:build"], "Custom task file not found"),
        (["train", "--resume", "{plain}", "--steps", "90"], "drop --steps"),
    ],
)
def test_user_errors_are_one_line_with_status_2_and_write_nothing(two_runs, argv, message, capsys):
    root, ids = two_runs
    before = RunStore(root).runs()
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs-dir", str(root), *(arg.format(**ids) for arg in argv)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    after = RunStore(root).runs()
    assert after[["run_id", "status"]].equals(before[["run_id", "status"]])


def test_a_runs_dir_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "runs").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs-dir", str(tmp_path / "runs"), "runs", "list"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("runs: is a file, not a folder")


def test_a_mistyped_deep_runs_dir_is_named_and_nothing_is_created(tmp_path, capsys):
    deep = tmp_path / "data" / "rnus" / "runs"  # "rnus" does not exist
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs-dir", str(deep), "runs", "list"])
    assert exit_info.value.code == 2
    assert "parent folder" in capsys.readouterr().err and not (tmp_path / "data").exists()


def test_a_read_only_store_still_lists_and_refuses_writes_in_one_line(tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(["--runs-dir", str(root), "train", *TINY]) == 0
    run_id = RunStore(root).runs()["run_id"][0]
    capsys.readouterr()
    frozen = [root / "runs.sqlite", root]  # immutable: not even root may write (chattr +i)
    if any(
        subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode for p in frozen
    ):
        subprocess.run(["chattr", "-i", *map(str, frozen)], capture_output=True)
        pytest.skip("chattr +i is not available here")
    try:
        assert main(["--runs-dir", str(root), "runs", "list"]) == 0
        assert run_id in capsys.readouterr().out
        with pytest.raises(SystemExit) as exit_info:
            main(["--runs-dir", str(root), "train", *TINY])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the run store is read-only" in err
    finally:
        subprocess.run(["chattr", "-i", *map(str, frozen)], check=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--magnitude-hparams", '{"lr": -1}'],
        ["static-ratios", "--window", "10", "900", "--steps", "100"],
    ],
)
def test_a_refused_command_leaves_no_new_store_folder_behind(tmp_path, argv, capsys):
    """A setting refused once the store was opened: the folder made for it is removed; an
    existing store is kept as it was."""
    new = tmp_path / "new-store"
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs-dir", str(new), *argv])
    assert exit_info.value.code == 2 and not new.exists()
    assert f"the new folder {new} was removed" in capsys.readouterr().err
    kept = tmp_path / "kept"
    RunStore(kept).close()
    with pytest.raises(SystemExit):
        main(["--runs-dir", str(kept), *argv])
    assert (kept / "runs.sqlite").exists()
