"""Shampoo and SOAP (pytorch-optimizer) as Graft's children, in the lab and in the app.

References are independent of Graft: each child optimizer is built straight from its package
over its own copies of the weights, stepped on copies of the same gradients, and the grafted
update w + ‖Δ_M‖/‖Δ_D‖ · Δ_D is formed by hand per tensor. They compare in float64: Shampoo's
inverse 4th roots of nearly singular statistics (eps 1e-6) amplify float32 rounding (two ways
of adding the same float32 step drift apart by 1e-4 within 6 steps; in float64 by 1e-12).
"""

import importlib.util
import io
import subprocess
import sys

import pytest
import torch
from streamlit.testing.v1 import AppTest

from grafting_core import Graft, describe
from grafting_core.lab.cli import main
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run, execute_run
from grafting_core.lab.runs.trainer import Trainer
from grafting_core.lab.store.run_store import RunStore
from grafting_core.registry import PYTORCH_OPTIMIZER, build_optimizer
from tests.helpers import ROOT, compute_grads, make_model, max_relative_difference, train

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytorch_optimizer") is None,
    reason=f"shampoo and soap need {PYTORCH_OPTIMIZER} (requirements.txt)",
)

# Hyperparameters that exercise each optimizer's whole step in a few steps: Shampoo's momentum
# and coupled weight decay change p.grad in place inside the package; SOAP refreshes its
# eigenbases every 2nd step (its first step only sets up the preconditioner and does not move).
HPARAMS = {
    "shampoo": {"lr": 0.3, "momentum": 0.5, "weight_decay": 1e-2},
    "soap": {"lr": 1e-2, "precondition_frequency": 2, "weight_decay": 1e-2},
    "adam": {"lr": 1e-2},
}


def package_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class straight from its package (never through the registry)."""
    import pytorch_optimizer

    return {
        "shampoo": pytorch_optimizer.Shampoo,
        "soap": pytorch_optimizer.SOAP,
        "adam": torch.optim.Adam,
    }[name]


class Proposer:
    """One optimizer alone on its own copies of the weights: the step it proposes at w, g."""

    def __init__(self, name: str, weights: list[torch.Tensor], hparams: dict) -> None:
        self.params = [w.detach().clone().requires_grad_() for w in weights]
        self.optimizer = package_class(name)(self.params, **hparams)

    def propose(self, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list:
        """Δ = opt(w, g) − w, on copies of ``weights`` and ``grads``."""
        with torch.no_grad():
            for p, w, g in zip(self.params, weights, grads):
                p.copy_(w)
                p.grad = g.clone()
        self.optimizer.step()
        return [p.detach() - w for p, w in zip(self.params, weights)]


def reference_graft(magnitude: str, direction: str, steps: int) -> list[torch.Tensor]:
    """The weights after ``steps`` grafted steps, each formed by hand per tensor."""
    model = make_model(torch.float64)
    weights = [p.detach().clone() for p in model.parameters()]
    m = Proposer(magnitude, weights, HPARAMS[magnitude])
    d = Proposer(direction, weights, HPARAMS[direction])
    for step in range(steps):
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights):
                p.copy_(w)
        compute_grads(model, step)
        grads = [p.grad for p in model.parameters()]
        delta_m, delta_d = m.propose(weights, grads), d.propose(weights, grads)
        weights = [
            w if dd.norm() == 0 else w + dm.norm() / dd.norm() * dd
            for w, dm, dd in zip(weights, delta_m, delta_d)
        ]
    return weights


@pytest.mark.parametrize(
    "magnitude,direction",
    [("adam", "shampoo"), ("adam", "soap"), ("shampoo", "adam"), ("soap", "adam")],
)
def test_graft_equals_the_update_formed_by_hand(magnitude, direction):
    """M#D over 6 steps = w + ‖Δ_M‖/‖Δ_D‖·Δ_D per tensor, children stepped on their own."""
    model = make_model(torch.float64)
    opt = Graft(
        model.named_parameters(), (magnitude, HPARAMS[magnitude]), (direction, HPARAMS[direction])
    )
    assert not opt.native
    train(model, opt, 6)
    expected = reference_graft(magnitude, direction, 6)
    for p, w in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_a_grafted_onto_itself_is_a(name):
    """A(lr)#A(7·lr) = plain A(lr) from the package, over 20 steps (D's lr cancels).

    SOAP without weight decay: it decays the already moved weights, (w − lr·u)(1 − lr·wd),
    so with weight decay its step is not proportional to lr and D's lr would not cancel.
    """
    hparams = {**HPARAMS[name], "weight_decay": 0.0} if name == "soap" else HPARAMS[name]
    grafted, plain = make_model(torch.float64), make_model(torch.float64)
    faster = {**hparams, "lr": 7 * hparams["lr"]}
    train(grafted, Graft(grafted.named_parameters(), (name, hparams), (name, faster)), 20)
    train(plain, package_class(name)(plain.parameters(), **hparams), 20)
    assert max_relative_difference(grafted, plain) < 1e-10


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_registry_optimizer_leaves_the_gradient_alone(name):
    """Graft hands M and D the same gradient: a child must not change ``p.grad``."""
    model = make_model()
    opt = build_optimizer((name, HPARAMS[name]), model.parameters())
    for step in range(3):
        compute_grads(model, step)
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize("direction", ["shampoo", "soap"])
def test_state_dict_round_trip_resumes_identically(direction):
    """Save after 4 steps (torch.save, weights_only load), resume: the next 4 steps match."""
    straight, resumed = make_model(), make_model()
    spec = ("adam", HPARAMS["adam"]), (direction, HPARAMS[direction])
    opt = Graft(straight.named_parameters(), *spec)
    train(straight, opt, 4)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed.load_state_dict(straight.state_dict())
    fresh = Graft(resumed.named_parameters(), *spec)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    train(straight, opt, 4, start=4)
    train(resumed, fresh, 4, start=4)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0 pytorch-optimizer=="):
        build_optimizer("shampoo", make_model().parameters())


TINY = dict(
    dataset="mnist1d",
    width=16,
    batch_size=32,
    eval_every=30,
    eval_examples=200,
    log_every=10,
    flush_seconds=0.0,
    schedule="constant",
)


def test_run_config_first_step_matches_the_reference():
    """RunConfig(direction="shampoo") → Trainer: its first update is Adam#Shampoo by hand."""
    config = RunConfig(
        **TINY,
        steps=1,
        magnitude="adam",
        magnitude_hparams=HPARAMS["adam"],
        direction="shampoo",
        direction_hparams=HPARAMS["shampoo"],
    )
    trainer, seen = Trainer(config), {}

    def before_training(trainer):
        seen["weights"] = [p.detach().clone() for p in trainer.model.parameters()]
        x, y = trainer.dataset.batch("train", config.batch_size, step=0, seed=config.seed)
        trainer.loss_fn(trainer.model(x), y).backward()
        seen["grads"] = [p.grad.clone() for p in trainer.model.parameters()]

    trainer.add_callback("on_start", before_training)
    assert trainer.run() == "finished"
    weights, grads = seen["weights"], seen["grads"]
    delta_m = Proposer("adam", weights, HPARAMS["adam"]).propose(weights, grads)
    delta_d = Proposer("shampoo", weights, HPARAMS["shampoo"]).propose(weights, grads)
    for p, w, dm, dd in zip(trainer.model.parameters(), weights, delta_m, delta_d):
        torch.testing.assert_close(p.detach(), w + dm.norm() / dd.norm() * dd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("magnitude,direction", [("adam", "shampoo"), ("soap", "")])
def test_lab_runs_learn_and_resume(tmp_path, magnitude, direction):
    """Through the run store: a 60-step run lowers the loss; stopped and resumed it matches."""
    store = RunStore(tmp_path / "runs")
    config = RunConfig(
        **TINY,
        steps=60,
        magnitude=magnitude,
        magnitude_hparams=HPARAMS[magnitude],
        direction=direction,
        direction_hparams=HPARAMS.get(direction, {}),
    )
    straight, stopped = create_run(store, config), create_run(store, config)
    assert execute_run(store, straight) == "finished"
    loss = store.metrics(straight, names=["train_loss"])["value"].tolist()
    assert sum(loss[-10:]) < 0.9 * sum(loss[:10])
    calls = []
    assert (
        execute_run(store, stopped, should_stop=lambda: calls.append(1) or len(calls) >= 3)
        == "stopped"
    )
    assert execute_run(store, stopped, resume=True) == "finished"
    a, b = (
        store.metrics(r, names=["train_loss", "val_loss"]).drop(columns="run_id")
        for r in (straight, stopped)
    )
    assert a.equals(b)
    store.close()


def test_cli_trains_adam_grafted_shampoo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAFTING_RUNS_DIR", str(tmp_path / "runs"))
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist1d",
                "--width",
                "16",
                "--steps",
                "10",
                "--batch-size",
                "32",
                "--eval-examples",
                "100",
                "--magnitude",
                "adam",
                "--direction",
                "soap",
            ]
        )
        == 0
    )
    assert "finished at step 10" in capsys.readouterr().out


@pytest.mark.app_store  # the Graft lab page reads the store
def test_app_offers_shampoo_and_soap_as_magnitude_and_direction(store):
    """The Graft lab lists them for M and D, with their registry defaults as widgets."""
    at = AppTest.from_file(str(ROOT / "pages" / "graft_lab.py"), default_timeout=60).run()
    assert not at.exception
    for role in ("magnitude", "direction"):
        assert {"shampoo", "soap"} <= set(at.selectbox(key=f"lab.{role}").options)
    at.selectbox(key="lab.direction").set_value("shampoo").run()
    assert not at.exception
    assert any(c.value == describe("shampoo") for c in at.caption)
    steps = at.number_input(key="lab.direction.shampoo.preconditioning_compute_steps")
    assert steps.value == 1


def test_bench_quick_run_prints_every_arm():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shampoo.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("mnist1d")]
    assert [row[1] for row in rows] == ["adam", "shampoo", "soap", "adam#shampoo", "adam#soap"]
