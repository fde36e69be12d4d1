"""Implicit-schedule tables and the layer-kind figure, checked against hand computations."""

import numpy as np
import pandas as pd
import pytest

from grafting_core import Graft, NormLog
from grafting_core.lab.experiments.implicit_schedules import (
    layer_kind,
    layer_series,
    norm_log_frame,
    schedule_shapes,
)
from grafting_core.lab.figures import experiments as experiment_figures
from grafting_core.lab.store.run_store import RunStore
from grafting_core.lab.tasks.data import load_dataset
from grafting_core.lab.tasks.models import build_model
from tests.helpers import make_model, train


def test_layer_kinds_of_the_lab_transformer():
    model = build_model("transformer", load_dataset("chars"), depth=1)
    kinds = {name: layer_kind(name) for name, _ in model.named_parameters()}
    assert kinds == {
        "tok_emb.weight": "embedding",
        "pos_emb.weight": "embedding",
        "blocks.0.ln1.weight": "norm",
        "blocks.0.ln1.bias": "norm",
        "blocks.0.attn.qkv.weight": "attention",
        "blocks.0.attn.qkv.bias": "attention",
        "blocks.0.attn.proj.weight": "attention",
        "blocks.0.attn.proj.bias": "attention",
        "blocks.0.ln2.weight": "norm",
        "blocks.0.ln2.bias": "norm",
        "blocks.0.mlp.fc.weight": "mlp",
        "blocks.0.mlp.fc.bias": "mlp",
        "blocks.0.mlp.proj.weight": "mlp",
        "blocks.0.mlp.proj.bias": "mlp",
        "ln_f.weight": "norm",
        "ln_f.bias": "norm",
        "head.weight": "head",
    }
    assert layer_kind("transformer.h.3.ln_2.weight") == "norm"
    assert layer_kind("model.layers.0.self_attn.q_proj.weight") == "attention"
    assert layer_kind("lm_head.weight") == "head" and layer_kind("conv.weight") == "other"


def test_norm_log_frame_matches_the_store_layout(tmp_path):
    model = make_model()
    opt = Graft(model.named_parameters(), ("adam", {"lr": 1e-2}), ("sgd", {"lr": 0.1}))
    log = NormLog(opt)
    train(model, opt, 5)
    frame = norm_log_frame(log)
    steps, values = log.read()
    assert len(frame) == values.numel()
    wide = frame.pivot_table(
        index=["step", "layer"], columns="field", values="value", observed=True
    )
    got = wide.loc[(3, "fc2.weight"), list(log.fields)].to_numpy()
    want = values[3, list(log.layer_names).index("fc2.weight")].double().numpy()
    assert np.allclose(got, want, equal_nan=True)
    store = RunStore(tmp_path)  # the same cube through the run store reads back identically
    run = store.create_run({})
    store.log_layer_norms(run, steps, log.layer_names, log.fields, values.numpy())
    pd.testing.assert_frame_equal(frame, store.layer_norms(run))


def _frame(series: dict[str, np.ndarray], field: str = "step_norm", run_id=None) -> pd.DataFrame:
    rows = [
        (s, layer, field, float(v))
        for layer, values in series.items()
        for s, v in enumerate(values)
    ]
    frame = pd.DataFrame(rows, columns=["step", "layer", "field", "value"])
    return frame.assign(run_id=run_id) if run_id else frame


def test_effective_lr_is_step_over_gradient_norm():
    frame = pd.concat(
        [
            _frame({"head.weight": np.array([0.2, 0.4])}),
            _frame({"head.weight": np.array([2.0, 0.0])}, field="grad_norm"),
        ]
    )
    series = layer_series(frame, "effective_lr")
    assert series["value"].iloc[0] == pytest.approx(0.1)
    assert np.isnan(series["value"].iloc[1])  # zero gradient: undefined, not inf
    assert series["kind"].tolist() == ["head", "head"]
    with pytest.raises(ValueError, match="direction_norm"):
        layer_series(frame, "ratio")


def test_schedule_shapes_name_each_trajectory():
    t = np.arange(200, dtype=float)
    frame = _frame(
        {
            "warm": np.where(t < 60, 0.01 + t / 60, 1.0 * np.exp(-(t - 60) / 40)) + 1e-3,
            "rise": 0.1 + t / 100,
            "decay": 1.0 / np.sqrt(t + 1),
            "flat": np.full(200, 0.5),
        }
    )
    shapes = schedule_shapes(frame).set_index("layer")
    assert shapes["shape"].to_dict() == {
        "warm": "warm-up, then decay",
        "rise": "rising",
        "decay": "decaying",
        "flat": "flat",
    }
    assert shapes.loc["warm", "peak_at"] == pytest.approx(60 / 199, abs=0.03)
    assert shapes.loc["flat", "change"] == pytest.approx(1.0)
    assert shapes.loc["rise", "early"] == pytest.approx(0.1 + 4.5 / 100, rel=0.05)


def test_layer_kind_curves_median_per_kind_and_normalised():
    a = pd.concat(
        [
            _frame(
                {
                    "blocks.0.attn.qkv.weight": np.array([1.0, 2.0, 4.0]),
                    "blocks.0.attn.proj.weight": np.array([3.0, 6.0, 12.0]),
                    "blocks.0.attn.qkv.bias": np.array([100.0, 100.0, 100.0]),
                    "tok_emb.weight": np.array([8.0, 4.0, 2.0]),
                },
                run_id="a",
            )
        ]
    )
    b = _frame(
        {
            "blocks.0.attn.qkv.weight": np.array([5.0, 5.0, 5.0]),
            "tok_emb.weight": np.array([1.0, 1.0, 1.0]),
        },
        run_id="b",
    )
    fig = experiment_figures.layer_kind_curves(
        pd.concat([a, b]), labels={"a": "adam", "b": "sgd"}, normalize=False, smoothing=0.0
    )
    titles = [annotation.text for annotation in fig.layout.annotations]
    assert titles == ["embedding", "attention"]
    by_panel = {(t.xaxis, t.name): list(t.y) for t in fig.data}
    assert by_panel[("x2", "adam")] == pytest.approx([3.0, 6.0, 12.0])  # median of 3 layers
    assert by_panel[("x", "adam")] == pytest.approx([8.0, 4.0, 2.0])
    assert by_panel[("x2", "sgd")] == pytest.approx([5.0, 5.0, 5.0])
    assert fig.layout.yaxis.type == "log"
    shaped = experiment_figures.layer_kind_curves(pd.concat([a, b]), normalize=True, smoothing=0.0)
    assert all(max(t.y) == pytest.approx(1.0) for t in shaped.data)
    assert [t.showlegend for t in shaped.data] == [True, True, False, False]
