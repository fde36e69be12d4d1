"""Tests for grafting_core.lab.tasks.models: shapes, names, sizing, seeding, errors, learning."""

import math

import pytest
import torch
import torch.nn.functional as F

from grafting_core.lab.tasks.data import load_dataset
from grafting_core.lab.tasks.models import (
    MODELS,
    build_model,
    compatible_models,
    default_model,
    describe_model,
    loss_fn,
    model_names,
    resolve_model_options,
)

PAIRS = [("mlp", "mnist1d"), ("mlp", "digits"), ("mlp", "teacher"), ("cnn1d", "mnist1d")]
PAIRS += [("cnn", "digits"), ("transformer", "chars")]
SMALL = {"teacher": {"n_train": 256, "n_val": 64}, "chars": {"block_size": 16}}


def dataset(name):
    return load_dataset(name, **SMALL.get(name, {}))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry():
    assert model_names() == ["mlp", "cnn1d", "cnn", "transformer"]
    for name in model_names():
        assert describe_model(name) and "\n" not in describe_model(name)
    assert compatible_models("mnist1d") == ["mlp", "cnn1d"]
    assert compatible_models("digits") == ["mlp", "cnn"]
    assert compatible_models("chars") == ["transformer"]
    assert compatible_models("teacher") == ["mlp", "cnn1d"]
    for ds in ("mnist1d", "digits", "chars", "teacher"):
        assert default_model(ds) in compatible_models(ds)
    with pytest.raises(ValueError, match="Unknown dataset"):
        compatible_models("nope")


@pytest.mark.parametrize("model_name,data_name", PAIRS)
def test_forward_backward_on_its_dataset(model_name, data_name):
    ds = dataset(data_name)
    model = build_model(model_name, ds)
    x, y = ds.batch("train", 8, step=0, seed=0)
    out = model(x)
    if ds.task == "language":
        assert out.shape == (8, ds.block_size, ds.output_dim)
    else:
        assert out.shape == (8, ds.output_dim)
    loss = loss_fn(ds.task)(out, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_mlp_parameter_names_and_sizes():
    ds = dataset("mnist1d")
    model = build_model("mlp", ds)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "fc1.weight": (100, 40), "fc1.bias": (100,),
        "fc2.weight": (100, 100), "fc2.bias": (100,),
        "out.weight": (10, 100), "out.bias": (10,),
    }  # fmt: skip
    deeper = build_model("mlp", ds, width=16, depth=3)
    assert [n for n, _ in deeper.named_parameters() if n.endswith("weight")] == [
        "fc1.weight", "fc2.weight", "fc3.weight", "out.weight"
    ]  # fmt: skip
    assert n_params(deeper) == 40 * 16 + 16 + 2 * (16 * 16 + 16) + 16 * 10 + 10


def test_cnn_parameter_names():
    conv1d = build_model("cnn1d", dataset("mnist1d"))
    assert [n for n, _ in conv1d.named_parameters()] == [
        f"{layer}.{kind}" for layer in ("conv1", "conv2", "conv3", "out")
        for kind in ("weight", "bias")
    ]  # fmt: skip
    assert conv1d.out.in_features == 32 * 5  # 40 -> 20 -> 10 -> 5 positions
    conv2d = build_model("cnn", dataset("digits"))
    assert [n for n, _ in conv2d.named_parameters() if n.endswith("weight")] == [
        "conv1.weight", "conv2.weight", "out.weight"
    ]  # fmt: skip
    assert conv2d.out.in_features == 16 * 4 * 4  # 8x8 -> 8x8 -> 4x4


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_cnns_are_deep_enough_for_any_depth(kernel_size):
    for name, data in (("cnn1d", "mnist1d"), ("cnn", "digits")):
        ds = dataset(data)
        model = build_model(name, ds, width=4, depth=7, kernel_size=kernel_size)
        assert model(ds.x_train[:2]).shape == (2, 10)  # spatial size bottoms out at 1


def test_transformer_parameter_names():
    ds = dataset("chars")
    model = build_model("transformer", ds)
    names = [n for n, _ in model.named_parameters()]
    for expected in (
        "tok_emb.weight", "pos_emb.weight", "ln_f.weight", "head.weight",
        "blocks.0.ln1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
        "blocks.0.ln2.weight", "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight",
        "blocks.1.mlp.proj.bias",
    ):  # fmt: skip
        assert expected in names
    assert not any(n.startswith("blocks.2.") for n in names)  # default depth 2
    assert model.pos_emb.weight.shape == (ds.block_size, 64)
    assert model.head.weight.shape == (ds.output_dim, 64)
    tied = build_model("transformer", ds, tie_weights=True)
    assert tied.head.weight is tied.tok_emb.weight
    assert "head.weight" not in dict(tied.named_parameters())
    assert n_params(tied) == n_params(model) - ds.output_dim * 64


def test_transformer_is_causal():
    ds = dataset("chars")
    model = build_model("transformer", ds).eval()
    x, _ = ds.batch("train", 2, step=0, seed=0)
    changed = x.clone()
    changed[:, 10] = (changed[:, 10] + 1) % ds.output_dim
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)  # the past ignores the future
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    with torch.no_grad():
        short = model(x[:, :5])
    assert torch.allclose(short, a[:, :5], atol=1e-5)  # shorter contexts work too
    with pytest.raises(ValueError, match="exceeds the block size"):
        model(torch.zeros(1, ds.block_size + 1, dtype=torch.int64))


@pytest.mark.parametrize("model_name,data_name", PAIRS)
def test_width_and_depth_change_the_size(model_name, data_name):
    ds = dataset(data_name)
    base = build_model(model_name, ds, width=16, depth=2)
    wider = build_model(model_name, ds, width=32, depth=2)
    deeper = build_model(model_name, ds, width=16, depth=3)
    assert n_params(wider) > n_params(base)
    # cnn1d: each extra stride-2 layer also halves the head's input, so compare, not order
    assert n_params(deeper) != n_params(base)
    extra = 12 if model_name == "transformer" else 2  # a block of 6 layers, or one layer
    assert len(list(deeper.parameters())) == len(list(base.parameters())) + extra


@pytest.mark.parametrize("model_name,data_name", PAIRS)
def test_seeded_init_is_deterministic_and_leaves_global_rng_alone(model_name, data_name):
    ds = dataset(data_name)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(model_name, ds, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model(model_name, ds, seed=7)
    c = build_model(model_name, ds, seed=8)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_bad_names_options_and_mismatches_are_clear_errors():
    mnist = dataset("mnist1d")
    with pytest.raises(ValueError, match="Unknown model 'gpt'.*mlp, cnn1d, cnn, transformer"):
        build_model("gpt", mnist)
    with pytest.raises(ValueError, match="Unknown model"):
        describe_model("gpt")
    with pytest.raises(ValueError, match="Unknown option 'heads'.*dropout, n_heads, tie_weights"):
        build_model("transformer", dataset("chars"), heads=2)
    with pytest.raises(ValueError, match="Unknown option 'n_heads'.*activation"):
        build_model("mlp", mnist, n_heads=2)
    with pytest.raises(
        ValueError, match="'transformer' does not fit dataset 'mnist1d'.*mlp, cnn1d"
    ):
        build_model("transformer", mnist)
    with pytest.raises(ValueError, match="'cnn' does not fit dataset 'mnist1d'"):
        build_model("cnn", mnist)
    with pytest.raises(ValueError, match="'mlp' does not fit dataset 'chars'"):
        build_model("mlp", dataset("chars"))
    with pytest.raises(ValueError, match="Invalid width.*must be an int >= 1"):
        build_model("mlp", mnist, width=0)
    with pytest.raises(ValueError, match="Invalid depth"):
        build_model("mlp", mnist, depth=2.5)
    with pytest.raises(ValueError, match="Invalid n_heads: 3"):
        build_model("transformer", dataset("chars"), n_heads=3)
    with pytest.raises(ValueError, match="Invalid kernel_size: 0"):
        build_model("cnn", dataset("digits"), kernel_size=0)
    with pytest.raises(ValueError, match="Invalid activation: 'swish'"):
        build_model("mlp", mnist, activation="swish")
    with pytest.raises(ValueError, match="Invalid task"):
        loss_fn("ranking")


def test_resolved_options():
    assert resolve_model_options("mlp") == {"width": 100, "depth": 2, "activation": "relu"}
    full = resolve_model_options("transformer", depth=4, dropout=0)
    assert full == {"width": 64, "depth": 4, "n_heads": 4, "tie_weights": False, "dropout": 0.0}
    assert set(MODELS) == set(model_names())


def test_losses_match_torch_formulas():
    logits = torch.randn(3, 5, 7)
    target = torch.randint(7, (3, 5))
    expected = -torch.log_softmax(logits, -1).gather(-1, target[..., None]).mean()
    assert torch.allclose(loss_fn("language")(logits, target), expected, atol=1e-6)
    out, y = torch.randn(6, 1), torch.randn(6)  # flat regression targets are reshaped
    assert torch.allclose(loss_fn("regression")(out, y), ((out.flatten() - y) ** 2).mean())
    assert torch.allclose(
        loss_fn("classification")(logits[:, 0], target[:, 0]),
        F.cross_entropy(logits[:, 0], target[:, 0]),
    )


def test_mlp_learns_mnist1d():
    ds = dataset("mnist1d")
    model = build_model("mlp", ds, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lossf = loss_fn(ds.task)
    losses = []
    for step in range(300):
        x, y = ds.batch("train", 100, step=step, seed=0)
        loss = lossf(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(10)) < 0.3  # starts near chance
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20  # measured ~0.43
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in ds.eval_batches(500))
    assert correct / len(ds.x_val) > 0.4  # chance is 0.1; measured ~0.57


def test_transformer_learns_chars():
    ds = dataset("chars")
    model = build_model("transformer", ds, width=32, depth=1, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lossf = loss_fn(ds.task)
    losses = []
    for step in range(60):
        x, y = ds.batch("train", 16, step=step, seed=0)
        loss = lossf(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(ds.output_dim)) < 0.2  # uniform guess at init
    assert sum(losses[-10:]) / 10 < 0.75 * losses[0]  # measured ~0.65
