"""Runs exported to TensorBoard (module, ``grafting runs export --tensorboard``, the Runs page
button), read back with TensorBoard's own reader and compared with the run store."""

from __future__ import annotations

import json
import math

import pytest
from tensorboard.backend.event_processing import event_accumulator

from grafting_core.lab.cli import main
from grafting_core.lab.store.tensorboard import export_runs, run_folder
from tests.helpers import page, train_inline

pytestmark = pytest.mark.app_store  # the Runs page reads the store the tests write


def read_back(folder) -> event_accumulator.EventAccumulator:
    """Every event of a run folder, none sampled away."""
    reader = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    return reader.Reload()


def scalars(reader, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in reader.Scalars(tag)}


def assert_matches_store(store, run_id: str, folder) -> None:
    """Metrics, per-layer norms, ratios and config in the event files equal the store's."""
    reader = read_back(folder)
    tags = set(reader.Tags()["scalars"])
    metrics = store.metrics(run_id)
    assert {"train_loss", "val_loss", "lr"} <= set(metrics["name"])
    for name, rows in metrics.groupby("name"):
        assert scalars(reader, name) == pytest.approx(
            dict(zip(rows["step"], rows["value"])), rel=1e-6
        )  # event files hold float32
    norms = store.layer_norms(run_id, fields=["magnitude_norm", "direction_norm"])
    wide = norms.pivot_table(
        index=["layer", "step"], columns="field", values="value", observed=True
    )
    layers = list(store.layer_norm_names(run_id)[0])
    assert {f"ratio/{layer}" for layer in layers} <= tags
    for layer in layers:
        rows = wide.loc[layer]
        for field in ("magnitude_norm", "direction_norm"):
            assert scalars(reader, f"{field}/{layer}") == pytest.approx(
                rows[field].to_dict(), rel=1e-6
            )
        expected = {
            s: m / d
            for s, m, d in zip(rows.index, rows["magnitude_norm"], rows["direction_norm"])
            if d > 0
        }
        assert scalars(reader, f"ratio/{layer}") == pytest.approx(expected, rel=1e-6)
        assert all(not math.isclose(v, 1.0) for v in expected.values())  # a real graft
    text = reader.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    shown = json.loads(text.removeprefix("```json\n").removesuffix("\n```"))
    run = store.run(run_id)
    assert shown == {"name": run["name"], "status": run["status"], "config": run["config"]}


def test_export_writes_metrics_norms_ratios_and_config(store, tmp_path):
    run_id = train_inline(store, name="adam#sgd", magnitude="adam", direction="sgd")
    (folder,) = export_runs(store, [run_id], tmp_path / "tb")
    assert folder.name == f"adam-graft-sgd-{run_id}" == run_folder(store.run(run_id))
    assert_matches_store(store, run_id, folder)
    again = export_runs(store, [run_id], tmp_path / "tb")[0]  # replaces, never duplicates
    assert len(list(again.iterdir())) == 1
    assert_matches_store(store, run_id, again)


def test_cli_runs_export_tensorboard(store, tmp_path, capsys):
    run_id = train_inline(store, name="cli", magnitude="adam", direction="sgd")
    assert main(["runs", "export", run_id, "--tensorboard", str(tmp_path / "tb")]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    assert_matches_store(store, run_id, tmp_path / "tb" / f"cli-{run_id}")
    with pytest.raises(SystemExit):
        main(
            [
                "runs",
                "export",
                run_id,
                "--tensorboard",
                str(tmp_path / "tb"),
                "-o",
                str(tmp_path / "x.csv"),
            ]
        )
    assert "-o is for CSV/JSON" in capsys.readouterr().err


def test_runs_page_button_exports_the_overlaid_runs(store):
    first = train_inline(store, name="first", magnitude="adam", direction="sgd")
    second = train_inline(store, name="second", magnitude="sgd", direction="adam", seed=1)
    at = page("pages/runs.py")
    at.multiselect(key="runs.compare").set_value([first, second]).run()
    at.button(key="runs.tensorboard").click().run()
    assert not at.exception
    out = store.root / "tensorboard"
    assert any(f"tensorboard --logdir {out}" in s.value for s in at.success)
    for run_id, name in ((first, "first"), (second, "second")):
        assert_matches_store(store, run_id, out / f"{name}-{run_id}")
