"""The recipes in examples/: Graft inside Lightning and Hugging Face stacks, each compared
with an independent computation (an uninterrupted run, torch's AdamW, a closed-form lr)."""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import warnings

import pytest
import torch

from grafting_core import Graft
from tests.helpers import ROOT

EXAMPLES = ROOT / "examples"


def _example(name: str):
    """An example script as a module (examples/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _quiet():
    """Lightning and transformers talk a lot; the assertions say what matters."""
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def _largest_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def _relative_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((p.double() - q.double()).norm() / q.double().norm())
        for p, q in zip(a.parameters(), b.parameters())
    )


# ------------------------------------------------------------------------------ Lightning
def test_lightning_resume_from_its_checkpoint_equals_the_uninterrupted_run(tmp_path):
    lg = _example("lightning_graft")
    straight = lg.GraftedRegression()
    lg.fit(straight, 10, tmp_path, checkpoint=True)
    resumed = lg.GraftedRegression(seed=1)
    trainer = lg.fit(resumed, 10, tmp_path, ckpt_path=tmp_path / "step=4.ckpt")
    assert trainer.global_step == 10
    assert _largest_gap(resumed, straight) == 0.0
    fresh = lg.GraftedRegression(seed=1)  # the checkpoint did carry information: others differ
    assert _largest_gap(fresh, straight) > 1e-3


def test_lightning_scheduler_on_graft_is_the_schedule_of_m(tmp_path):
    """configure_optimizers schedules Graft's own lr (Lightning insists); the run equals a
    plain loop with the same schedule on M's lr, and M's base lr is untouched."""
    lg = _example("lightning_graft")
    module = lg.GraftedRegression()
    trainer = lg.fit(module, 12, tmp_path)
    graft = trainer.optimizers[0]
    assert isinstance(graft, Graft)
    assert graft.param_groups[0]["lr"] == pytest.approx(lg.decay(12))
    assert graft.magnitude.param_groups[0]["lr"] == 1e-2

    reference = lg.GraftedRegression()
    opt = Graft(
        reference.net.named_parameters(),
        ("adam", {"lr": 1e-2}),
        ("sgd", {"lr": 0.1, "momentum": 0.9}),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt.magnitude, lg.decay)
    x, y = next(iter(lg.data()))
    for _ in range(12):
        opt.zero_grad()
        (reference.net(x) - y).square().mean().backward()
        opt.step()
        schedule.step()
    assert _relative_gap(module, reference) < 1e-5


# ---------------------------------------------------------------------- Hugging Face
def _hf_losses(model, opt, scheduler, steps: int, lrs: list) -> None:
    hf = _example("hf_trainer_graft")
    rows = hf.token_dataset()
    for step in range(steps):
        chunk = rows[4 * step % len(rows) :][:4]
        ids = torch.stack([r["input_ids"] for r in chunk])
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        lrs.append(
            [g["lr"] for g in (opt.magnitude if isinstance(opt, Graft) else opt).param_groups]
        )
        opt.step()
        scheduler.step()


def test_hf_groups_and_factory_call_train_like_torch_adamw():
    """Trainer's decay/no-decay groups through ``Graft.factory`` as Trainer calls it, with
    transformers' linear schedule on M: AdamW#AdamW is torch's AdamW on the same groups.
    In float64: the attention's key bias has a zero gradient up to rounding, which Adam
    normalises, so float32 runs part by rounding noise there (2e-4 after 8 steps)."""
    import transformers

    hf = _example("hf_trainer_graft")
    model, reference = hf.tiny_gpt2(dtype=torch.float64), hf.tiny_gpt2(dtype=torch.float64)
    cls = Graft.factory("adamw", ("adamw", {"lr": 0.5}), names=model)
    graft = cls(hf.decay_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.999), eps=1e-8)
    assert [g["weight_decay"] for g in graft.magnitude.param_groups] == [0.1, 0.0]
    assert [g["weight_decay"] for g in graft.direction.param_groups] == [0.1, 0.0]
    decayed = set(graft.param_groups[0]["param_names"])
    assert "transformer.h.0.attn.c_attn.weight" in decayed
    assert "transformer.h.0.ln_1.weight" not in decayed and "transformer.ln_f.bias" not in decayed

    steps, warmup = 8, 2
    lrs, reference_lrs = [], []
    _hf_losses(
        model,
        graft,
        transformers.get_linear_schedule_with_warmup(graft.magnitude, warmup, steps),
        steps,
        lrs,
    )
    adamw = torch.optim.AdamW(hf.decay_groups(reference, 0.1), lr=3e-3)
    _hf_losses(
        reference,
        adamw,
        transformers.get_linear_schedule_with_warmup(adamw, warmup, steps),
        steps,
        reference_lrs,
    )
    assert _relative_gap(model, reference) < 1e-10
    expected = [
        3e-3 * (t / warmup if t < warmup else (steps - t) / (steps - warmup)) for t in range(steps)
    ]
    for t, group_lrs in enumerate(lrs):  # each group's lr at step t is the closed form
        assert group_lrs == pytest.approx([expected[t]] * 2, rel=1e-12), t


def test_hf_trainer_with_a_ready_graft_and_with_optimizer_cls_and_kwargs(tmp_path):
    """The two Trainer recipes against Trainer's own AdamW under the same arguments
    (float64, as above)."""
    from transformers import Trainer, get_linear_schedule_with_warmup

    hf = _example("hf_trainer_graft")
    steps = 6
    f64 = torch.float64
    ready = hf.train_ready(str(tmp_path / "ready"), hf.ADAMW, ("adamw", {"lr": 0.5}), steps, f64)
    model = hf.tiny_gpt2(dtype=f64)
    adamw = torch.optim.AdamW(model.parameters(), lr=3e-3)  # weight decay 0.01, as native adamw
    plain = Trainer(
        model=model,
        args=hf.arguments(str(tmp_path / "plain"), steps),
        train_dataset=hf.token_dataset(),
        optimizers=(adamw, get_linear_schedule_with_warmup(adamw, 2, steps)),
    )
    plain.train()
    assert _relative_gap(ready.model, plain.model) < 1e-10
    logged = [e["learning_rate"] for e in ready.state.log_history if "learning_rate" in e]
    assert logged == pytest.approx(
        [e["learning_rate"] for e in plain.state.log_history if "learning_rate" in e]
    )

    factory = hf.train_factory(
        str(tmp_path / "factory"), "adamw", ("adamw", {"lr": 0.5}), steps, f64
    )
    builtin = Trainer(
        model=hf.tiny_gpt2(dtype=f64),
        args=hf.arguments(str(tmp_path / "builtin"), steps, optim="adamw_torch"),
        train_dataset=hf.token_dataset(),
    )
    builtin.train()
    assert _relative_gap(factory.model, builtin.model) < 1e-10
    graft = factory.optimizer.optimizer  # inside accelerate's wrapper
    assert [g["weight_decay"] for g in graft.magnitude.param_groups] == [0.1, 0.0]
    multiplier = [e["learning_rate"] for e in factory.state.log_history if "learning_rate" in e]
    builtin_lr = [e["learning_rate"] for e in builtin.state.log_history if "learning_rate" in e]
    assert [m * 3e-3 for m in multiplier] == pytest.approx(builtin_lr)  # logs Graft's multiplier
    assert not math.isclose(multiplier[-1], builtin_lr[-1])


# ------------------------------------------------------------------------------- factory
def test_factory_recipe_trains_like_the_plain_optimizer_it_stands_in_for():
    """The same factory call with AdamW#AdamW and with torch's AdamW: the same run (float64),
    each group's weight decay as the factory set it, a cosine schedule on M's lr."""
    fg = _example("factory_graft")
    grafted, plain = fg.make_model(dtype=torch.float64), fg.make_model(dtype=torch.float64)
    cls = Graft.factory("adamw", ("adamw", {"lr": 0.7}), names=grafted)
    opt = fg.create_optimizer(grafted, cls, lr=3e-3, weight_decay=0.05, betas=(0.9, 0.95))
    assert [g["weight_decay"] for g in opt.magnitude.param_groups] == [0.0, 0.05]
    assert list(opt.layers.names) == [
        "fc1.bias",
        "norm.weight",
        "norm.bias",
        "out.bias",
        "fc1.weight",
        "out.weight",
    ]
    fg.train(grafted, opt, 30)
    fg.train(
        plain,
        fg.create_optimizer(
            plain, torch.optim.AdamW, lr=3e-3, weight_decay=0.05, betas=(0.9, 0.95)
        ),
        30,
    )
    assert _relative_gap(grafted, plain) < 1e-10
    assert opt.magnitude.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)  # cosine's end


def test_importing_the_library_pulls_in_no_stack():
    """HF, Lightning and TensorBoard are example/test/export dependencies only."""
    import subprocess

    probe = (
        "import sys, grafting_core; print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'transformers', 'pytorch_lightning', 'lightning', 'tensorboardX', 'tensorboard', "
        "'streamlit', 'pandas', 'plotly'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------- static ratios into big runs
def _exported_ratios(tmp_path, model: torch.nn.Module, base_lr: float):
    """A static-ratios JSON with a distinct multiplier per parameter, as the lab exports it."""
    from grafting_core import StaticRatios

    named = list(model.named_parameters())
    ratios = StaticRatios(
        {n: 0.5 + i for i, (n, _) in enumerate(named)},
        {n: list(p.shape) for n, p in named},
        base_lr=base_lr,
    )
    path = ratios.save(tmp_path / "ratios.json")
    return path, StaticRatios.load(path)


def test_static_ratios_json_gives_sgd_each_layer_base_lr_times_c(tmp_path):
    from grafting_core import StaticRatios

    fg = _example("factory_graft")
    model = fg.make_model(dtype=torch.float64)
    path, ratios = _exported_ratios(tmp_path, model, 0.05)
    sgd = torch.optim.SGD(StaticRatios.load(path).param_groups(model.named_parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(16, 6, dtype=torch.float64)
    model(x).square().mean().backward()
    sgd.step()
    for name, p in model.named_parameters():
        expected = before[name] - 0.05 * ratios.ratios[name] * p.grad
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)


def test_static_ratios_in_lightning_configure_optimizers(tmp_path):
    lg = _example("lightning_graft")
    path, ratios = _exported_ratios(tmp_path, lg.GraftedRegression().net, 0.05)
    module = lg.StaticRatioRegression(path)
    start = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    reference = lg.GraftedRegression()  # same weights: the first step by hand
    x, y = next(iter(lg.data()))
    (reference.net(x) - y).square().mean().backward()
    trainer = lg.fit(module, 1, tmp_path)
    lrs = {g["param_names"][0]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs == pytest.approx({n: 0.05 * c for n, c in ratios.ratios.items()}, rel=1e-15)
    for name, p in module.net.named_parameters():  # momentum's first step is lr · g
        grad = reference.net.get_parameter(name).grad
        expected = start[name] - 0.05 * ratios.ratios[name] * grad
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)


def test_static_ratios_optimizer_class_as_hf_trainer_calls_it(tmp_path):
    """Trainer's decay groups and ``cls(groups, lr=...)``: each parameter gets lr · c and
    its group's weight decay; one SGD step moves it by -lr · c · (g + wd · w)."""
    hf = _example("hf_trainer_graft")
    model = hf.tiny_gpt2(dtype=torch.float64)
    _, ratios = _exported_ratios(tmp_path, model, 0.05)
    cls = ratios.optimizer_class(torch.optim.SGD, names=model)
    opt = cls(hf.decay_groups(model, 0.1), lr=0.02)
    decay = {
        n
        for g in hf.decay_groups(model, 0.1)
        if g["weight_decay"]
        for n, p in model.named_parameters()
        if any(p is q for q in g["params"])
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.stack([r["input_ids"] for r in hf.token_dataset()[:4]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        wd = 0.1 if name in decay else 0.0
        expected = before[name] - 0.02 * ratios.ratios[name] * (p.grad + wd * before[name])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)
    assert len(opt.param_groups) == len(before)
    with pytest.raises(ValueError, match="Invalid params: parameter 0 of group 0"):
        cls([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
