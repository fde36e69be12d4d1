"""The protocol's second tuning seed (each warm-up's leaders at the rung train to the end on
every tuning seed, the best mean over them is chosen) and its two controls: the positive one
(M#D is M step for step) and the negative one (M = the graft X#Y, D = tuned X: M#D is D step
for step), each on the first three reporting seeds."""

import pandas as pd
import pytest
import torch

from grafting_core.lab.experiments.compare import compare, read_comparison
from grafting_core.lab.experiments.comparison_plan import (
    CONTROL_SEEDS,
    PROTOCOL,
    SweepPlan,
    comparison_request,
    plan_comparison,
)
from grafting_core.lab.experiments.comparison_reading import control_text
from grafting_core.lab.runs.config import RunConfig
from tests.helpers import PAIR
from tests.helpers import SEARCH_TINY as TINY


def _finals(store, runs):
    """Each run's last val_loss, by run id, read from the raw metrics."""
    values = store.metrics(runs["run_id"].tolist(), names=["val_loss"])
    return values.sort_values("step").groupby("run_id")["value"].last()


def test_the_leaders_train_on_every_tuning_seed_and_the_best_mean_is_chosen(store):
    plan = SweepPlan(
        points=3, factor=10, extensions=0, warmups=(0.1, 0.3), tune_seeds=(100, 101), rung=1 / 3,
    )  # fmt: skip
    seeds = (0, 1)
    planned = plan_comparison(RunConfig(**TINY), PAIR, seeds=seeds, plan=plan)
    result = compare(store, RunConfig(**TINY), PAIR, seeds=seeds, plan=plan)
    runs = store.runs(group=result.group)
    search = runs[runs["role"] == "sweep_point"]
    first, second = search[search["config.seed"] == 100], search[search["config.seed"] == 101]
    assert len(first) == 2 * 3 * 2  # every setting to the rung on the first tuning seed
    assert (first["status"] == "finished").sum() == 2 * 2  # each warm-up's leader on
    # the second tuning seed trains only the leaders, from scratch to the end
    assert len(second) == 2 * 2 and (second["status"] == "finished").all()
    key = ["magnitude_arm", "config.magnitude_hparams.lr", "config.warmup_steps"]
    leaders = first[first["status"] == "finished"]
    assert sorted(map(tuple, second[key].to_numpy())) == sorted(map(tuple, leaders[key].to_numpy()))
    # the choice: the lowest mean over both tuning seeds, computed here from the metrics
    done = search[search["status"] == "finished"].set_index("run_id")
    done["value"] = _finals(store, done.reset_index())
    means = done.groupby(key)["value"].agg(["mean", "size"]).reset_index()
    assert (means["size"] == 2).all()
    for arm, cell in means.groupby("magnitude_arm"):
        best = cell.loc[cell["mean"].idxmin()]
        row = result.sweep[result.sweep["best"] & (result.sweep["arm"] == arm)].iloc[0]
        assert (row["lr"], row["warmup"]) == (best[key[1]], best[key[2]])
        assert row["mean"] == pytest.approx(best["mean"]) and row["seeds"] == 2
    trained = runs["last_step"].sum() / TINY["steps"]
    # 2 arms × (6 settings × 1/3 + 2 leaders × 2/3 + 2 leaders on seed 101) + 2 × 2 reruns
    # + 2 × 2 grafts
    assert trained == pytest.approx(2 * (6 / 3 + 2 * 2 / 3 + 2) + 4 + 4)
    assert planned.budget == (pytest.approx(trained),) * 2 and len(runs) == planned.fewest


def test_a_plan_stored_before_rung_seeds_keeps_every_tuning_seed_at_the_rung(store):
    plan = SweepPlan(points=2, tune_seeds=(100, 101), rung=0.5, rung_seeds=0)
    assert plan.ranking_seeds((100, 101)) == (100, 101)
    assert SweepPlan(tune_seeds=(100, 101), rung=0.5).ranking_seeds((100, 101)) == (100,)
    assert SweepPlan(tune_seeds=(100, 101)).ranking_seeds((100, 101)) == (100, 101)  # no rung
    stored = {"points": 2, "tune_seeds": [100, 101], "rung": 0.5}  # no rung_seeds key
    store.set_group_request(
        "old",
        "compare",
        {
            "base": RunConfig(**TINY).to_dict(),
            "optimizers": {k: list(v) for k, v in PAIR.items()},
            "seeds": [0],
            "plan": stored,
            "partial": [],
            "metric": "val_loss",
        },
    )
    assert comparison_request(store, "old")["plan"].rung_seeds == 0
    with pytest.raises(ValueError, match="Invalid rung_seeds"):
        SweepPlan(rung_seeds=-1)


def test_the_protocol_plans_a_second_tuning_seed_and_both_controls():
    planned = plan_comparison(RunConfig(**TINY), PAIR, seeds=range(5), plan=PROTOCOL)
    controls = 3 * CONTROL_SEEDS  # positive: M and graft; negative: the graft alone
    search = 10 / 2 + 2 * 1 / 2 + 2  # per arm: to the rung, the leaders on, and on seed 2
    assert planned.budget[0] == pytest.approx(2 * (search + 5) + 10 + controls)
    assert planned.budget[0] - controls == pytest.approx(36)
    text = planned.text()
    assert "on 1 tuning seed, each to 50% of the steps" in text
    assert "on to the end on 2 tuning seeds" in text
    assert "a positive and a negative control (9 runs)" in text


class FixedDirection(torch.optim.Optimizer):
    """Steps along one fixed random direction per tensor, whatever the gradient: a direction
    that cannot train, so that X#Y (X's step sizes, these directions) is told apart from X on
    a small task where every real direction trains alike (the paper's finding)."""

    def __init__(self, params, lr: float = 0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if "direction" not in self.state[p]:
                    generator = torch.Generator().manual_seed(p.numel())
                    self.state[p]["direction"] = torch.randn(p.shape, generator=generator)
                p.add_(self.state[p]["direction"], alpha=-group["lr"])


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """A comparison with both controls on 5 reporting seeds: long enough that sgd at a tenth
    of its lr is told apart from sgd, and sgd#fixed (sgd's step sizes along fixed random
    directions) from sgd."""
    from grafting_core.lab.store.run_store import RunStore

    store = RunStore(tmp_path_factory.mktemp("controls"))
    plan = SweepPlan(points=2, factor=10, extensions=0, control=True)
    base = RunConfig(**{**TINY, "steps": 60, "eval_every": 60})
    pair = {
        "sgd": ("sgd", {"lr": 0.3, "momentum": 0.9}),
        "fixed": (f"{__name__}:FixedDirection", {"lr": 0.01}),
    }
    planned = plan_comparison(base, pair, seeds=range(5), plan=plan)
    result = compare(store, base, pair, seeds=range(5), plan=plan)
    yield store, planned, result
    store.close()


def _tuned(store, runs):
    """Each tuned arm's final val_loss per reporting seed, from the raw metrics."""
    tuned = runs[runs["role"] == "tuned"]
    finals = _finals(store, tuned)
    return {
        arm: finals[cell["run_id"]].set_axis(cell["config.seed"].to_numpy()).sort_index()
        for arm, cell in tuned.groupby("magnitude_arm")
    }


def test_the_controls_train_on_the_first_three_seeds_and_are_counted(controlled):
    store, planned, result = controlled
    runs = store.runs(group=result.group)
    assert len(runs) == planned.fewest
    for role in ("control", "control_graft", "negative_control"):
        assert sorted(runs.loc[runs["role"] == role, "config.seed"]) == [0, 1, 2], role
    assert list(result.controls["control"]) == ["positive", "negative"]
    # the negative control's pair: the tuned arms farthest apart, the worse one as X
    tuned = _tuned(store, runs)
    worse, better = sorted(tuned, key=lambda arm: -tuned[arm].mean())
    assert (worse, better) == ("fixed", "sgd")  # fixed directions cannot train
    assert result.controls[["magnitude", "direction"]].values.tolist() == [
        ["sgd@lr/10", "sgd"],
        [f"{worse}#{better}", worse],
    ]


def test_the_negative_control_is_d_step_for_step_and_judges_like_d(controlled):
    store, _, result = controlled
    runs = store.runs(group=result.group)
    tuned = _tuned(store, runs)
    x, y = "fixed", "sgd"
    negative = runs[runs["role"] == "negative_control"]
    config = store.run(negative["run_id"].iloc[0])["config"]
    plain = runs[runs["role"] == "tuned"].drop_duplicates("magnitude_arm")
    lr = dict(zip(plain["magnitude_arm"], plain["config.magnitude_hparams.lr"]))
    # M is a Graft of tuned X's step sizes and tuned Y's directions; D is tuned X
    assert config["magnitude"] == "grafting_core.graft:Graft"
    assert config["magnitude_hparams"]["magnitude"][1]["lr"] == lr[x]
    assert config["magnitude_hparams"]["direction"] == ["sgd", {"lr": lr[y], "momentum": 0.9}]
    assert (config["direction_hparams"]["lr"], config["magnitude_hparams"]["magnitude"][0]) == (
        lr[x],
        config["direction"],
    )
    finals = _finals(store, negative)
    g = finals[negative["run_id"]].set_axis(negative["config.seed"].to_numpy()).sort_index()
    d = tuned[x].loc[[0, 1, 2]]
    assert g.to_numpy() == pytest.approx(d.to_numpy(), rel=1e-4)  # (X#Y)#X is X, seed by seed
    graft = runs[(runs["role"] == "graft") & (runs["magnitude_arm"] == x)]
    m = _finals(store, graft)[graft["run_id"]].set_axis(graft["config.seed"].to_numpy())
    # X#Y is not X: the control can show something
    assert (m.loc[[0, 1, 2]] - d).abs().min() > 1e-2
    negative_row = result.controls[result.controls["control"] == "negative"].iloc[0]
    assert negative_row["label"] == "like D" and negative_row["passed"]
    assert f"Negative control ({x}#{y})#{x}" in control_text(result.controls)


def test_the_controls_are_read_back_from_the_store(controlled):
    store, _, result = controlled
    again = read_comparison(store, result.group)
    assert again.controls.equals(result.controls)
    assert again.excluded == 0  # the nested graft's runs are the comparison's own


def test_a_best_at_the_longest_warm_up_searches_twice_it_next():
    from grafting_core.lab.experiments.compare import _longer_warmups

    base = RunConfig(**{**TINY, "steps": 100})
    sweep = pd.DataFrame(
        {
            "arm": ["a"] * 4 + ["b"] * 4 + ["c"] * 2,
            "lr": [0.1, 1.0] * 5,
            "warmup": [5, 5, 30, 30] * 2 + [60, 60],
            "best": [False, False, True, False, False, True, False, False, True, False],
        }
    )
    # a: best at the longest (30 steps): 60 next; b: best at the shortest; c: one warm-up
    assert _longer_warmups(sweep, base) == {"a": 60}
    capped = sweep.assign(warmup=[5, 5, 40, 40] * 2 + [60, 60])
    assert _longer_warmups(capped, base) == {"a": 60}  # twice 40, at most 60% of the steps
    at_cap = sweep.assign(warmup=[5, 5, 60, 60] * 2 + [60, 60])
    assert _longer_warmups(at_cap, base) == {}
    assert SweepPlan(warmups=(0.05, 0.3)).longer_warmups() == 1  # 60%
    assert SweepPlan(warmups=(0.05, 0.1)).longer_warmups() == 2  # 20%, 40% (2 rounds)
    assert SweepPlan(warmups=(0.05, 0.6)).longer_warmups() == 0


def test_compare_searches_a_longer_warm_up_where_the_best_sits_at_the_longest(store):
    plan = SweepPlan(points=2, factor=10, extensions=1, warmups=(0.1, 0.3))
    base = RunConfig(**TINY)  # 15 steps: warm-ups 2 and 4 steps, then 8 (at most 9)
    planned = plan_comparison(base, PAIR, seeds=(0,), plan=plan)
    result = compare(store, base, PAIR, seeds=(0,), plan=plan)
    runs = store.runs(group=result.group)
    search = runs[runs["role"].isin(["sweep_point", "tuned"]) & (runs["config.seed"] == 0)]
    search = search[search["run_id"].isin(runs["run_id"])].set_index("run_id")
    search["value"] = _finals(store, search.reset_index())
    for arm, cell in search.groupby("magnitude_arm"):
        first = cell[cell["config.warmup_steps"].isin([2, 4])]
        first = first[first["config.magnitude_hparams.lr"].isin(plan.grid(PAIR[arm][1]["lr"]))]
        means = first.groupby(["config.magnitude_hparams.lr", "config.warmup_steps"])["value"]
        best_warmup = means.mean().idxmin()[1]
        tried = set(cell["config.warmup_steps"])
        assert tried == ({2, 4, 8} if best_warmup == 4 else {2, 4}), (arm, tried)
    assert planned.fewest <= len(runs) <= planned.most


def test_the_controls_reading_says_what_each_shows_and_a_search_that_missed():
    def control(kind, m, d, label, ci, m_mean, d_mean):
        return {
            "control": kind,
            "magnitude": m,
            "direction": d,
            "label": label,
            "position": 0.0 if kind == "positive" else 1.0,
            "ci_low": ci[0],
            "ci_high": ci[1],
            "magnitude_mean": m_mean,
            "direction_mean": d_mean,
            "passed": label == ("like M" if kind == "positive" else "like D"),
        }

    inf = float("inf")
    text = control_text(
        pd.DataFrame(
            [
                control("positive", "sgd@lr/10", "sgd", "like M", (-0.01, 0.01), 1.17, 1.38),
                control("negative", "adam#sgd", "adam", "cannot tell", (-inf, inf), 1.4, 1.41),
            ]
        )
    )
    assert text.startswith("Positive control sgd@lr/10#sgd") and "like M (sgd@lr/10)" in text
    assert "beat tuned sgd on these seeds (1.17 against 1.38)" in text
    assert "Negative control (adam#sgd)#adam" in text and "shows nothing" in text
    slower = control("positive", "sgd@lr/10", "sgd", "like M", (-0.01, 0.01), 1.5, 1.38)
    failed = control("negative", "adam#sgd", "adam", "closer to M", (0.1, 0.4), 1.2, 1.4)
    text = control_text(pd.DataFrame([slower, failed]))
    assert "beat" not in text  # a tenth of the lr trained worse: the search is not faulted
    assert "did NOT come out like D: the lab cannot show direction deciding" in text
