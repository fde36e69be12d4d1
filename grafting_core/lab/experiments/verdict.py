"""Does magnitude decide? Where a grafted result lands between its two parents.

The paper's claim is that M#D trains like M, the optimizer that sets each layer's step
size. These functions read that off results without hard-coding the answer: for a grafted
result G with parents M (magnitude) and D (direction) the *position*

    position = (G - M) / (D - M)

is 0 when G lands exactly on M and 1 when it lands on D. Shared by the notebooks, the app
and anyone reading a grid:

    group, table = experiments.grid(store, base, optimizers, seeds=(0, 1, 2))
    grid_leaning(table)            # one row per M#D pair: position, seeds, verdict
    path_leaning(toy2d.grafted_paths(problem, "adam", "sgd"))   # the same on 2-D paths

Verdicts from seeds (issue 26): :func:`judge` reads one graft against its arms from per-seed
final losses, paired by seed, with the position's 95% CI (Fieller, t with n − 1 df), an
equivalence margin and a label ("like M", "like D", "between", "better/worse than both",
"closer to M/D", "cannot tell"); :func:`holm_judgments` corrects the verdicts one report
shows together. Both are calibrated by simulation in tests/test_verdict_calibration.py.

    j = judge(m_losses, d_losses, g_losses)      # index = seed; NaN = diverged
    j.label, j.position, j.ci, j.p, j.reason     # "between", 0.58, (0.52, 0.64), 0.003, ...
    rows = [j.as_row() for j in holm_judgments([judge(...), judge(...)])]

:func:`closer_to` (a z = 2 rule on unpaired standard errors) is the older reading, kept for
its callers; at 3-5 seeds it says a side 8-10% of the time when there is none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property, lru_cache

import numpy as np
import pandas as pd

NOISE_FACTOR = 2.0  # M and D closer than this many seed std devs: the verdict is "unclear"
TAIL = 0.1  # a 2-D path's end loss: median over this last fraction of its steps
LEANS = ("magnitude", "direction", "neither", "unclear", "incomplete")


def position(graft: float, magnitude: float, direction: float) -> float:
    """(G − M) / (D − M): 0 at M, 1 at D, outside [0, 1] beyond either; NaN when M == D."""
    gap = direction - magnitude
    return float((graft - magnitude) / gap) if gap != 0 and np.isfinite(gap) else float("nan")


def _lean(pos: float, gap: float, noise: float) -> str:
    """Each parent owns the half of the M-D gap around it; farther out is "neither"."""
    if not np.isfinite(pos):
        return "incomplete" if not np.isfinite(gap) else "unclear"
    if np.isfinite(noise) and abs(gap) <= NOISE_FACTOR * noise:
        return "unclear"
    if -0.5 < pos < 0.5:
        return "magnitude"
    return "direction" if 0.5 <= pos < 1.5 else "neither"


def grid_leaning(table: pd.DataFrame, metric: str = "val_loss") -> pd.DataFrame:
    """Every off-diagonal M#D of a grid against plain M and plain D (finished runs only).

    ``table``: ``experiments.grid_table`` (magnitude, direction, seed, status, ``metric``).
    Returns one row per pair: the seed means of M#D, M and D, ``position`` (of the means),
    ``seeds_toward_magnitude`` (seeds where M#D is nearer that seed's M than its D), the
    ``noise`` (largest seed std of the three cells; NaN with one seed) and ``leans``:
    "magnitude" (within half the M-D gap of M: -0.5 < position < 0.5), "direction"
    (within half the gap of D), "neither" (farther from both), "unclear" (M and D within
    ``NOISE_FACTOR`` × noise of each other) or "incomplete" (a cell has no finished run).
    """
    done = table[(table["status"] == "finished") & np.isfinite(table[metric])]
    cells = done.groupby(["magnitude", "direction", "seed"])[metric].mean()
    order = list(dict.fromkeys(table["magnitude"]))
    rows = []
    for m in order:
        for d in order:
            if m == d:
                continue
            per_seed = pd.DataFrame(
                {
                    "graft": _cell(cells, m, d),
                    "magnitude": _cell(cells, m, m),
                    "direction": _cell(cells, d, d),
                }
            ).dropna()
            means = {
                k: _mean(cells, *key)
                for k, key in (("graft", (m, d)), ("magnitude", (m, m)), ("direction", (d, d)))
            }
            stds = [_std(cells, *key) for key in ((m, d), (m, m), (d, d))]
            noise = max(stds) if all(np.isfinite(stds)) else float("nan")
            pos = position(means["graft"], means["magnitude"], means["direction"])
            toward_m = (per_seed["graft"] - per_seed["magnitude"]).abs() < (
                per_seed["graft"] - per_seed["direction"]
            ).abs()
            rows.append(
                {
                    "magnitude": m,
                    "direction": d,
                    "graft": means["graft"],
                    "magnitude_alone": means["magnitude"],
                    "direction_alone": means["direction"],
                    "position": pos,
                    "seeds_toward_magnitude": int(toward_m.sum()),
                    "seeds": len(per_seed),
                    "noise": noise,
                    "leans": _lean(pos, means["direction"] - means["magnitude"], noise),
                }
            )
    return pd.DataFrame(rows)


def _cell(cells: pd.Series, m: str, d: str) -> pd.Series:
    try:
        return cells.loc[(m, d)]
    except KeyError:
        return pd.Series(dtype=float)


def _mean(cells: pd.Series, m: str, d: str) -> float:
    values = _cell(cells, m, d)
    return float(values.mean()) if len(values) else float("nan")


def _std(cells: pd.Series, m: str, d: str) -> float:
    values = _cell(cells, m, d)
    return float(values.std()) if len(values) > 1 else float("nan")


SPREAD_Z = 2.0  # a difference counts when it exceeds this many standard errors


def closer_to(
    graft: Sequence[float], magnitude: Sequence[float], direction: Sequence[float]
) -> dict[str, float | str]:
    """Is M#D closer to M or to D, given each arm's per-seed results? ("cannot tell" is valid.)

    Superseded by :func:`judge` (paired, t with its degrees of freedom, an equivalence
    margin): this z = 2 rule on unpaired standard errors says a side too often on few seeds
    (tests/test_verdict_calibration.py measures it). Kept for its current callers.

    With means G, M, D and standard errors s_x = std_x/√n_x, G is called closer to M when it
    lies on M's side of the midpoint (M + D)/2 by more than ``SPREAD_Z`` standard errors of
    G − (M + D)/2, i.e. √(s_G² + (s_M² + s_D²)/4); and only when M and D themselves differ by
    more than ``SPREAD_Z`` · √(s_M² + s_D²). Otherwise the answer is "cannot tell", with the
    reason. Returns the means, stds and seed counts, ``position`` (G − M)/(D − M) (0 at M, 1 at
    D), ``verdict`` ("magnitude" | "direction" | "cannot tell") and ``reason``.
    """
    arms = {
        "graft": np.asarray(graft, float),
        "magnitude": np.asarray(magnitude, float),
        "direction": np.asarray(direction, float),
    }
    out: dict[str, float | str] = {}
    se = {}
    for key, values in arms.items():
        out[f"{key}_mean"] = float(values.mean()) if len(values) else float("nan")
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out[f"{key}_seeds"] = len(values)
        se[key] = out[f"{key}_std"] / np.sqrt(max(len(values), 1))
    g, m, d = (out[f"{k}_mean"] for k in ("graft", "magnitude", "direction"))
    out["position"] = position(g, m, d)
    if min(len(v) for v in arms.values()) < 2:
        return out | {"verdict": "cannot tell", "reason": "needs at least 2 seeds per arm"}
    gap_se = np.hypot(se["magnitude"], se["direction"])
    if abs(d - m) <= SPREAD_Z * gap_se:
        return out | {
            "verdict": "cannot tell",
            "reason": f"M and D differ by {abs(d - m):.3g}, within the seed spread "
            f"({SPREAD_Z:g} × {gap_se:.2g})",
        }
    offset, offset_se = g - (m + d) / 2, np.sqrt(se["graft"] ** 2 + gap_se**2 / 4)
    if abs(offset) <= SPREAD_Z * offset_se:
        return out | {
            "verdict": "cannot tell",
            "reason": f"M#D is {abs(offset):.3g} from the midpoint, within the seed "
            f"spread ({SPREAD_Z:g} × {offset_se:.2g})",
        }
    toward = "magnitude" if np.sign(offset) == np.sign(m - d) else "direction"
    return out | {
        "verdict": toward,
        "reason": f"{abs(offset):.3g} from the midpoint toward {toward[0].upper()}, "
        f"more than {SPREAD_Z:g} × {offset_se:.2g}",
    }


def closer_to_words(verdict: str, magnitude: str, direction: str) -> str:
    """A ``closer_to`` verdict in words: "closer to M (adam)", "closer to D (sgd)" or
    "cannot tell"."""
    if verdict == "magnitude":
        return f"closer to M ({magnitude})"
    return f"closer to D ({direction})" if verdict == "direction" else verdict


def path_leaning(paths: Mapping[str, object]) -> pd.DataFrame:
    """The four 2-D paths of ``toy2d.grafted_paths``: end loss, stride, and for M#D and D#M
    where they land between the path of their magnitude and that of their direction.

    ``end_loss`` is the median loss over the last ``TAIL`` of the steps (noisy problems
    jitter around their floor); ``mean_step`` the mean distance moved per step. Positions
    are taken on log10(loss) when every end loss is positive (losses span decades), else
    on the loss itself (``scale``).
    """
    stats = {}
    for key, path in paths.items():
        losses = path.losses.double()
        tail = losses[-max(1, int(round(TAIL * (len(losses) - 1)))) :]
        steps = (path.points[1:] - path.points[:-1]).double().norm(dim=1)
        stats[key] = {
            "label": path.label,
            "end_loss": float(tail.quantile(0.5)),
            "mean_step": float(steps.mean()),
        }
    table = pd.DataFrame.from_dict(stats, orient="index")
    ends = table["end_loss"].to_numpy(dtype=float)
    log = bool(np.all(np.isfinite(ends)) and np.all(ends > 0))
    value = np.log10(table["end_loss"]) if log else table["end_loss"]
    table["scale"] = "log10" if log else "linear"
    for graft, (m, d) in (("M#D", ("M", "D")), ("D#M", ("D", "M"))):
        if {graft, m, d} <= set(table.index):
            pos = position(value[graft], value[m], value[d])
            table.loc[graft, ["magnitude_from", "direction_from"]] = [m, d]
            table.loc[graft, "position"] = pos
            table.loc[graft, "leans"] = _lean(pos, value[d] - value[m], float("nan"))
    return table


def in_words(pos: float, magnitude: str = "M", direction: str = "D") -> str:
    """A position in plain words: "nearer adam", "beyond sgd", "halfway" ..."""
    if not np.isfinite(pos):
        return f"undefined ({magnitude} and {direction} tie)"
    if pos < 0:
        return f"beyond {magnitude} (past it, on the far side from {direction})"
    if pos > 1:
        return f"beyond {direction} (past it, on the far side from {magnitude})"
    if pos == 0.5:
        return "halfway"
    return f"nearer {magnitude}" if pos < 0.5 else f"nearer {direction}"


def matrix_leaning(matrix: pd.DataFrame) -> dict[str, float | str]:
    """Which way a whole M × D table leans: the share of its variance that rows explain.

    ``matrix``: ``experiments.grid_matrix`` (rows M, columns D, diagonal included). A
    two-way reading: each cell = grand mean + row effect + column effect + rest. Returns
    ``magnitude_share`` (sum of squares of the row means about the grand mean, over the
    total), ``direction_share`` (the same for columns), ``interaction_share`` (the rest)
    and ``leans``: "magnitude" when rows explain more, "direction" when columns do.
    """
    values = matrix.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        return {
            "magnitude_share": float("nan"),
            "direction_share": float("nan"),
            "interaction_share": float("nan"),
            "leans": "incomplete",
        }
    grand = values.mean()
    total = float(((values - grand) ** 2).sum())
    rows = float(values.shape[1] * ((values.mean(axis=1) - grand) ** 2).sum())
    columns = float(values.shape[0] * ((values.mean(axis=0) - grand) ** 2).sum())
    if total == 0:
        return {
            "magnitude_share": 0.0,
            "direction_share": 0.0,
            "interaction_share": 0.0,
            "leans": "unclear",
        }
    return {
        "magnitude_share": rows / total,
        "direction_share": columns / total,
        "interaction_share": (total - rows - columns) / total,
        "leans": "magnitude" if rows > columns else "direction" if columns > rows else "unclear",
    }


def comparison_reading(sweep: pd.DataFrame, verdicts: pd.DataFrame) -> list[str]:
    """A tuned comparison in sentences (Markdown bullets), every number read from its tables.

    ``sweep`` and ``verdicts``: ``protocol.Comparison.sweep`` and ``.verdicts``. Says each
    arm's tuned lr (and when it still sits at its grid's edge: then it is not really tuned),
    where each graft lands with its verdict and reason, how many full grafts follow M, and
    what grafting only some layers changes (the share of the full graft's distance from M that
    the partial graft removes).
    """
    lines = []
    for row in sweep[sweep["best"]].itertuples():
        edge = (
            " **at the sweep's edge**: a better lr may lie beyond, so this arm is not fully tuned"
            if row.at_edge
            else ""
        )
        lines.append(
            f"- tuned **{row.arm}**: lr {row.lr:.3g}, {row.mean:.4f} ± {row.std:.2g} "
            f"over {row.seeds} seeds{edge}"
        )
    untuned = sorted(set(sweep["arm"]) - set(sweep.loc[sweep["best"], "arm"]))
    if untuned:
        lines.append(f"- no lr of {', '.join(untuned)} finished on every seed: no tuned arm")
    if verdicts.empty:
        return lines + ["- no graft finished: no verdict"]
    verdicts = verdicts.assign(grafted=verdicts["grafted"] if "grafted" in verdicts else "all")
    verdicts = verdicts.assign(_partial=verdicts["grafted"] != "all").sort_values(
        ["magnitude", "direction", "_partial"], kind="stable"
    )
    words = {"magnitude": "closer to M", "direction": "closer to D"}
    for row in verdicts.itertuples():
        which = (
            "" if row.grafted == "all" else f" ({row.grafted} layers only; M's own step elsewhere)"
        )
        lines.append(
            f"- **{row.magnitude}#{row.direction}**{which}: {row.graft_mean:.4f} ± "
            f"{row.graft_std:.2g} vs {row.magnitude} {row.magnitude_mean:.4f}, {row.direction} "
            f"{row.direction_mean:.4f}; position {row.position:.2f} (0 = M, 1 = D): "
            f"**{words.get(row.verdict, row.verdict)}** ({row.reason})"
        )
    full = verdicts[~verdicts["_partial"]]
    counts = full["verdict"].value_counts()
    toward_m, toward_d = counts.get("magnitude", 0), counts.get("direction", 0)
    if toward_m + toward_d == 0:
        finding = "cannot be judged here: no full graft stands out from the seed spread"
    elif toward_d == 0:
        finding = (
            f"holds for every graft that can be judged ({toward_m})"
            if toward_m < len(full)
            else "holds for every one"
        )
    elif toward_m == 0:
        finding = f"fails here: every graft that can be judged ({toward_d}) follows D"
    else:
        finding = f"holds for {toward_m} grafts and fails for {toward_d}"
    lines.append(
        f"- of {len(full)} full grafts, {toward_m} are closer to M, {toward_d} closer "
        f"to D, {counts.get('cannot tell', 0)} cannot be told apart from the seed "
        f"spread: *magnitude decides* {finding}"
    )
    whole = full.set_index(["magnitude", "direction"])
    for row in verdicts[verdicts["_partial"]].itertuples():
        key = (row.magnitude, row.direction)
        if key not in whole.index:
            continue
        graft = whole.loc[key]
        spread = np.hypot(
            graft["graft_std"] / np.sqrt(graft["graft_seeds"]),
            row.graft_std / np.sqrt(row.graft_seeds),
        )
        change = row.graft_mean - graft["graft_mean"]
        text = (
            f"- grafting only the {row.grafted} layers of {row.magnitude}#{row.direction}: "
            f"{row.graft_mean:.4f} against the full graft's {graft['graft_mean']:.4f} "
            f"({change:+.3g}; "
            + ("within" if abs(change) <= SPREAD_Z * spread else "beyond")
            + f" {SPREAD_Z:g} standard errors)"
        )
        m, d = graft["magnitude_mean"], graft["direction_mean"]
        apart = abs(d - m) > SPREAD_Z * np.hypot(
            graft["magnitude_std"] / np.sqrt(graft["magnitude_seeds"]),
            graft["direction_std"] / np.sqrt(graft["direction_seeds"]),
        )
        if apart and np.isfinite(graft["position"]) and graft["position"] > 0:
            past = " (past M, on the far side from D)" if row.position < 0 else ""
            text += (
                f"; position {graft['position']:.2f} → {row.position:.2f}: it removes "
                f"{1 - row.position / graft['position']:.0%} of the full graft's distance "
                f"from {row.magnitude}{past}"
            )
        elif not apart:
            text += f"; {row.magnitude} and {row.direction} cannot be told apart, so no position"
        lines.append(text)
    return lines


# ---------------------------------------------------------------------------------------
# Statistics that match the question (issue 26): paired by seed, t with its degrees of
# freedom, a position with a 95% CI, an equivalence margin, Holm over a report's verdicts.
# ---------------------------------------------------------------------------------------

MARGIN = 0.25  # equivalence margin δ on the position scale (0 = M, 1 = D)
ALPHA = 0.05
LABELS = (  # precedence: the first whose claim holds is the label
    "like M",
    "like D",
    "between",
    "better than both",
    "worse than both",
    "closer to M",
    "closer to D",
    "cannot tell",
)
CLAIMS = LABELS[:-1]
ARMS = ("magnitude", "direction", "graft")


# -- Student's t, from the regularized incomplete beta function (Numerical Recipes §6.4) --


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularized incomplete beta function I_x(a, b) (a, b > 0, 0 ≤ x ≤ 1).

    ``y`` = 1 − x when the caller has it more precisely than ``1 - x``. The continued
    fraction converges fast for x < (a + 1)/(a + b + 2); beyond, I_x(a, b) = 1 − I_y(b, a).
    """
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, y) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (any df > 0, ``inf``: normal)."""
    if math.isnan(t) or not df > 0:
        return float("nan")
    if math.isinf(df) or df > 1e7:
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    t2 = t * t
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    return 1.0 - t_sf(t, df) if t >= 0 else t_sf(-t, df)


def t_two_sided(t: float, df: float) -> float:
    """P(|T| ≥ |t|): the two-sided p-value of a t statistic."""
    return min(1.0, 2.0 * t_sf(abs(t), df)) if not math.isnan(t) else 1.0


def t_pdf(t: float, df: float) -> float:
    """Student's t density with ``df`` degrees of freedom."""
    if math.isinf(df) or df > 1e7:
        return math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    log_norm = math.lgamma((df + 1.0) / 2.0) - math.lgamma(df / 2.0)
    return math.exp(log_norm - 0.5 * (df + 1.0) * math.log1p(t * t / df)) / math.sqrt(df * math.pi)


@lru_cache(maxsize=4096)
def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with ``df`` degrees of freedom: t_ppf(0.975, 1) = 12.706,
    (2) 4.303, (4) 2.776, (9) 2.262, (inf) 1.960. Newton's method on ``t_sf`` from 0: the
    upper tail is convex there, so the iterates rise monotonically to the root; bisection
    finishes if they stall."""
    if not 0.0 < q < 1.0 or not df > 0:
        return float("nan")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    target, t = 1.0 - q, 0.0
    for _ in range(200):
        step = (t_sf(t, df) - target) / t_pdf(t, df)
        t += step
        if abs(step) <= 1e-14 * max(t, 1.0):
            return t
    low, high = t, 2.0 * t + 1.0  # pragma: no cover (not reached for 1 <= df)
    while t_sf(high, df) > target:
        low, high = high, 2.0 * high
    while high - low > 1e-13 * high:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_sf(mid, df) > target else (low, mid)
    return 0.5 * (low + high)


def _t_critical(alpha: float, df: float) -> float:
    """|t| beyond which a two-sided test at ``alpha`` rejects."""
    return t_ppf(1.0 - alpha / 2.0, df)


# -- Holm ------------------------------------------------------------------------------


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction of a family of p-values: ``(adjusted, reject)``.

    Sorted ascending, the j-th smallest p (j = 1…k) is compared with α/(k − j + 1); the
    first that fails stops the procedure and it and every larger p are kept. Adjusted:
    p̃_(j) = max_{i ≤ j} min(1, (k − i + 1) p_(i)), so ``reject`` is p̃ ≤ α. Controls the
    family-wise error rate at α under any dependence. NaN p-values count in k and are never
    rejected.
    """
    p = np.asarray(pvalues, float)
    k = len(p)
    adjusted = np.full(k, np.nan)
    filled = np.where(np.isnan(p), np.inf, p)
    order = np.argsort(filled, kind="stable")
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (k - j) * filled[i]))
        adjusted[i] = running
    adjusted[np.isnan(p)] = np.nan
    return adjusted, np.nan_to_num(adjusted, nan=np.inf) <= alpha


# -- a graft against its arms -----------------------------------------------------------


@dataclass(frozen=True)
class ArmSummary:
    """One arm's per-seed results: the mean beside the median, the sample std (ddof 1),
    the finite seeds and how many seeds diverged (a NaN or infinite result)."""

    mean: float
    median: float
    std: float
    seeds: int
    diverged: int


def arm_summary(values: Sequence[float] | Mapping | pd.Series) -> ArmSummary:
    """Mean, median, std, finite seeds and diverged seeds (NaN/inf) of one arm's results."""
    raw = list(_as_seeds(values).values())
    done = sorted(v for v in raw if math.isfinite(v))
    n, half = len(done), len(done) // 2
    mean = sum(done) / n if n else float("nan")
    return ArmSummary(
        mean=mean,
        median=(done[half] if n % 2 else (done[half - 1] + done[half]) / 2) if n else mean,
        std=math.sqrt(_covariance(done, done)) if n > 1 else float("nan"),
        seeds=n,
        diverged=len(raw) - n,
    )


def _covariance(x: Sequence[float], y: Sequence[float]) -> float:
    """Sample covariance (ddof 1) of two equal-length lists of floats, in plain Python (the
    lists are a handful of seeds: numpy's per-call overhead would dominate)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    return sum([(a - mx) * (b - my) for a, b in zip(x, y)]) / (n - 1)


def _as_seeds(values: Sequence[float] | Mapping | pd.Series) -> dict:
    """seed -> value: a Series' index or a Mapping's keys, else the position (index = seed).
    None becomes NaN (a diverged seed)."""
    if isinstance(values, pd.Series):
        items = values.items()
    elif isinstance(values, Mapping):
        items = values.items()
    else:
        items = enumerate(values.tolist() if isinstance(values, np.ndarray) else values)
    return {k: float("nan") if v is None else float(v) for k, v in items}


@dataclass(frozen=True)
class _Contrast:
    """The t statistic of the linear contrast g − m − p0 (d − m) for any p0 (and p0 = ∞,
    which tests the gap d − m): a = mean(g − m), b = mean(d − m), with the variances of
    these means (vaa, vbb) and their covariance (vab). Paired: one-sample t on per-seed
    contrasts, df = n − 1. Unpaired: Welch, df from Welch-Satterthwaite at each p0."""

    a: float
    b: float
    vaa: float
    vab: float
    vbb: float
    df: float  # paired; NaN when unpaired (then ``parts``)
    parts: tuple = ()  # unpaired: (var/n, n) of graft, magnitude, direction

    def t(self, p0: float) -> float:
        if math.isinf(p0):
            num, var = self.b, self.vbb
        else:
            num = self.a - p0 * self.b
            var = self.vaa - 2.0 * p0 * self.vab + p0 * p0 * self.vbb
        if var > 0:
            return num / math.sqrt(var)
        return 0.0 if num == 0 else math.copysign(math.inf, num)

    def dof(self, p0: float) -> float:
        if not self.parts:
            return self.df
        (vg, ng), (vm, nm), (vd, nd) = self.parts
        if math.isinf(p0):
            terms = [(vm, nm), (vd, nd)]
        else:
            terms = [(vg, ng), ((1.0 - p0) ** 2 * vm, nm), (p0 * p0 * vd, nd)]
        total = sum(v for v, _ in terms)
        spread = sum(v * v / (n - 1) for v, n in terms if v > 0)
        return total * total / spread if spread > 0 else math.inf

    def p(self, p0: float) -> float:
        """Two-sided p-value of H0: position = p0."""
        return t_two_sided(self.t(p0), self.dof(p0))

    def rejects(self, p0: float, alpha: float) -> bool:
        """Whether the two-sided test of H0: position = p0 rejects at ``alpha`` (paired: |t|
        against the cached critical value; Welch, whose df moves with p0: its p-value)."""
        if self.parts:
            return self.p(p0) < alpha
        return abs(self.t(p0)) > _t_critical(alpha, self.df)

    def interval(self, alpha: float) -> tuple[float, float]:
        """Fieller's set {p0 : |t(p0)| ≤ t_crit}: a bounded interval when the gap itself is
        significant at ``alpha``, else unbounded, returned as (−inf, inf). Unpaired: the df
        is re-evaluated at each end (a few fixed-point steps)."""
        if not self.rejects(math.inf, alpha):
            return (-math.inf, math.inf)
        ends = []
        for side in (-1.0, 1.0):
            df = self.dof(self.a / self.b)
            for _ in range(1 if not self.parts else 4):
                end = self._root(_t_critical(alpha, df) ** 2, side)
                df = self.dof(end)
            ends.append(end)
        return (ends[0], ends[1])

    def _root(self, q: float, side: float) -> float:
        """A root of (a − p b)² = q (vaa − 2p vab + p² vbb): the lower (side −1) or upper."""
        big_a = self.b * self.b - q * self.vbb
        big_b = self.a * self.b - q * self.vab
        big_c = self.a * self.a - q * self.vaa
        disc = max(big_b * big_b - big_a * big_c, 0.0)
        if big_a <= 0:
            return side * math.inf
        return (big_b + side * math.sqrt(disc)) / big_a


def _regions(margin: float, gap: float) -> dict[str, tuple[float, float]]:
    """Each claim's open region of the position. Beyond M (position < 0) is "better than
    both" when M beats D (lower is better: gap = D − M > 0), else "worse than both"."""
    beyond_m, beyond_d = (-math.inf, 0.0), (1.0, math.inf)
    better, worse = (beyond_m, beyond_d) if gap > 0 else (beyond_d, beyond_m)
    return {
        "like M": (-margin, margin),
        "like D": (1.0 - margin, 1.0 + margin),
        "between": (margin, 1.0 - margin),
        "better than both": better,
        "worse than both": worse,
        "closer to M": (-math.inf, 0.5),
        "closer to D": (0.5, math.inf),
    }


def _claim_p(contrast: _Contrast, estimate: float, region: tuple[float, float]) -> float:
    """The smallest α at which the (1 − α) CI lies inside ``region``: 1 when the estimate
    is outside it, else the largest two-sided p-value among the region's finite ends and
    p0 = ∞ (the gap test). For the paired t this is exact: |t(p0)|² is zero at the estimate
    and has a single other turning point, so off the region it is smallest at an end or at
    infinity."""
    low, high = region
    if not low < estimate < high:
        return 1.0
    points = [x for x in (low, high) if math.isfinite(x)] + [math.inf]
    if contrast.parts:  # Welch: each point has its own df
        return max(contrast.p(x) for x in points)
    return t_two_sided(min(abs(contrast.t(x)) for x in points), contrast.df)


BEYOND = ("better than both", "worse than both")


def _beyond_both_p(contrast: _Contrast, worse: bool) -> float:
    """The p-value of "the graft is worse (or better) than both arms", tested directly: an
    intersection-union test whose parts are the graft against M (t at p0 = 0: ḡ − m̄) and
    against D (t at p0 = 1: ḡ − d̄), each one-sided at α/2 as the other claims' ends are; 1
    when either difference has the wrong sign. Unlike the position's CI it needs no gap
    between M and D: a graft worse than two arms that tie is still worse than both."""
    to_m, to_d = contrast.t(0.0), contrast.t(1.0)
    sign = 1.0 if worse else -1.0
    if not (sign * to_m > 0 and sign * to_d > 0):
        return 1.0
    return max(contrast.p(0.0), contrast.p(1.0))


def _holds(contrast: _Contrast, estimate: float, region: tuple[float, float], alpha: float) -> bool:
    """Whether the (1 − α) CI lies inside ``region`` (the same as ``_claim_p`` ≤ α, without
    computing a p-value: each point's |t| against the cached critical value)."""
    low, high = region
    if not low < estimate < high:
        return False
    points = [x for x in (low, high) if math.isfinite(x)] + [math.inf]
    return all(contrast.rejects(x, alpha) for x in points)


@dataclass(frozen=True)
class Judgment:
    """Where one graft M#D lands between its arms M and D, with the verdict it supports.

    ``label``: one of :data:`LABELS`; ``position``: (Ḡ − M̄)/(D̄ − M̄) over the seeds used
    (0 = M, 1 = D); ``ci``: its (1 − ``alpha``) confidence interval by test inversion
    (Fieller), (−inf, inf) when M and D cannot be told apart; ``p``: the p-value of the
    label's claim (for "cannot tell", the smallest p of any claim: how near a verdict came);
    ``claims``: every claim's p-value; ``margin``: the equivalence margin δ; ``paired``:
    whether the seeds paired (else Welch); ``df``: degrees of freedom at the estimate;
    ``seeds``: seeds used (paired: those where all three arms are finite); ``arms``: each
    arm's :class:`ArmSummary` (mean, median, std, seeds, diverged), keyed "magnitude",
    "direction", "graft"; ``family`` and ``p_holm``: the number of verdicts it was corrected
    over (Holm) and its adjusted p (1 and ``p`` when judged alone); ``reason``: all of it in
    one sentence. ``ci``, ``p``, ``claims`` and ``reason`` are computed when first read.
    """

    label: str
    position: float
    margin: float
    alpha: float
    paired: bool
    df: float
    seeds: int
    arms: Mapping[str, ArmSummary]
    family: int = 1
    p_holm: float = float("nan")
    note: str = ""  # appended to ``reason`` (diverged seeds, Holm)
    contrast: _Contrast | None = field(default=None, repr=False, compare=False)
    data: tuple = field(default=(), repr=False, compare=False)

    @cached_property
    def ci(self) -> tuple[float, float]:
        """The position's (1 − ``alpha``) CI: (NaN, NaN) without two seeds per arm,
        (−inf, inf) when M and D cannot be told apart."""
        if self.contrast is None:
            return (float("nan"), float("nan"))
        if not math.isfinite(self.position):
            return (-math.inf, math.inf)
        return self.contrast.interval(self.alpha)

    @cached_property
    def claims(self) -> dict[str, float]:
        """Each claim's p-value: the smallest α at which the (1 − α) CI lies in its region
        (1 when the estimate lies outside it)."""
        if self.contrast is None or not math.isfinite(self.position):
            return {}
        return {
            name: _beyond_both_p(self.contrast, name == "worse than both")
            if name in BEYOND
            else _claim_p(self.contrast, self.position, region)
            for name, region in _regions(self.margin, self.contrast.b).items()
        }

    @property
    def p(self) -> float:
        """The p-value of the label's claim; for "cannot tell", the smallest of any claim."""
        return self.claims[self.label] if self.label in self.claims else self.p_any

    @property
    def p_any(self) -> float:
        """The smallest p-value of any claim (what Holm ranks the verdicts of a report by)."""
        return min(self.claims.values()) if self.claims else 1.0

    @cached_property
    def reason(self) -> str:
        how = (
            f"paired t, {self.seeds} seeds"
            if self.paired
            else "unpaired Welch t" + (", the arms' seeds differ" if self.data[3] else "")
        )
        if self.contrast is None:
            return f"needs at least 2 seeds per arm ({how}){self.note}"
        low, high = self.ci
        spell = f"position {self.position:.3g}, {100 * (1 - self.alpha):.3g}% CI "
        spell += f"[{low:.3g}, {high:.3g}]" if math.isfinite(low + high) else "unbounded"
        spell += f" ({how}, {self.df:.3g} df, margin δ = {self.margin:g})"
        if self.label != "cannot tell":
            return f"{spell}: {self.label}, p = {self.p:.2g}{self.note}"
        if not math.isfinite(low + high):
            gap = self.contrast.p(math.inf)
            return f"{spell}: M and D cannot be told apart (gap p = {gap:.2g}){self.note}"
        nearest = min(self.claims, key=self.claims.get)
        return f"{spell}: cannot tell (nearest {nearest!r}, p = {self.p:.2g}){self.note}"

    def as_row(self) -> dict[str, float | str | bool | int]:
        """A flat dict for a table: label, position, ci_low, ci_high, p, p_holm, family,
        margin, alpha, paired, df, seeds, reason and ``<arm>_mean``, ``_median``, ``_std``,
        ``_seeds``, ``_diverged`` for arm in graft, magnitude, direction."""
        row: dict[str, float | str | bool | int] = {
            "label": self.label,
            "position": self.position,
            "ci_low": self.ci[0],
            "ci_high": self.ci[1],
            "p": self.p,
            "p_holm": self.p_holm if math.isfinite(self.p_holm) else self.p,
            "family": self.family,
            "margin": self.margin,
            "alpha": self.alpha,
            "paired": self.paired,
            "df": self.df,
            "seeds": self.seeds,
            "reason": self.reason,
        }
        for arm in ("graft", "magnitude", "direction"):
            for key, value in asdict(self.arms[arm]).items():
                row[f"{arm}_{key}"] = value
        return row


def judge(
    m: Sequence[float] | Mapping | pd.Series,
    d: Sequence[float] | Mapping | pd.Series,
    g: Sequence[float] | Mapping | pd.Series,
    *,
    paired: bool = True,
    margin: float = MARGIN,
    alpha: float = ALPHA,
) -> Judgment:
    """Does the graft G train like its magnitude arm M, like its direction arm D, between
    them, beyond both, or can the seeds not tell? Per-seed final losses in, a
    :class:`Judgment` out.

    Inputs: one value per seed, lower is better; sequences (index = seed), Series (index)
    or Mappings (keys = seeds). NaN, inf or None marks a diverged seed: it is counted in the
    arm's ``diverged`` and left out.

    **Pairing.** A seed fixes init and batch order for every arm, so with ``paired`` (the
    default) and the same seeds in all three arms, the reading is paired: per seed
    a = g − m and b = d − m, and for a hypothesised position p0 the per-seed contrast
    c(p0) = a − p0·b has mean zero exactly when the position is p0; H0: position = p0 is a
    one-sample t test on c(p0) with n − 1 degrees of freedom (n = seeds where all three are
    finite). When the seed sets differ (or ``paired=False``) the same contrast is tested
    unpaired, ḡ − m̄ − p0 (d̄ − m̄) over its Welch standard error with Welch-Satterthwaite df.
    Per-seed positions (g − m)/(d − m) are never formed: they blow up when d ≈ m on a seed.

    **CI.** The 1 − α CI of the position is every p0 that test does not reject (Fieller's
    test inversion; exact for normal per-seed noise in the paired case). It is bounded only
    when the gap D − M itself is significant (p0 = ∞ rejected); else (−inf, inf) and the
    label is "cannot tell".

    **Verdicts** (each is "the CI lies inside a region"; its p-value is the smallest α at
    which that holds, i.e. the largest two-sided p-value at the region's ends and of the gap):

    - "like M": CI inside (−δ, δ). This is TOST (two one-sided tests) of equivalence to M
      with margin δ = ``margin``, H0: |position| ≥ δ, each one-sided test at α/2 (the 95%-CI
      form of TOST, stricter than the usual 90%), together with the gap test.
    - "like D": CI inside (1 − δ, 1 + δ): TOST of equivalence to D, the same way.
    - "between": CI inside (δ, 1 − δ): both one-sided tests (position > δ and position
      < 1 − δ) reject at α/2, i.e. like neither arm (an intersection-union test, as TOST).
    - "better than both" / "worse than both": tested directly, with no need for a gap
      between M and D: the graft's loss lies below (above) both M's and D's, each paired
      difference one-sided at α/2 (an intersection-union test). Where the gap is
      significant this is the position lying beyond the better (worse) arm; where M and D
      tie, the position is undefined and the verdict still holds.
    - "closer to M" / "closer to D": CI on one side of 0.5: the two-sided midpoint test
      (H0: position = 0.5) rejects, with the side.
    - "cannot tell": none of the above.

    The first that holds in this order is the label (an equivalence verdict before
    "closer to", "between" before "closer to"). Each label but the two "than both" is false
    only when the CI misses the true position, so any false label has probability ≤ α
    (paired: exactly the CI's miss rate); the "than both" ones are false with probability
    ≤ α/2 (their tests' level). ``margin`` must lie in (0, 0.5].
    """
    if not 0.0 < margin <= 0.5:
        raise ValueError(f"margin must lie in (0, 0.5], got {margin}")
    seeds = {arm: _as_seeds(x) for arm, x in zip(ARMS, (m, d, g))}
    summaries = {arm: arm_summary(seeds[arm]) for arm in ARMS}
    same = seeds["magnitude"].keys() == seeds["direction"].keys() == seeds["graft"].keys()
    data = (tuple(seeds["magnitude"].items()), tuple(seeds["direction"].items()))
    data += (tuple(seeds["graft"].items()), paired)
    if paired and same:
        keys = [k for k in seeds["graft"] if all(math.isfinite(seeds[a][k]) for a in ARMS)]
        columns = {a: [seeds[a][k] for k in keys] for a in ARMS}
        n, is_paired = len(keys), True
        contrast = _paired(columns, n)
    else:
        columns = {a: [v for v in seeds[a].values() if math.isfinite(v)] for a in ARMS}
        n, is_paired = min(len(columns[a]) for a in ARMS), False
        contrast = _unpaired(columns)
    diverged = ", ".join(f"{a} {s.diverged}" for a, s in summaries.items() if s.diverged)
    out = {
        "margin": margin,
        "alpha": alpha,
        "paired": is_paired,
        "seeds": n,
        "arms": summaries,
        "data": data,
        "contrast": contrast,
        "note": f"; diverged seeds left out: {diverged}" if diverged else "",
    }
    nan = float("nan")
    if contrast is None:
        return Judgment(label="cannot tell", position=nan, df=nan, **out)
    estimate = contrast.a / contrast.b if contrast.b != 0 else nan
    if not math.isfinite(estimate):
        return Judgment(label="cannot tell", position=estimate, df=contrast.dof(math.inf), **out)
    regions = _regions(margin, contrast.b)

    def holds(claim: str) -> bool:
        if claim in BEYOND:
            return _beyond_both_p(contrast, claim == "worse than both") <= alpha
        return _holds(contrast, estimate, regions[claim], alpha)

    label = next((c for c in CLAIMS if holds(c)), "cannot tell")
    return Judgment(label=label, position=estimate, df=contrast.dof(estimate), **out)


def _paired(columns: dict[str, list[float]], n: int) -> _Contrast | None:
    if n < 2:
        return None
    m = columns["magnitude"]
    a = [g - x for g, x in zip(columns["graft"], m)]
    b = [d - x for d, x in zip(columns["direction"], m)]
    return _Contrast(
        a=sum(a) / n,
        b=sum(b) / n,
        vaa=_covariance(a, a) / n,
        vab=_covariance(a, b) / n,
        vbb=_covariance(b, b) / n,
        df=float(n - 1),
    )


def _unpaired(columns: dict[str, list[float]]) -> _Contrast | None:
    if min(len(v) for v in columns.values()) < 2:
        return None
    mean = {k: sum(v) / len(v) for k, v in columns.items()}
    var = {k: _covariance(v, v) / len(v) for k, v in columns.items()}
    return _Contrast(
        a=mean["graft"] - mean["magnitude"],
        b=mean["direction"] - mean["magnitude"],
        vaa=var["graft"] + var["magnitude"],
        vab=var["magnitude"],
        vbb=var["magnitude"] + var["direction"],
        df=float("nan"),
        parts=tuple((var[k], len(columns[k])) for k in ("graft", "magnitude", "direction")),
    )


def _label(claims: Mapping[str, float], alpha: float) -> str:
    return next((name for name in CLAIMS if claims.get(name, 1.0) <= alpha), "cannot tell")


def rejudge(judgment: Judgment, alpha: float) -> Judgment:
    """The same graft judged again at another ``alpha`` (its label and CI at 1 − alpha)."""
    m, d, g, paired = judgment.data
    return judge(dict(m), dict(d), dict(g), paired=paired, margin=judgment.margin, alpha=alpha)


def holm_judgments(judgments: Sequence[Judgment], alpha: float = ALPHA) -> list[Judgment]:
    """The verdicts one report shows, corrected together (Holm, family-wise error ≤ α).

    The k judgments are ranked by ``p_any`` (the smallest p-value of any of their claims);
    step-down, the j-th (j = 1…k) is judged again at level α/(k − j + 1): its label and CI
    become those at that level (the strongest claim whose p is within it: a "like M" at 5%
    may become "closer to M" at 1%). The first whose ``p_any`` exceeds its level, and every
    one after it, become "cannot tell" (their CI at the level where the procedure stopped).
    Each keeps ``p`` (its label's own p) and gets ``p_holm`` (Holm-adjusted ``p_any``, ≤ α
    exactly for the verdicts kept) and ``family`` = k. Input order is kept.
    """
    k = len(judgments)
    adjusted, _ = holm([j.p_any for j in judgments], alpha)
    order = sorted(range(k), key=lambda i: judgments[i].p_any)
    out: list[Judgment | None] = [None] * k
    stopped, level = False, alpha
    for rank, i in enumerate(order):
        level = level if stopped else alpha / (k - rank)
        judged = judgments[i]
        if judged.data and judged.claims:
            judged = rejudge(judged, level)
        if stopped or judged.p_any > level:
            stopped = True
            judged = replace(
                judged,
                label="cannot tell",
                note=f"{judged.note}; not kept after Holm over {k} verdicts "
                f"(adjusted p = {adjusted[i]:.2g})",
            )
        elif k > 1:
            judged = replace(
                judged, note=f"{judged.note}; Holm over {k} verdicts, level {level:.2g}"
            )
        out[i] = replace(judged, family=k, p_holm=float(adjusted[i]))
    return out  # type: ignore[return-value]


def label_words(label: str, magnitude: str = "M", direction: str = "D") -> str:
    """A :func:`judge` label with the arms' names: "like M (adam)", "closer to D (sgd)"..."""
    if label.endswith(" M"):
        return f"{label} ({magnitude})"
    if label.endswith(" D"):
        return f"{label} ({direction})"
    return label
