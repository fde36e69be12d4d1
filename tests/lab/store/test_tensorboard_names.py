"""TensorBoard export (issue 28 item 12, issue 27 item 4): folder names are slugs safe in
shells and URLs (``adam#sgd`` → ``adam-graft-sgd``), unique by run id, and a re-export
replaces an export made under the old name; a run that has not ended is exported as far as
it got, with a notice line (``runs export --tensorboard``) and ``partial`` in its log."""

from __future__ import annotations

import json
import re
import shlex
from urllib.parse import quote

import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run, execute_run
from grafting_core.lab.store.run_store import RunStore
from grafting_core.lab.store.tensorboard import export_runs, partial_runs, run_folder

TINY = {"width": 8, "steps": 10, "log_every": 5, "eval_every": 10, "eval_examples": 64}


def _trained(store: RunStore, name: str) -> str:
    run_id = create_run(store, RunConfig(**TINY, name=name, magnitude="adam", direction="sgd"))
    execute_run(store, run_id)
    return run_id


def _config_text(folder) -> dict:
    from tensorboard.backend.event_processing import event_accumulator

    reader = event_accumulator.EventAccumulator(str(folder)).Reload()
    text = reader.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    return json.loads(text.removeprefix("```json\n").removesuffix("\n```"))


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("adam#sgd", "adam-graft-sgd"),
        ("sgd#adam[hidden+norm] at M lr 0.1", "sgd-graft-adam_hidden+norm_at_M_lr_0.1"),
        ("a b/c$d;e'f\"g%h?&=", "a_b_c_d_e_f_g_h"),
        ("#adam", "graft-adam"),
        ("", "run"),
    ],
)
def test_folder_names_are_safe_in_shells_and_urls(name, slug):
    folder = run_folder({"name": name, "run_id": "20260101-000000-ab12"})
    assert folder == f"{slug}-20260101-000000-ab12"
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", folder)
    assert shlex.quote(folder) == folder  # nothing to quote in a shell
    assert quote(folder, safe="+") == folder  # nothing to percent-encode in a URL path


def test_a_re_export_replaces_the_export_under_the_old_name(store, tmp_path):
    run_id = _trained(store, "adam#sgd")
    out = tmp_path / "tb"
    old = out / f"adam#sgd-{run_id}"  # as exports were named before
    old.mkdir(parents=True)
    (old / "events.out.tfevents.0.old").write_bytes(b"")
    unrelated = out / "adam#sgd-20000101-000000-0000"  # another run's old export: kept
    unrelated.mkdir()
    (folder,) = export_runs(store, [run_id], out)
    assert folder.name == f"adam-graft-sgd-{run_id}"
    assert sorted(p.name for p in out.iterdir()) == sorted([folder.name, unrelated.name])
    assert _config_text(folder) == {
        "name": "adam#sgd",
        "status": "finished",
        "config": store.run(run_id)["config"],
    }  # a finished run: no partial mark
    assert partial_runs(store, [run_id]) == {}


def test_exporting_a_run_still_training_says_its_log_is_partial(store, tmp_path, capsys):
    finished = _trained(store, "adam#sgd")
    training = create_run(store, RunConfig(**TINY, name="adam#sgd"))  # owned by this process
    store.log_metrics(training, 4, {"train_loss": 2.0})
    store.heartbeat(training, step=4)
    out = tmp_path / "tb"
    code = main(
        ["--runs-dir", str(store.root), "runs", "export", training, "--tensorboard", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0
    notices = [line for line in captured.err.splitlines() if line.startswith("notice:")]
    assert notices == [
        f"notice: run {training} is still training (step 4 of 10): its export is partial; "
        "export it again when it has finished"
    ]
    assert f"adam-graft-sgd-{training}" in captured.out
    shown = _config_text(out / f"adam-graft-sgd-{training}")
    assert shown["partial"] is True and shown["last_step"] == 4 and shown["status"] == "running"

    code = main(
        ["--runs-dir", str(store.root), "runs", "export", finished, "--tensorboard", str(out)]
    )
    assert code == 0 and "notice:" not in capsys.readouterr().err  # a finished run: no notice

    store.set_status(training, "stopped")
    (notice,) = partial_runs(store, [finished, training]).values()
    assert notice.startswith(f"notice: run {training} is stopped at step 4 of 10")
