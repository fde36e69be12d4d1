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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
