"""Where grafted results land between their parents: positions and verdicts by hand."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from grafting_core.lab.experiments.verdict import (
    LABELS,
    arm_summary,
    betainc,
    comparison_reading,
    grid_leaning,
    holm,
    holm_judgments,
    in_words,
    judge,
    label_words,
    matrix_leaning,
    path_leaning,
    position,
    t_cdf,
    t_ppf,
    t_sf,
)
from grafting_core.lab.tasks.toy2d import Path, grafted_paths, make_problem


def _table(cells: dict[tuple[str, str], list[float]], failed=()) -> pd.DataFrame:
    """A grid_table-like frame: one row per (M, D, seed)."""
    rows = [
        {
            "magnitude": m,
            "direction": d,
            "seed": seed,
            "val_loss": value,
            "status": "failed" if (m, d, seed) in failed else "finished",
        }
        for (m, d), values in cells.items()
        for seed, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


CELLS = {
    ("a", "a"): [1.0, 1.1, 0.9],
    ("a", "b"): [1.2, 1.3, 1.1],
    ("b", "a"): [1.9, 1.0, 1.95],
    ("b", "b"): [2.0, 2.1, 1.9],
}


def test_position_is_zero_at_magnitude_and_one_at_direction():
    assert position(1.0, 1.0, 3.0) == 0.0
    assert position(3.0, 1.0, 3.0) == 1.0
    assert position(0.0, 1.0, 3.0) == -0.5
    assert math.isnan(position(2.0, 1.0, 1.0))


def test_grid_leaning_by_hand():
    lean = grid_leaning(_table(CELLS)).set_index(["magnitude", "direction"])
    assert list(lean.index) == [("a", "b"), ("b", "a")]
    ab = lean.loc[("a", "b")]
    assert ab["position"] == pytest.approx((1.2 - 1.0) / (2.0 - 1.0))
    assert ab["seeds_toward_magnitude"] == 3 and ab["seeds"] == 3
    assert ab["leans"] == "magnitude"
    ba = lean.loc[("b", "a")]
    mean = (1.9 + 1.0 + 1.95) / 3
    assert ba["graft"] == pytest.approx(mean)
    assert ba["position"] == pytest.approx((mean - 2.0) / (1.0 - 2.0))
    assert ba["seeds_toward_magnitude"] == 2  # seed 1 (1.0) sits on a's 1.1
    noise = pd.Series([1.9, 1.0, 1.95]).std()
    assert ba["noise"] == pytest.approx(noise)
    assert 1.0 <= 2 * noise and ba["leans"] == "unclear"  # M and D within the seeds' noise


def test_grid_leaning_toward_direction_neither_and_incomplete_cells():
    cells = {**CELLS, ("a", "b"): [1.9, 2.0, 2.1]}
    lean = grid_leaning(_table(cells)).set_index(["magnitude", "direction"])
    assert lean.loc[("a", "b"), "leans"] == "direction"
    assert lean.loc[("a", "b"), "seeds_toward_magnitude"] == 0
    cells = {**CELLS, ("a", "b"): [0.0, 0.1, -0.1]}  # a whole M-D gap beyond M: like neither
    lean = grid_leaning(_table(cells)).set_index(["magnitude", "direction"])
    assert lean.loc[("a", "b"), "position"] == pytest.approx(-1.0)
    assert lean.loc[("a", "b"), "seeds_toward_magnitude"] == 3
    assert lean.loc[("a", "b"), "leans"] == "neither"
    failed = {("b", "b", s) for s in range(3)}
    lean = grid_leaning(_table(CELLS, failed=failed)).set_index(["magnitude", "direction"])
    assert (lean["leans"] == "incomplete").all() and (lean["seeds"] == 0).all()


def _path(label: str, end: float, stride: float, steps: int = 20) -> Path:
    points = torch.stack([torch.tensor([i * stride, 0.0]) for i in range(steps + 1)])
    losses = torch.logspace(0, math.log10(end), steps + 1, dtype=torch.float64)
    return Path(label, points.double(), losses)


def test_path_leaning_on_log_losses():
    paths = {
        "M": _path("M", 1e-6, 0.1),
        "D": _path("D", 1e-2, 0.3),
        "M#D": _path("M#D", 1e-5, 0.1),
        "D#M": _path("D#M", 1e-3, 0.3),
    }
    table = path_leaning(paths)
    assert table.loc["M", "end_loss"] == pytest.approx((10 ** (-6 * 19 / 20) + 1e-6) / 2)
    assert table.loc["M#D", "mean_step"] == pytest.approx(0.1)
    assert (table["scale"] == "log10").all()
    ends = {k: math.log10(table.loc[k, "end_loss"]) for k in paths}
    assert table.loc["M#D", "position"] == pytest.approx(
        (ends["M#D"] - ends["M"]) / (ends["D"] - ends["M"])
    )
    assert table.loc["D#M", "magnitude_from"] == "D" and table.loc["D#M", "direction_from"] == "M"
    assert table.loc["D#M", "position"] == pytest.approx(
        (ends["D#M"] - ends["D"]) / (ends["M"] - ends["D"])
    )
    assert table.loc["M#D", "leans"] == "magnitude" and table.loc["D#M", "leans"] == "magnitude"


def test_path_leaning_on_real_paths_with_negative_losses():
    paths = grafted_paths(
        make_problem("saddle"), ("adam", {"lr": 0.05}), ("sgd", {"lr": 0.01}), steps=40
    )
    table = path_leaning(paths)
    assert list(table.index) == ["M", "D", "M#D", "D#M"]
    assert (table["scale"] == "linear").all()  # the saddle's losses go below zero
    for key, path in paths.items():
        tail = sorted(path.losses[-4:].tolist())  # 10% of 40 steps
        tail = (tail[1] + tail[2]) / 2
        assert table.loc[key, "end_loss"] == pytest.approx(tail)
    assert table.loc[["M#D", "D#M"], "position"].notna().all()


def test_positions_in_words():
    assert in_words(0.2, "adam", "sgd") == "nearer adam"
    assert in_words(0.8, "adam", "sgd") == "nearer sgd"
    assert in_words(-0.3, "adam", "sgd").startswith("beyond adam")
    assert in_words(1.4, "adam", "sgd").startswith("beyond sgd")
    assert in_words(float("nan")) == "undefined (M and D tie)"


def test_matrix_leaning_splits_the_variance_by_rows_and_columns():
    rows_only = pd.DataFrame([[1.0, 1.0], [3.0, 3.0]], index=["a", "b"], columns=["a", "b"])
    lean = matrix_leaning(rows_only)
    assert lean["magnitude_share"] == pytest.approx(1.0) and lean["leans"] == "magnitude"
    mixed = pd.DataFrame([[1.0, 2.0], [3.0, 5.0]], index=["a", "b"], columns=["a", "b"])
    lean = matrix_leaning(mixed)
    # grand mean 2.75; row means 1.5, 4; column means 2, 3.5; total SS 8.75
    assert lean["magnitude_share"] == pytest.approx(2 * (1.25**2 + 1.25**2) / 8.75)
    assert lean["direction_share"] == pytest.approx(2 * (0.75**2 + 0.75**2) / 8.75)
    assert lean["interaction_share"] == pytest.approx(1 - (6.25 + 2.25) / 8.75)
    assert lean["leans"] == "magnitude"
    assert matrix_leaning(mixed.T)["leans"] == "direction"
    assert matrix_leaning(mixed.where(mixed < 5))["leans"] == "incomplete"


def _verdict_row(m, d, grafted, g, verdict, position_, std=0.01):
    return {
        "magnitude": m,
        "direction": d,
        "grafted": grafted,
        "graft_mean": g,
        "magnitude_mean": 1.4,
        "direction_mean": 1.6,
        "position": position_,
        "verdict": verdict,
        "reason": "because",
        **{f"{arm}_std": std for arm in ("graft", "magnitude", "direction")},
        **{f"{arm}_seeds": 3 for arm in ("graft", "magnitude", "direction")},
    }


def test_comparison_reading_says_edges_verdicts_and_what_a_partial_graft_removes():
    sweep = pd.DataFrame(
        {
            "arm": ["adam", "adam", "sgd", "sgd"],
            "lr": [1e-3, 1e-2, 0.1, 1.0],
            "mean": [1.5, 1.4, 1.6, 1.7],
            "std": [0.01] * 4,
            "seeds": 3,
            "best": [False, True, True, False],
            "at_edge": [False, True, False, False],
        }
    )
    verdicts = pd.DataFrame(
        [
            _verdict_row("adam", "sgd", "hidden", 1.45, "magnitude", 0.25),
            _verdict_row("adam", "sgd", "all", 1.5, "cannot tell", 0.5),
            _verdict_row("sgd", "adam", "all", 1.58, "magnitude", 0.1),
        ]
    )
    lines = comparison_reading(sweep, verdicts)
    adam, sgd = lines[0], lines[1]
    assert "lr 0.01" in adam and "edge" in adam and "lr 0.1" in sgd and "edge" not in sgd
    grafts = [line for line in lines if line.startswith("- **adam#sgd**")]
    assert "cannot tell" in grafts[0] and "hidden layers only" in grafts[1]  # full, then partial
    assert "1 are closer to M, 0 closer to D, 1 cannot" in lines[-2]
    assert "holds for every graft that can be judged (1)" in lines[-2]
    partial = lines[-1]
    assert "1.4500 against the full graft's 1.5000 (-0.05; beyond 2 standard errors" in partial
    assert "removes 50% of the full graft's distance from adam" in partial  # 1 - 0.25/0.5
    noisy = pd.DataFrame(
        [
            _verdict_row("adam", "sgd", "all", 1.5, "cannot tell", 0.5, std=0.3),
            _verdict_row("adam", "sgd", "hidden", 1.45, "magnitude", 0.25, std=0.3),
        ]
    )
    partial = comparison_reading(sweep, noisy)[-1]  # M, D within 2 se: no position, "within"
    assert "within 2 standard errors" in partial and "cannot be told apart" in partial
    assert "removes" not in partial


def test_comparison_reading_cannot_judge_when_every_verdict_is_cannot_tell():
    sweep = pd.DataFrame(
        {
            "arm": ["a", "b"],
            "lr": [1.0, 1.0],
            "mean": [1.0, 1.0],
            "std": [0.1, 0.1],
            "seeds": 2,
            "best": True,
            "at_edge": True,
        }
    )
    verdicts = pd.DataFrame(
        [
            _verdict_row("a", "b", "all", 1.0, "cannot tell", 0.5),
            _verdict_row("b", "a", "all", 1.0, "cannot tell", 0.5),
        ]
    )
    assert "cannot be judged here" in comparison_reading(sweep, verdicts)[-1]


# -- judge: the statistics behind a verdict (calibrated by simulation in
# test_verdict_calibration.py) --


@pytest.mark.parametrize(
    ("df", "quantile"),
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (5, 2.5706), (9, 2.2622), (math.inf, 1.9600)],
)
def test_t_quantiles_match_the_table(df, quantile):
    assert t_ppf(0.975, df) == pytest.approx(quantile, abs=1e-4)
    assert t_sf(t_ppf(0.975, df), df) == pytest.approx(0.025, rel=1e-10)
    assert t_ppf(0.025, df) == pytest.approx(-quantile, abs=1e-4)


def test_t_distribution_against_closed_forms():
    for t in (-30.0, -2.0, -0.3, 0.0, 0.7, 3.0, 50.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
        assert t_cdf(t, 5) + t_cdf(-t, 5) == pytest.approx(1.0, abs=1e-14)
        assert t_cdf(t, math.inf) == pytest.approx(0.5 * math.erfc(-t / math.sqrt(2)), abs=1e-15)
    assert t_ppf(0.995, 4) == pytest.approx(4.6041, abs=1e-4)  # a table's 99% two-sided
    assert t_ppf(0.95, 2) == pytest.approx(0.9 / math.sqrt(2 * 0.95 * 0.05), rel=1e-12)
    # a fractional (Welch) df against the density integrated numerically
    x = np.linspace(0.0, 2.0, 20001)
    df = 2.5
    density = (
        (1 + x**2 / df) ** (-(df + 1) / 2)
        * math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2))
        / math.sqrt(df * math.pi)
    )
    integral = float(((density[1:] + density[:-1]) / 2 * np.diff(x)).sum())
    assert t_cdf(2.0, df) == pytest.approx(0.5 + integral, abs=1e-8)
    assert t_sf(1e6, 3) > 0 and t_sf(1e6, 3) < 1e-15  # a far tail, not 0 or negative


def test_incomplete_beta_by_hand():
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert betainc(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert betainc(3, 1, x) == pytest.approx(x**3, abs=1e-14)
        assert betainc(2, 2, x) == pytest.approx(3 * x**2 - 2 * x**3, abs=1e-14)
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5, abs=1e-14)


SEED_EFFECT = [0.3, -0.2, 0.5, 0.0, -0.4]
M = [1.00 + s + e for s, e in zip(SEED_EFFECT, [0.01, -0.02, 0.0, 0.02, -0.01])]
D = [1.40 + s + e for s, e in zip(SEED_EFFECT, [-0.01, 0.02, 0.01, -0.02, 0.0])]


def _graft(pos, wiggle=(0.01, 0.0, -0.01, 0.02, -0.02)):
    return [m + pos * (d - m) + w for m, d, w in zip(M, D, wiggle)]


def test_judge_reads_a_paired_position_with_a_fieller_interval():
    g = _graft(0.5)
    j = judge(M, D, g)
    a, b = np.subtract(g, M), np.subtract(D, M)
    assert j.position == pytest.approx(a.mean() / b.mean())
    assert j.paired and j.seeds == 5 and j.df == 4 and j.margin == 0.25
    low, high = j.ci
    crit = t_ppf(0.975, 4)
    for end in (low, high):  # each end: the per-seed contrast's one-sample t is exactly ±t_crit
        c = a - end * b
        assert abs(c.mean() / (c.std(ddof=1) / math.sqrt(5))) == pytest.approx(crit)
    assert low < j.position < high
    assert j.label == "between" and 0.25 < low and high < 0.75
    assert "between" in j.reason and "margin δ = 0.25" in j.reason and "4 df" in j.reason
    # The seed effect (sd 0.35) cancels in pairs: unpaired, the same numbers say nothing.
    apart = judge(M, D, g, paired=False)
    assert not apart.paired and apart.label == "cannot tell" and math.isinf(apart.ci[0])
    shifted = judge(*[[v + 5 * s for v, s in zip(x, SEED_EFFECT)] for x in (M, D, g)])
    assert shifted.ci == pytest.approx(j.ci) and shifted.label == j.label


@pytest.mark.parametrize(
    ("pos", "label"),
    [
        (0.03, "like M"),
        (0.97, "like D"),
        (0.5, "between"),
        (-0.6, "better than both"),  # past M, and M (1.0) beats D (1.4)
        (1.7, "worse than both"),
    ],
)
def test_judge_labels_by_hand(pos, label):
    j = judge(M, D, _graft(pos, wiggle=(0.002, 0.0, -0.002, 0.001, -0.001)))
    assert j.label == label and j.p <= 0.05 and j.claims[label] == j.p
    flipped = judge(D, M, _graft(pos, wiggle=(0.002, 0.0, -0.002, 0.001, -0.001)))
    assert flipped.position == pytest.approx(1 - j.position)  # M and D swap: 1 - position
    swap = {"like M": "like D", "like D": "like M"}  # better or worse stays what it is
    assert flipped.label == swap.get(label, label)


def test_judge_closer_to_and_cannot_tell_by_hand():
    # position 0.3 with wiggles that put the CI across δ but below 0.5: a side, not "like M"
    j = judge(M, D, _graft(0.3, wiggle=(0.03, -0.03, 0.0, 0.02, -0.02)))
    assert j.ci[0] < 0.25 < j.ci[1] < 0.5 and j.label == "closer to M"
    assert j.claims["like M"] == 1.0  # its estimate 0.3 lies outside (−δ, δ)
    j = judge(M, D, _graft(0.5, wiggle=(0.2, -0.2, 0.1, 0.15, -0.25)))
    assert j.ci[0] < 0.5 < j.ci[1] and j.label == "cannot tell"
    assert j.p == min(j.claims.values()) > 0.05 and "nearest" in j.reason
    flat = judge(M, M, _graft(0.0))  # M and D the same: no position can be read
    assert flat.label == "cannot tell" and flat.ci == (-math.inf, math.inf)
    noisy_d = [m + 0.01 + w for m, w in zip(M, (0.1, -0.1, 0.05, -0.05, 0.0))]
    j = judge(M, noisy_d, _graft(0.0))
    assert j.ci == (-math.inf, math.inf) and "cannot be told apart" in j.reason
    with pytest.raises(ValueError, match="margin"):
        judge(M, D, M, margin=0.6)


def _beyond_both(m, d, g, side: str) -> bool:
    """Both paired differences of the graft against an arm, one-sided at 2.5% (scipy)."""
    return all(stats.ttest_1samp(g - arm, 0.0, alternative=side).pvalue < 0.025 for arm in (m, d))


def test_judge_label_is_the_ci_rule():
    """The label, read from the claims' tests, is the same as reading the CI against each
    region in order (paired: the CI is the inversion of those tests), with "better/worse than
    both" as scipy's paired one-sided t tests of the graft against each arm."""
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(400):
        n = int(rng.integers(3, 8))
        shared = rng.normal(0, 0.3, n)
        m = 1 + shared + rng.normal(0, 0.05, n)
        d = 1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.5) + shared + rng.normal(0, 0.05, n)
        g = m + rng.uniform(-1, 2) * (d - m).mean() + rng.normal(0, 0.05, n)
        margin = float(rng.choice([0.1, 0.25, 0.5]))
        j = judge(m, d, g, margin=margin)
        low, high = j.ci

        rule = [
            ("like M", -margin < low and high < margin),
            ("like D", 1 - margin < low and high < 1 + margin),
            ("between", margin < low and high < 1 - margin),
            ("better than both", _beyond_both(m, d, g, "less")),
            ("worse than both", _beyond_both(m, d, g, "greater")),
            ("closer to M", high < 0.5),
            ("closer to D", low > 0.5),
        ]
        expected = next((name for name, holds in rule if holds), "cannot tell")
        assert j.label == expected, (j.reason, expected)
        seen.add(j.label)
    assert seen == set(LABELS)


def test_a_graft_worse_than_two_arms_that_tie_is_worse_than_both():
    """MNIST-1D's tuned SGD and AdaGrad tie (1.056 each over 10 seeds) while sgd#adagrad is
    worse on every seed: the position is undefined, the verdict is not."""
    m = np.array([0.986, 1.052, 1.042, 1.006, 1.002, 1.129, 1.089, 1.131, 1.106, 1.016])
    d = np.array([1.024, 1.026, 1.037, 1.043, 1.038, 1.102, 1.069, 1.079, 1.108, 1.031])
    g = np.array([1.233, 1.215, 1.162, 1.228, 1.222, 1.249, 1.211, 1.261, 1.283, 1.221])
    j = judge(m, d, g)
    assert j.ci == (-math.inf, math.inf) and j.label == "worse than both"
    assert j.p == pytest.approx(max(stats.ttest_1samp(g - a, 0.0).pvalue for a in (m, d)), rel=1e-6)
    assert judge(m, d, 2 * m - g).label == "better than both"  # mirrored
    assert judge(m, d, (m + d) / 2).label == "cannot tell"


def test_judge_counts_diverged_seeds_and_falls_back_to_welch_when_seeds_differ():
    m = [*M[:4], float("nan")]
    j = judge(m, D, _graft(0.5))
    assert j.seeds == 4 and j.paired and j.df == 3
    assert j.arms["magnitude"].diverged == 1 and j.arms["magnitude"].seeds == 4
    assert j.arms["direction"].diverged == 0 and j.arms["direction"].seeds == 5
    assert "diverged seeds left out: magnitude 1" in j.reason
    row = j.as_row()
    assert row["magnitude_diverged"] == 1 and row["magnitude_median"] == pytest.approx(
        float(np.median(M[:4]))
    )
    assert {
        f"{a}_{k}" for a in ("graft", "magnitude", "direction") for k in ("mean", "median")
    } <= set(row)
    assert row["ci_low"] == j.ci[0] and row["label"] == j.label and row["p_holm"] == j.p
    # Series pair by index, whatever their order
    g = _graft(0.5)
    series = [pd.Series(x, index=[10, 11, 12, 13, 14]) for x in (M, D, g)]
    shuffled = [s.iloc[[3, 0, 4, 1, 2]] for s in series]
    assert judge(*shuffled).ci == pytest.approx(judge(M, D, g).ci)
    # different seeds: unpaired (Welch), said so
    j = judge(series[0], series[1], series[2].rename(lambda s: s + 100))
    assert not j.paired and "seeds differ" in j.reason
    assert judge({0: 1.0}, {0: 2.0}, {0: 1.5}).label == "cannot tell"


def test_arm_summary_puts_the_median_and_diverged_beside_the_mean():
    s = arm_summary([1.0, 2.0, 10.0, float("inf"), None])
    assert (s.mean, s.median, s.seeds, s.diverged) == (pytest.approx(13 / 3), 2.0, 3, 2)
    assert s.std == pytest.approx(np.std([1.0, 2.0, 10.0], ddof=1))


def test_holm_by_hand():
    adjusted, reject = holm([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 against α/4, α/3, α/2, α:
    # adjusted 4·0.01, 3·0.03, max(0.09, 2·0.04), 0.5
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert reject.tolist() == [True, False, False, False]
    adjusted, reject = holm([0.2, float("nan"), 0.001])
    assert math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.003) and not reject[1]


def test_holm_judgments_rejudge_each_verdict_at_its_holm_level():
    strong = judge(M, D, _graft(0.02, wiggle=(0.002, 0.0, -0.002, 0.001, -0.001)))
    weak = judge(M, D, _graft(0.3, wiggle=(0.06, -0.06, 0.0, 0.04, -0.04)))
    assert strong.label == "like M" and weak.label == "closer to M"
    assert 0.05 / 3 < weak.p_any <= 0.05
    alone = holm_judgments([weak])
    assert alone[0].label == "closer to M" and alone[0].family == 1
    kept = holm_judgments([weak, strong])  # strong first at 0.025, weak then at 0.05
    assert kept[0].label == "closer to M" and kept[1].label == "like M"
    assert kept[0].family == 2 and kept[0].p_holm == pytest.approx(weak.p_any)
    assert "Holm over 2 verdicts" in kept[1].reason and "97.5% CI" in kept[1].reason
    null = judge(M, D, _graft(0.5, wiggle=(0.2, -0.2, 0.1, 0.15, -0.25)))
    three = holm_judgments([weak, null, null])  # weak ranked first, at 0.05/3: not kept
    assert [x.label for x in three] == ["cannot tell"] * 3
    assert "not kept after Holm over 3 verdicts" in three[0].reason
    assert three[0].p_holm == pytest.approx(3 * weak.p_any)
    assert three[0].ci[0] < weak.ci[0]  # its CI at the level where Holm stopped


def test_label_words():
    assert label_words("like M", "adam", "sgd") == "like M (adam)"
    assert label_words("closer to D", "adam", "sgd") == "closer to D (sgd)"
    assert label_words("between", "adam", "sgd") == "between"
