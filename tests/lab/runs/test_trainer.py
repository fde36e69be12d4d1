"""The trainer and the run path through the store: learning, divergence, stop and resume."""

import pytest
import torch

from grafting_core.lab.experiments.analysis import static_ratios_from_run
from grafting_core.lab.runs.config import RunConfig, parse_value
from grafting_core.lab.runs.runner import create_run, execute_run, request_stop
from grafting_core.lab.runs.trainer import Trainer, lr_factor
from grafting_core.lab.store.norms import schedule_from_run

TINY = dict(
    dataset="mnist1d",
    width=32,
    steps=60,
    batch_size=32,
    eval_every=30,
    eval_examples=200,
    log_every=10,
    flush_seconds=0.0,
)


def test_short_run_lowers_the_loss(store):
    run_id = create_run(
        store, RunConfig(**TINY, magnitude="adam", direction="sgd", magnitude_hparams={"lr": 1e-2})
    )
    assert execute_run(store, run_id) == "finished"
    loss = store.metrics(run_id, names=["train_loss"])["value"].tolist()
    assert len(loss) == 60
    assert sum(loss[-10:]) / 10 < 0.85 * sum(loss[:10]) / 10
    wide = store.metrics_wide(run_id)
    assert {"val_loss", "val_accuracy", "steps_per_second", "lr"} <= set(wide.columns)
    norms = store.layer_norms(run_id)
    assert norms["step"].nunique() == 60
    assert set(norms["layer"]) == set(store.get_artifact(run_id, "layers")["layer_names"])
    assert store.run(run_id)["status"] == "finished"


def test_diverging_run_is_marked_and_keeps_its_metrics(store):
    config = RunConfig(**TINY, magnitude="sgd", magnitude_hparams={"lr": 1e6})
    run_id = create_run(store, config)
    assert execute_run(store, run_id) == "diverged"
    run = store.run(run_id)
    loss = store.metrics(run_id, names=["train_loss"])
    assert run["status"] == "diverged"
    assert run["last_step"] == len(loss) < 60  # the first step with a non-finite loss
    assert loss["value"].notna().all()


def test_stop_then_resume_equals_uninterrupted_run(store):
    config = RunConfig(**TINY, magnitude="adam", direction="sgd")
    straight = create_run(store, config)
    execute_run(store, straight)

    stopped = create_run(store, config)
    calls = []

    def stop_after_three_flushes():
        calls.append(1)
        return len(calls) >= 3

    assert execute_run(store, stopped, should_stop=stop_after_three_flushes) == "stopped"
    assert store.run(stopped)["last_step"] == 30
    assert execute_run(store, stopped, resume=True) == "finished"
    a = store.metrics(straight).drop(columns="run_id")
    b = store.metrics(stopped).drop(columns="run_id")
    a, b = (m[m["name"].isin(["train_loss", "val_loss"])].reset_index(drop=True) for m in (a, b))
    assert a.equals(b)


def test_stop_request_through_the_store(store):
    run_id = create_run(store, RunConfig(**TINY, magnitude="adam"))
    request_stop(store, run_id)
    assert execute_run(store, run_id) == "stopped"
    assert store.run(run_id)["last_step"] == 10


def test_failed_run_records_the_error(store):
    run_id = create_run(store, RunConfig(**{**TINY, "dataset": "mnist1d"}, model="transformer"))
    with pytest.raises(ValueError):
        execute_run(store, run_id)
    run = store.run(run_id)
    assert run["status"] == "failed" and "does not fit" in run["error"]


def test_replayed_schedule_and_static_ratios_from_the_store(store):
    graft = create_run(store, RunConfig(**TINY, magnitude="adam", direction="sgd"))
    execute_run(store, graft)
    schedule = schedule_from_run(store, graft)
    assert schedule.norms.shape[0] == 60
    replay = create_run(store, RunConfig(**TINY, direction="sgd", replay=f"run:{graft}"))
    execute_run(store, replay)
    online = store.metrics(graft, names=["val_loss"])["value"].tolist()
    replayed = store.metrics(replay, names=["val_loss"])["value"].tolist()
    assert replayed == pytest.approx(online, rel=1e-5)

    ratios = static_ratios_from_run(store, graft, window=(10, 50))
    assert ratios.base_lr == pytest.approx(0.1)
    store.put_artifact(graft, "static_ratios", ratios.to_dict())
    sgd = create_run(store, RunConfig(**TINY, magnitude="sgd", static_ratios=f"run:{graft}"))
    assert execute_run(store, sgd) == "finished"


def test_trainer_streams_events_in_order():
    events = []
    trainer = Trainer(RunConfig(**TINY, magnitude="adam", direction="sgd"))
    for event in ("on_start", "on_metrics", "on_norms", "on_checkpoint", "on_end"):
        trainer.add_callback(event, lambda t, event=event, **kw: events.append(event))
    assert trainer.run() == "finished"
    assert events[0] == "on_start" and events[-2:] == ["on_checkpoint", "on_end"]
    assert events.count("on_norms") == 6


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="steps"):
        RunConfig(steps=0)
    with pytest.raises(ValueError, match="magnitude.*Unknown optimizer"):
        RunConfig(magnitude="adamm")
    with pytest.raises(ValueError, match="direction.*lr"):
        RunConfig(direction="sgd", direction_hparams={"lr": -1.0})
    with pytest.raises(ValueError, match="Invalid magnitude lr: 0"):  # 1e400 in a browser
        RunConfig(magnitude="adam", magnitude_hparams={"lr": 0.0})
    with pytest.raises(TypeError, match="batch_size"):
        RunConfig(batch_size="64")
    with pytest.raises(ValueError, match="Unknown config key"):
        RunConfig().replace(learning_rate=0.1)
    assert parse_value("magnitude_hparams", '{"lr": 0.1}') == {"lr": 0.1}


def test_lr_schedules_are_pure_functions_of_the_step():
    assert lr_factor(5, 100, "constant") == 1.0
    assert lr_factor(0, 100, "warmup_cosine", warmup=10) == pytest.approx(0.1)
    assert lr_factor(10, 100, "warmup_cosine", warmup=10) == pytest.approx(1.0)
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0)
    assert lr_factor(50, 100, "linear") == pytest.approx(0.5)


def test_device_auto_is_cpu_here():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA"):
        Trainer(RunConfig(**TINY, device="cuda")).run()
