"""Every kind of run, through the engine (RunConfig → store → Trainer), against torch.optim.

Each test trains a run the way users do (``create_run`` + ``execute_run``, reading the final
weights from the run's checkpoint) and compares them with an independent loop: the same
model, batches and loss, stepped by ``torch.optim`` with a hand-written schedule. Static
ratios once took lr²·c instead of lr·c (the lr was applied by both Graft and D); the
static-ratio tests fail if that comes back.
"""

import io
import math

import pytest
import torch

from grafting_core import Graft, StaticRatios
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.runner import create_run, execute_run
from grafting_core.lab.store.run_store import RunStore
from grafting_core.lab.tasks.data import load_dataset
from grafting_core.lab.tasks.models import build_model, default_model, loss_fn

STEPS, WARMUP = 24, 6
BASE = dict(
    dataset="digits",
    width=16,
    steps=STEPS,
    batch_size=32,
    eval_every=STEPS,
    eval_examples=64,
    log_every=4,
    flush_seconds=0.0,
)
SCHEDULES = ("constant", "warmup_cosine")


def factor(step: int, schedule: str) -> float:
    """The lr multiplier at ``step``: linear warm-up to 1, then cosine to 0 (written out)."""
    if schedule == "constant":
        return 1.0
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def config(schedule: str, **changes) -> RunConfig:
    warmup = WARMUP if schedule == "warmup_cosine" else 0
    return RunConfig(**BASE, schedule=schedule, warmup_steps=warmup, **changes)


def reference(
    make_optimizer, schedule: str, seed: int = 0, model: str = ""
) -> dict[str, torch.Tensor]:
    """Final weights of the same run stepped by a torch optimizer: ``make_optimizer(named)``."""
    dataset = load_dataset(BASE["dataset"], seed=seed)
    model = build_model(
        model or default_model(BASE["dataset"]), dataset, width=BASE["width"], seed=seed
    )
    optimizer = make_optimizer(list(model.named_parameters()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factor(s, schedule))
    loss = loss_fn(dataset.task)
    for step in range(STEPS):
        x, y = dataset.batch("train", BASE["batch_size"], step=step, seed=seed)
        optimizer.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def trained(store: RunStore, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """Train ``cfg`` through the store; the final weights from its checkpoint."""
    run_id = create_run(store, cfg)
    assert execute_run(store, run_id) == "finished"
    blob = store.get_artifact(run_id, "checkpoint")
    return torch.load(io.BytesIO(blob), weights_only=True)["model"]


def assert_same_weights(ours: dict, theirs: dict, tolerance: float = 1e-5) -> None:
    """Each tensor within ``tolerance`` of the other, relative to its norm (float32 rounding
    differs between the two loops; a wrong learning rate is off by orders more)."""
    assert list(ours) == list(theirs)
    for name in ours:
        a, b = ours[name].double(), theirs[name].double()
        assert float((a - b).norm() / b.norm()) < tolerance, name


def ratios_file(tmp_path, multiplier) -> str:
    """A static-ratios file for the lab model with ``multiplier(name)`` per parameter."""
    dataset = load_dataset(BASE["dataset"])
    model = build_model(default_model(BASE["dataset"]), dataset, width=BASE["width"])
    named = list(model.named_parameters())
    ratios = StaticRatios(
        {n: multiplier(n) for n, _ in named}, {n: list(p.shape) for n, p in named}, base_lr=0.05
    )
    return str(ratios.save(tmp_path / "ratios.json"))


SGD = {"lr": 0.05, "momentum": 0.9}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_static_ratios_of_one_train_exactly_like_plain_sgd(store, tmp_path, schedule):
    path = ratios_file(tmp_path, lambda name: 1.0)
    ours = trained(
        store, config(schedule, magnitude="sgd", magnitude_hparams=SGD, static_ratios=path)
    )
    theirs = reference(lambda named: torch.optim.SGD([p for _, p in named], **SGD), schedule)
    assert_same_weights(ours, theirs)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_static_ratios_give_each_layer_sgd_with_lr_times_its_ratio(store, tmp_path, schedule):
    spread = {}

    def multiplier(name):  # a different c per parameter, from 0.2 to 5
        spread[name] = 0.2 * 25 ** (len(spread) / 5)
        return spread[name]

    path = ratios_file(tmp_path, multiplier)
    ours = trained(
        store, config(schedule, magnitude="sgd", magnitude_hparams=SGD, static_ratios=path)
    )
    theirs = reference(
        lambda named: torch.optim.SGD(
            [{"params": [p], "lr": SGD["lr"] * spread[n]} for n, p in named], momentum=0.9
        ),
        schedule,
    )
    assert_same_weights(ours, theirs)


ADAM = {"lr": 3e-3}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_plain_and_self_grafted_adam_train_exactly_like_torch_adam(store, schedule):
    theirs = reference(lambda named: torch.optim.Adam([p for _, p in named], **ADAM), schedule)
    plain = trained(store, config(schedule, magnitude="adam", magnitude_hparams=ADAM))
    assert_same_weights(plain, theirs)
    self_grafted = trained(
        store,
        config(
            schedule,
            magnitude="adam",
            magnitude_hparams=ADAM,
            direction="adam",
            direction_hparams={"lr": 0.7},
        ),
    )
    assert_same_weights(self_grafted, theirs)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_replaying_adams_recorded_schedule_onto_adam_reproduces_adam(store, schedule):
    source = create_run(store, config(schedule, magnitude="adam", magnitude_hparams=ADAM))
    assert execute_run(store, source) == "finished"
    replay = trained(
        store,
        config("constant", direction="adam", direction_hparams={"lr": 5.0}, replay=f"run:{source}"),
    )
    theirs = reference(lambda named: torch.optim.Adam([p for _, p in named], **ADAM), schedule)
    assert_same_weights(replay, theirs)


def test_directions_learning_rate_cancels_in_a_graft(store):
    runs = [
        trained(
            store,
            config(
                "warmup_cosine",
                magnitude="adam",
                magnitude_hparams=ADAM,
                direction="sgd",
                direction_hparams={"lr": lr, "momentum": 0.9},
            ),
        )
        for lr in (0.1, 12.3)
    ]
    assert_same_weights(*runs)


def test_graft_refuses_static_ratio_groups_which_would_apply_the_lr_twice():
    model = torch.nn.Linear(3, 2)
    named = list(model.named_parameters())
    ratios = StaticRatios({n: 2.0 for n, _ in named}, {n: list(p.shape) for n, p in named}, 0.1)
    groups = ratios.param_groups(named)
    assert [g["lr"] for g in groups] == [pytest.approx(0.2)] * 2
    with pytest.raises(ValueError, match="lr² · c"):
        Graft(groups, ("sgd", {"lr": 0.1}), None)
    sgd = torch.optim.SGD(groups)  # the intended use: D over the groups, Graft over the names
    assert Graft(named, sgd, None).magnitude is sgd


def test_replay_with_a_schedule_of_its_own_is_refused():
    with pytest.raises(ValueError, match="twice"):
        RunConfig(direction="sgd", replay="run:x", schedule="warmup_cosine", warmup_steps=5)
    with pytest.raises(ValueError, match="direction empty"):
        RunConfig(direction="sgd", static_ratios="run:x")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_partial_graft_grafts_hidden_matrices_and_gives_the_rest_adams_own_step(store, schedule):
    """Adam#SGD on the MLP's hidden matrices only, against torch Adam and SGD stepped side by
    side on copies of the weights, the graft written out per tensor."""
    sgd = {"lr": 0.1, "momentum": 0.9}
    ours = trained(
        store,
        config(
            schedule,
            model="mlp",
            magnitude="adam",
            magnitude_hparams=ADAM,
            direction="sgd",
            direction_hparams=sgd,
            grafted=["hidden"],
        ),
    )

    class SideBySide(torch.optim.Optimizer):
        """Steps torch Adam and SGD on shadow copies; applies the partial graft to ``named``."""

        def __init__(self, named):
            self.named = named
            super().__init__([p for _, p in named], {"lr": ADAM["lr"]})
            self.shadow = {name: [p.detach().clone() for _, p in named] for name in "ms"}
            self.adam = torch.optim.Adam(self.shadow["m"], **ADAM)
            self.sgd = torch.optim.SGD(self.shadow["s"], **sgd)

        @torch.no_grad()
        def step(self):
            self.adam.param_groups[0]["lr"] = self.param_groups[0]["lr"]  # the schedule
            for copies, opt in ((self.shadow["m"], self.adam), (self.shadow["s"], self.sgd)):
                for (_, p), c in zip(self.named, copies):
                    c.copy_(p)
                    c.grad = p.grad.clone()
                opt.step()
            for (name, p), m, s in zip(self.named, self.shadow["m"], self.shadow["s"]):
                delta_m, delta_s = (m - p).double(), (s - p).double()
                hidden = p.dim() == 2 and not name.startswith("out")
                step = delta_s * delta_m.norm() / delta_s.norm() if hidden else delta_m
                p.add_(step.to(p.dtype))

    dataset = load_dataset(BASE["dataset"])
    model = build_model("mlp", dataset, width=BASE["width"])
    assert [n for n, p in model.named_parameters() if p.dim() == 2][-1].startswith("out")
    theirs = reference(SideBySide, schedule, model="mlp")
    assert_same_weights(ours, theirs)
