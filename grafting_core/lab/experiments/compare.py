"""The fair-comparison protocol: tuned plain arms, grafts at M's tuned lr, seeds, verdicts.

A comparison of optimizers means little unless each is tuned. For every plain arm this sweeps
the learning rate on a log grid (half-decade steps by default) with every seed, takes the best
by mean validation loss, and extends the grid while the best sits at its edge (reporting when it
still does). Each graft M#D then trains with M at its tuned lr (D's lr cancels in
‖Δ_M‖/‖Δ_D‖·Δ_D; D runs at its own tuned lr so its other settings are the tuned ones) on the
same seeds, and each pair gets a verdict that takes the seed spread into account. Every run's
arm (``sweep_point``, ``tuned``, ``graft``) is stored with it, so ``read_comparison`` rebuilds
the tables from the store alone.

    comparison = compare(store, base.replace(schedule="warmup_cosine", warmup_steps=100),
                         {"sgd": LAB_OPTIMIZERS["sgd"], "adam": LAB_OPTIMIZERS["adam"]},
                         seeds=(0, 1, 2), executor=LocalExecutor(store.root))
    comparison.verdicts      # adam#sgd: closer to adam / to sgd / cannot tell, with the spread

    python -m grafting_core compare --dataset chars --optimizers sgd adam --seeds 0 1 2
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from grafting_core.lab.experiments.common import (
    LR_COLUMN,
    OptimizerChoice,
    Progress,
    beyond_edge,
    final_by_seed,
    final_metrics,
    graft_config,
    new_group,
    round_lr,
    run_all,
)
from grafting_core.lab.experiments.comparison_plan import (
    CONTROL_SEEDS,
    LONGEST_WARMUP,
    SweepPlan,
    base_settings,
    check_continuation,
    comparison_request,
    plan_comparison,
    request_json,
)
from grafting_core.lab.experiments.graft_lrs import ROLE as GRAFT_LR_ROLE
from grafting_core.lab.experiments.graft_lrs import graft_extensions, plan_graft_lrs, tuned_grafts
from grafting_core.lab.experiments.verdict import closer_to, holm_judgments, judge
from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.executor import Executor
from grafting_core.lab.store.run_store import RunStore


@dataclass
class Comparison:
    """What ``compare`` found: the sweeps, the arms (tuned and grafted) and the verdicts."""

    group: str
    sweep: pd.DataFrame  # arm, lr, mean, std, seeds, best, at_edge
    arms: pd.DataFrame  # arm, role, magnitude, direction, lr, direction_lr, mean, std, seeds
    verdicts: pd.DataFrame  # magnitude, direction, graft/M/D mean ± std, position, verdict
    #: per graft trained at other lrs of M: its best lr's row (``graft_lrs.tuned_grafts``)
    tuned_grafts: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: runs of the group made with other settings than the comparison's (left out of every
    #: table: a group continued with a changed setting before the lab refused it)
    excluded: int = 0
    #: the controls' judgments (control: positive or negative, magnitude, direction, label,
    #: position, CI, ``passed``: like M for the positive, like D for the negative); empty
    #: when the comparison has none
    controls: pd.DataFrame = field(default_factory=pd.DataFrame)


def _choice(label: str, choice: OptimizerChoice, lr: float) -> tuple[str, OptimizerChoice]:
    name, hparams = choice
    return label, (name, {**hparams, "lr": lr})


def _sweep_runs(
    base: RunConfig,
    label: str,
    choice: OptimizerChoice,
    lrs: Sequence[float],
    seeds: Sequence[int],
    warmups: Sequence[int] | None = None,
) -> list[PlannedRun]:
    """A plain arm at each lr (and each warm-up length in ``warmups``; None: the base's) and
    seed of the search."""
    named = warmups is not None  # a warm-up search names each point's warm-up
    return [
        PlannedRun(
            graft_config(
                base.replace(warmup_steps=warmup),
                _choice(label, choice, lr),
                None,
                seed=seed,
                name=f"{label}(lr={lr:g}, warm-up {warmup})" if named else f"{label}(lr={lr:g})",
            ),
            Arm("sweep_point", label),
        )
        for lr in lrs
        for warmup in (warmups if named else [base.warmup_steps])
        for seed in seeds
    ]


def at_stability_edge(cells: pd.DataFrame) -> pd.Series:
    """Per setting of ``cells`` (columns arm, warmup, lr and a boolean ``diverged``):
    whether the next lr up of its arm and warm-up diverged, i.e. its lr sits at the edge of
    stability (``SweepPlan.back_off``)."""
    edge = pd.Series(False, index=cells.index)
    for _, cell in cells.groupby(["arm", "warmup"]):
        ordered = cell.sort_values("lr")
        edge[ordered.index] = ordered["diverged"].shift(-1, fill_value=False).to_numpy(bool)
    return edge


def _sweep_table(
    store: RunStore,
    group: str,
    metric: str,
    runs: pd.DataFrame | None = None,
    *,
    rung_step: int = 0,
    tune_seeds: Sequence[int] = (),
    back_off: bool = False,
) -> pd.DataFrame:
    """Per plain arm, lr and warm-up: mean and std of ``metric`` over its finished seeds. A
    run that diverged (or failed, or was stopped) makes its setting a failure (mean inf:
    never the best); runs still training are ``pending``; runs paused at the rung
    (``rung_step``) and not continued are ``pruned``. ``best`` (lowest mean, among settings
    with nothing pending or pruned), ``at_edge`` (the best is the lowest or highest lr tried)
    and ``warmup_at_edge`` (the shortest or longest warm-up of several) per arm.
    ``stability_edge``: the next lr up at the same warm-up diverged on a seed; with
    ``back_off`` such a setting is the best only where no other complete one is.
    ``tune_seeds``: only these seeds' runs (the search; empty: every sweep run). ``runs``:
    the group's ``store.runs`` rows, when already read."""
    runs = store.runs(group=group) if runs is None else runs
    runs = runs[runs["role"].isin(["sweep_point", "tuned"])]
    if tune_seeds:
        runs = runs[runs["config.seed"].isin(list(tune_seeds))]
    table = final_metrics(store, runs["run_id"].tolist(), metrics=(metric,), runs=runs)
    by_id = runs.set_index("run_id").loc[table["run_id"]]
    table["lr"] = by_id[LR_COLUMN].to_numpy(float)
    table["warmup"] = _warmups_of(by_id)
    paused = (table["status"] == "stopped") & (table["last_step"] == rung_step)
    rows = []
    for (arm, lr, warmup), cell in table.groupby(["magnitude_arm", "lr", "warmup"], sort=True):
        done = cell.loc[cell["status"] == "finished", metric]
        pending = int((cell["status"] == "running").sum())
        pruned = int(paused[cell.index].sum()) if rung_step else 0
        failed = len(cell) - len(done) - pending - pruned
        rows.append(
            {
                "arm": arm,
                "lr": lr,
                "warmup": warmup,
                "seeds": len(done),
                "failed": failed,
                "pending": pending,
                "pruned": pruned,
                "mean": np.inf if failed else done.mean() if len(done) else np.nan,
                "std": np.nan if failed else done.std(),
                "diverged": bool((cell["status"] == "diverged").any()),
            }
        )
    columns = ["arm", "lr", "warmup", "seeds", "failed", "pending", "pruned", "mean", "std"]
    sweep = pd.DataFrame(rows, columns=[*columns, "diverged"])
    sweep["stability_edge"] = at_stability_edge(sweep) if len(sweep) else False
    sweep = sweep.drop(columns="diverged")
    sweep["best"] = False
    sweep["at_edge"] = False
    sweep["warmup_at_edge"] = False
    for _, cell in sweep.groupby("arm"):
        complete = cell[(cell["pending"] == 0) & (cell["pruned"] == 0) & np.isfinite(cell["mean"])]
        if back_off and not complete["stability_edge"].all():
            complete = complete[~complete["stability_edge"]]
        if not complete.empty:
            best = complete["mean"].idxmin()
            sweep.loc[best, "best"] = True
            sweep.loc[best, "at_edge"] = cell.loc[best, "lr"] in (
                cell["lr"].min(),
                cell["lr"].max(),
            )
            warmups = cell["warmup"].unique()
            sweep.loc[best, "warmup_at_edge"] = len(warmups) > 1 and cell.loc[best, "warmup"] in (
                warmups.min(),
                warmups.max(),
            )
    return sweep


def _warmups_of(runs: pd.DataFrame) -> np.ndarray:
    """Each run's warm-up steps (0 where its stored config has none)."""
    if "config.warmup_steps" not in runs:
        return np.zeros(len(runs), dtype=int)
    return runs["config.warmup_steps"].fillna(0).to_numpy(int)


def _rung_leaders(
    store: RunStore,
    group: str,
    metric: str,
    rung_step: int,
    keep: int,
    seeds: Sequence[int],
    back_off: bool = False,
) -> set[tuple[str, float, int]]:
    """The ``keep`` best lrs of each arm and warm-up by ``metric`` at the rung (mean over
    ``seeds``; a diverged or missing seed ranks last), as (arm, lr, warm-up): they go on to
    the end. Warm-ups are not ranked against each other at the rung: a longer one is behind
    there by construction (its lr has only just peaked), so each keeps its own leaders.
    ``back_off``: an lr whose next lr up diverged there (``at_stability_edge``) leads only
    where every lr below it did too."""
    runs = store.runs(group=group)
    runs = runs[runs["role"].isin(["sweep_point", "tuned"]) & runs["config.seed"].isin(seeds)]
    values = store.metrics(runs["run_id"].tolist(), names=[metric])
    at_rung = values[values["step"] == rung_step - 1].set_index("run_id")["value"]
    frame = pd.DataFrame(
        {
            "arm": runs["magnitude_arm"].to_numpy(),
            "lr": runs[LR_COLUMN].to_numpy(float),
            "warmup": _warmups_of(runs),
            "value": at_rung.reindex(runs["run_id"]).to_numpy(float),
        }
    )
    frame["value"] = frame["value"].where(np.isfinite(frame["value"]), np.inf)
    means = frame.groupby(["arm", "lr", "warmup"])["value"].mean().reset_index()
    means["diverged"] = ~np.isfinite(means["value"])
    means["edge"] = at_stability_edge(means) & back_off
    leaders = set()
    for _, cell in means.groupby(["arm", "warmup"]):
        safe = cell[~cell["edge"] & ~cell["diverged"]]
        for row in (safe if not safe.empty else cell).nsmallest(keep, "value").itertuples():
            leaders.add((row.arm, float(row.lr), int(row.warmup)))
    return leaders


def _extensions(sweep: pd.DataFrame, plan: SweepPlan) -> dict[str, float]:
    """For each arm whose best lr sits at its grid's edge: the next lr beyond that edge."""
    out = {}
    for arm, cell in sweep.groupby("arm"):
        best = cell[cell["best"]]
        if best.empty or not bool(best["at_edge"].iloc[0]):
            continue
        lr = float(best["lr"].iloc[0])
        out[arm] = beyond_edge(lr, cell["lr"].tolist(), plan.factor)
    return out


def _longer_warmups(sweep: pd.DataFrame, base: RunConfig) -> dict[str, int]:
    """For each arm whose best sits at the longest of several warm-ups searched: twice that
    warm-up (at most ``LONGEST_WARMUP`` of the steps), searched next at every lr."""
    out = {}
    longest = round(LONGEST_WARMUP * base.steps)
    for arm, cell in sweep.groupby("arm"):
        best = cell[cell["best"]]
        tried = cell["warmup"].unique()
        if best.empty or len(tried) < 2 or best["warmup"].iloc[0] != tried.max():
            continue
        longer = min(2 * int(tried.max()), longest)
        if longer > tried.max():
            out[arm] = longer
    return out


def compare(
    store: RunStore,
    base: RunConfig,
    optimizers: Mapping[str, OptimizerChoice],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    plan: SweepPlan | None = None,
    partial: Sequence[Sequence[str]] = (),
    metric: str = "val_loss",
    executor: Executor | None = None,
    progress: Progress | None = None,
    group: str | None = None,
    stop: Callable[[], bool] | None = None,
    tune_grafts: bool = False,
) -> Comparison:
    """Tune each plain arm, graft every ordered pair at M's tuned lr, and judge each pair.

    ``optimizers``: label → (registry name, hparams); each arm's sweep is centred on its own
    ``lr``. ``base`` carries everything else (its schedule applies to every run: the CLI and
    the app default to warm-up + cosine). Runs go through ``executor`` in parallel, in the
    store group ``group`` (default: a new ``compare-...`` id; the app names it up front so a
    page can watch it while this blocks in a thread). Each entry of ``partial`` (a list of
    layer kinds, e.g. ``["hidden"]``) adds, per pair, a partial graft that grafts only those
    layers and gives the others M's own step (``RunConfig.grafted``). ``stop``, asked before
    each phase (sweep, each extension, grafts): once it returns True no more runs are created,
    no lr is marked tuned if the grafts had not begun, and this returns what was trained (the
    app's Stop; stopping the runs themselves is the caller's). ``tune_grafts``: then each
    graft's own lr too, as the plain arms' (M's lr in the graft on ``plan``'s grid around M's
    tuned lr, extended while a graft's best sits at its edge; ``graft_lrs``): the verdicts
    stay those at M's tuned lr, ``Comparison.tuned_grafts`` has the tuned grafts'.
    """
    planned_comparison = plan_comparison(
        base,
        optimizers,
        seeds=seeds,
        plan=plan,
        partial=partial,
        metric=metric,
        tune_grafts=tune_grafts,
    )  # every setting checked before anything is written
    plan = planned_comparison.request["plan"]  # the protocol's when none was given
    if group is not None:
        check_continuation(store, group, planned_comparison.request)
    group = group or new_group("compare")
    store.set_group_request(group, "compare", request_json(planned_comparison.request))
    total = planned_comparison.fewest
    done = 0
    tune_seeds = plan.tune_seeds or tuple(seeds)
    ranking_seeds = plan.ranking_seeds(tune_seeds)
    warmups = (
        {label: plan.warmup_steps(base) for label in optimizers} if plan.warmups else None
    )  # per arm: a warm-up is added where an arm's best sits at the longest
    rung_step = plan.rung_step(base)

    def train(planned: list[PlannedRun], pause_at: int = 0) -> list[str]:
        nonlocal done, total
        if stop is not None and stop():
            return []
        total = max(total, done + len(planned))  # extensions add runs
        report = (lambda n, _: progress(done + n, total)) if progress else None
        ids = run_all(
            store,
            planned,
            group=group,
            kind="compare",
            executor=executor,
            progress=report,
            reuse=True,
            pause_at=pause_at,
        )
        done += len(planned)
        return ids

    lrs = {label: plan.grid(choice[1]["lr"]) for label, choice in optimizers.items()}

    def search() -> None:
        """Every setting of the search trained once: with a rung, every setting to the rung
        on the ranking seeds, then each warm-up's leaders to the end on every tuning seed."""

        def planned(on_seeds: Sequence[int]) -> list[PlannedRun]:
            return [
                run
                for label, choice in optimizers.items()
                for run in _sweep_runs(
                    base, label, choice, lrs[label], on_seeds, warmups and warmups[label]
                )
            ]

        if not rung_step:
            train(planned(tune_seeds))
            return
        train(planned(ranking_seeds), pause_at=rung_step)
        leaders = _rung_leaders(
            store, group, metric, rung_step, plan.keep, ranking_seeds, plan.back_off
        )
        train(
            [
                run
                for run in planned(tune_seeds)
                if (
                    run.arm.magnitude,
                    float(run.config.magnitude_hparams["lr"]),
                    run.config.warmup_steps,
                )
                in leaders
            ]
        )

    def sweep_table() -> pd.DataFrame:
        return _sweep_table(
            store,
            group,
            metric,
            rung_step=rung_step,
            tune_seeds=plan.tune_seeds,
            back_off=plan.back_off,
        )

    search()
    for _ in range(plan.extensions):
        sweep = sweep_table()
        beyond = _extensions(sweep, plan)
        longer = _longer_warmups(sweep, base) if warmups else {}
        if not (beyond or longer):
            break
        for label, lr in beyond.items():
            lrs[label].append(lr)
        for label, warmup in longer.items():
            warmups[label].append(warmup)
        search()
    if stop is not None and stop():  # a sweep cut short names no tuned lr
        return read_comparison(store, group, metric=metric)
    sweep = sweep_table()
    tuned = {row.arm: (row.lr, int(row.warmup)) for row in sweep[sweep["best"]].itertuples()}
    _mark_tuned(store, group, tuned, plan.tune_seeds)
    if plan.tune_seeds:  # each arm's best again, on the reporting seeds
        train(
            [
                PlannedRun(run.config, Arm("tuned", label))
                for label, (lr, warmup) in tuned.items()
                for run in _sweep_runs(
                    base, label, optimizers[label], [lr], seeds, [warmup] if warmups else None
                )
            ]
        )
    pairs = [(m, d) for m in optimizers for d in optimizers if m != d and {m, d} <= set(tuned)]
    variants = [[]] + [list(kinds) for kinds in partial]
    planned = []
    for m, d in pairs:
        for kinds in variants:
            arm = Arm("partial_graft" if kinds else "graft", m, d, "+".join(kinds))
            planned += [
                PlannedRun(
                    graft_config(
                        base.replace(warmup_steps=tuned[m][1]),  # M's schedule
                        _choice(m, optimizers[m], tuned[m][0]),
                        _choice(d, optimizers[d], tuned[d][0]),
                        seed=seed,
                        grafted=kinds,
                        name=arm.label,
                    ),
                    arm,
                )
                for seed in seeds
            ]
    train(planned)
    if plan.control:
        on = seeds[:CONTROL_SEEDS]
        pair = _farthest_pair(store, group, metric, tuned)
        train(
            _control_runs(base, optimizers, tuned, on)
            + _negative_control_runs(base, optimizers, tuned, on, pair)
        )
    for phase in range(1 + plan.extensions if tune_grafts else 0):
        grafts = [
            run
            for m, d in pairs
            for run in (
                plan_graft_lrs(store, group, magnitude=m, direction=d, lrs=plan.grid(tuned[m][0]))
                if phase == 0
                else graft_extensions(store, group, magnitude=m, direction=d, factor=plan.factor)
            )
        ]
        if not grafts:
            break
        train(grafts)
    return read_comparison(store, group, metric=metric)


CONTROL = "{label}@lr/10"  # the positive control's M: ``label`` at a tenth of its tuned lr


def _control_runs(
    base: RunConfig,
    optimizers: Mapping[str, OptimizerChoice],
    tuned: Mapping[str, tuple[float, int]],
    seeds: Sequence[int],
) -> list[PlannedRun]:
    """The positive control on the first tuned optimizer X: M = X at a tenth of its tuned lr
    (same warm-up), D = tuned X. X's step is proportional to its lr, so M and D differ only
    in step size and M#D is M step for step: the lab must judge it "like M"."""
    label = next((label for label in optimizers if label in tuned), None)
    if label is None:
        return []
    lr, warmup = tuned[label]
    slow = CONTROL.format(label=label)
    name, hparams = optimizers[label]
    magnitude = (slow, (name, {**hparams, "lr": round_lr(lr / 10)}))
    on = base.replace(warmup_steps=warmup)
    return [
        PlannedRun(graft_config(on, magnitude, None, seed=seed, name=slow), Arm("control", slow))
        for seed in seeds
    ] + [
        PlannedRun(
            graft_config(on, magnitude, _choice(label, optimizers[label], lr), seed=seed),
            Arm("control_graft", slow, label),
        )
        for seed in seeds
    ]


#: the negative control's M: the comparison's first graft X#Y, itself the magnitude of a
#: graft onto tuned X (a Graft is an optimizer: ``build_optimizer`` takes its import path)
NESTED_GRAFT = "grafting_core.graft:Graft"


def _farthest_pair(
    store: RunStore, group: str, metric: str, tuned: Mapping[str, tuple[float, int]]
) -> tuple[str, str] | None:
    """The two tuned arms farthest apart by mean ``metric`` on the reporting seeds, as (the
    worse X, the better Y): the negative control's pair, chosen before any graft trains. X#Y
    is told apart from X only if Y's direction carries Y's advantage, so the widest gap gives
    that control its best chance to show something. None with fewer than two tuned arms."""
    runs = store.runs(group=group)
    runs = runs[(runs["role"] == "tuned") & runs["magnitude_arm"].isin(list(tuned))]
    table = final_metrics(store, runs["run_id"].tolist(), metrics=(metric,), runs=runs)
    means = table[table["status"] == "finished"].groupby("magnitude_arm")[metric].mean()
    means = means[np.isfinite(means)]
    if len(means) < 2:
        return None
    return str(means.idxmax()), str(means.idxmin())


def _negative_control_runs(
    base: RunConfig,
    optimizers: Mapping[str, OptimizerChoice],
    tuned: Mapping[str, tuple[float, int]],
    seeds: Sequence[int],
    pair: tuple[str, str] | None,
) -> list[PlannedRun]:
    """The negative control on the tuned optimizers ``pair`` = (X, Y): M = X#Y (the
    comparison's graft: X's step sizes, Y's directions), D = tuned X. M and D take the same
    per-layer step sizes and differ only in direction, so M#D (``(X#Y)#X``: a Graft whose M
    is a Graft) is D step for step: the lab must judge it "like D". It trains M#D alone; its
    M and D are the comparison's own runs on the same seeds."""
    if pair is None:
        return []
    x, y = pair
    (x_name, x_hparams), (y_name, y_hparams) = optimizers[x], optimizers[y]
    nested = {
        "magnitude": [x_name, {**x_hparams, "lr": tuned[x][0]}],
        "direction": [y_name, {**y_hparams, "lr": tuned[y][0]}],
    }
    arm = Arm("negative_control", x, y)  # labels: the graft X#Y it controls
    return [
        PlannedRun(
            graft_config(
                base.replace(warmup_steps=tuned[x][1]),  # X#Y's schedule, X's
                (f"{x}#{y}", (NESTED_GRAFT, nested)),
                _choice(x, optimizers[x], tuned[x][0]),
                seed=seed,
                name=arm.label,
            ),
            arm,
        )
        for seed in seeds
    ]


def _mark_tuned(
    store: RunStore,
    group: str,
    tuned: Mapping[str, tuple[float, int]],
    tune_seeds: Sequence[int] = (),
) -> None:
    """Give each arm's runs at its ``tuned`` setting (lr, warm-up steps) the role ``tuned``
    and the other plain runs ``sweep_point``; with separate ``tune_seeds`` the search's runs
    stay sweep points and a rerun on the reporting seeds at another setting than the tuned one
    becomes ``superseded``, as a graft whose M or D setting is no longer tuned does (a
    continued comparison may tune another setting once it has more seeds)."""
    runs = store.runs(group=group)
    configs = store.runs(group=group, flatten_config=False).set_index("run_id")["config"]
    nested = {  # the negative control's runs: their M is a graft of two tuned arms
        run_id: config["magnitude_hparams"]
        for run_id, config in configs.items()
        if config["magnitude"] == NESTED_GRAFT
    }
    d_lrs = (
        runs["config.direction_hparams.lr"].to_numpy(float)
        if "config.direction_hparams.lr" in runs
        else np.full(len(runs), np.nan)
    )
    for run_id, role, m, d, variant, lr, warmup, seed, d_lr in zip(
        runs["run_id"],
        runs["role"],
        runs["magnitude_arm"],
        runs["direction_arm"],
        runs["arm_variant"].fillna(""),
        runs[LR_COLUMN].to_numpy(float),
        _warmups_of(runs),
        runs["config.seed"].to_numpy(int),
        d_lrs,
    ):
        at_tuned = tuned.get(m) == (lr, warmup)
        plain = role in ("sweep_point", "tuned") or (role == "superseded" and not d)
        if role == "negative_control" or run_id in nested:  # (M#D)#M at tuned M and D
            inner = nested[run_id]
            current = (
                m in tuned
                and d in tuned
                and (inner["magnitude"][1]["lr"], warmup) == tuned[m]
                and inner["direction"][1]["lr"] == tuned[d][0]
                and d_lr == tuned[m][0]
            )
            want = "negative_control" if current else "control_superseded"
            if want != role:
                store.set_role(run_id, want)
            continue
        if role.startswith("control"):  # at a tenth of the tuned lr of the D it controls
            x = tuned.get(d or m.split("@")[0])
            current = x is not None and (round_lr(x[0] / 10), x[1]) == (lr, warmup)
            want = ("control_graft" if d else "control") if current else "control_superseded"
            if want != role:
                store.set_role(run_id, want)
            continue
        if plain and tune_seeds:
            want = "sweep_point" if seed in tune_seeds else "tuned" if at_tuned else "superseded"
        elif plain:
            want = "tuned" if at_tuned else "sweep_point"
        elif role in ("graft", "partial_graft", "superseded"):
            current = at_tuned and d in tuned and tuned[d][0] == d_lr
            want = ("partial_graft" if variant else "graft") if current else "superseded"
        else:
            continue
        if want != role:
            store.set_role(run_id, want)


def read_comparison(store: RunStore, group: str, *, metric: str = "val_loss") -> Comparison:
    """The tables of a stored comparison (finished or still training), from its runs' arms."""
    runs = store.runs(group=group)
    if runs.empty:
        raise KeyError(f"No runs in group {group!r}")
    # A static-ratio study's runs join the group but are no arm of the comparison (nor runs
    # of other settings): ratio_study reads them
    runs = runs[runs["role"] != "static_ratios"]
    runs, excluded = _runs_made_as_requested(store, group, runs)
    request = comparison_request(store, group)
    search = request["plan"] if request else SweepPlan()
    sweep = _sweep_table(
        store,
        group,
        metric,
        runs,
        rung_step=search.rung_step(request["base"]) if request else 0,
        tune_seeds=search.tune_seeds,
        back_off=search.back_off,
    )
    arms = runs[runs["role"].isin(["tuned", "graft", "partial_graft", *CONTROL_ROLES])]
    table = final_metrics(store, arms["run_id"].tolist(), metrics=(metric,), runs=arms)
    config = arms.set_index("run_id").loc[table["run_id"]]
    table["variant"] = config["arm_variant"].fillna("").to_numpy()
    table["lr"] = config[LR_COLUMN].to_numpy(float)
    table["seed"] = config["config.seed"].to_numpy(int)
    table["direction_lr"] = (
        config["config.direction_hparams.lr"].to_numpy(float)
        if "config.direction_hparams.lr" in config
        else np.nan
    )
    table["arm"] = [
        Arm(role, m, d or "", v).label
        for role, m, d, v in zip(
            table["role"].replace("tuned", "plain"),
            table["magnitude_arm"],
            table["direction_arm"],
            table["variant"],
        )
    ]
    judged = table[table["status"].isin(["finished", "diverged", "failed"])]
    table = table[~table["role"].isin(CONTROL_ROLES)]
    values = table[table["status"] == "finished"]
    summary = (
        values.groupby(["arm", "role", "magnitude_arm", "direction_arm", "variant"], dropna=False)
        .agg(
            lr=("lr", "first"),
            direction_lr=("direction_lr", "first"),
            mean=(metric, "mean"),
            std=(metric, "std"),
            seeds=(metric, "size"),
        )
        .reset_index()
        .rename(columns={"magnitude_arm": "magnitude", "direction_arm": "direction"})
    )
    has_lrs = (runs["role"] == GRAFT_LR_ROLE).any()  # else no need to read the store again
    tuned = tuned_grafts(store, group, metric=metric) if has_lrs else pd.DataFrame()
    verdicts = _verdicts(values, metric)
    judgments, controls = _judgments(judged, metric)
    if not verdicts.empty:
        verdicts = verdicts.join(judgments, on=["magnitude", "direction", "grafted"])
    return Comparison(group, sweep, summary, verdicts, tuned, excluded, controls)


def _runs_made_as_requested(
    store: RunStore, group: str, runs: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """The rows of ``runs`` made with the comparison's stored settings (all of them for a
    group that kept none), and how many were left out: runs of other settings never pool."""
    request = comparison_request(store, group)
    if request is None:
        return runs, 0
    searched = ("warmup_steps",) if request["plan"].warmups else ()
    want = base_settings(request["base"], ignore=searched)
    configs = store.runs(group=group, flatten_config=False).set_index("run_id")["config"]
    optimizers = request["optimizers"]

    def made_as_requested(config: Mapping, arm: str, direction: str) -> bool:
        label = arm.split("@")[0]  # a positive control's M is "X@lr/10"
        if label not in optimizers or base_settings(config, ignore=searched) != want:
            return False
        if config["magnitude"] == NESTED_GRAFT:  # the negative control: M = X#Y
            inner = config["magnitude_hparams"]
            return direction in optimizers and [
                inner["magnitude"][0],
                inner["direction"][0],
            ] == [optimizers[label][0], optimizers[direction][0]]
        return config["magnitude"] == optimizers[label][0]

    keep = [
        made_as_requested(configs[run_id], arm, direction or "")
        for run_id, arm, direction in zip(
            runs["run_id"], runs["magnitude_arm"], runs["direction_arm"]
        )
    ]
    return runs[keep], int(len(runs) - sum(keep))


def _verdicts(values: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per graft M#D (full or partial): where it lands between tuned M and tuned D,
    with the spread."""
    tuned = {
        m: cell[metric].to_numpy(float)
        for m, cell in values[values["role"] == "tuned"].groupby("magnitude_arm")
    }
    rows = []
    grafts = values[values["role"].isin(["graft", "partial_graft"])]
    for (m, d, variant), cell in grafts.groupby(
        ["magnitude_arm", "direction_arm", "variant"], sort=False
    ):
        if m in tuned and d in tuned:
            rows.append(
                {
                    "magnitude": m,
                    "direction": d,
                    "grafted": variant or "all",
                    **closer_to(cell[metric].to_numpy(float), tuned[m], tuned[d]),
                }
            )
    return pd.DataFrame(rows)


CONTROL_ROLES = ("control", "control_graft", "negative_control")


def _judgments(table: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each graft judged against its tuned arms seed by seed (``verdict.judge``: paired t,
    the position's 95% CI, an equivalence margin), Holm-corrected together (the verdicts one
    report shows), and each control against its M and D on its own seeds, at 5% on its own;
    a diverged or failed seed counts as diverged. Returns the grafts' rows indexed by (magnitude,
    direction, grafted), and the controls' rows (``control``: positive or negative, its M
    and D labels, ``passed``: like M for the positive one, like D for the negative)."""

    tuned = {
        m: final_by_seed(rows, metric)
        for m, rows in table[table["role"] == "tuned"].groupby("magnitude_arm")
    }
    keys, judgments = [], []
    grafts = table[table["role"].isin(["graft", "partial_graft"])]
    for (m, d, variant), rows in grafts.groupby(
        ["magnitude_arm", "direction_arm", "variant"], sort=False
    ):
        if m in tuned and d in tuned:
            keys.append((m, d, variant or "all"))
            judgments.append(judge(tuned[m], tuned[d], final_by_seed(rows, metric)))

    def on_its_seeds(m: pd.Series, d: pd.Series, g: pd.Series) -> list[pd.Series]:
        """A control's arms on the seeds it trained (paired: its M or D has more)."""
        common = g.index.intersection(m.index).intersection(d.index)
        return [arm.loc[common] for arm in (m, d, g)]

    controls = []
    slow = {
        m: final_by_seed(rows, metric)
        for m, rows in table[table["role"] == "control"].groupby("magnitude_arm")
    }
    for (m, d), rows in table[table["role"] == "control_graft"].groupby(
        ["magnitude_arm", "direction_arm"], sort=False
    ):
        if m in slow and d in tuned:
            controls.append(("positive", m, d))
            judgments.append(judge(*on_its_seeds(slow[m], tuned[d], final_by_seed(rows, metric))))
    full = {
        (m, d): final_by_seed(rows, metric)
        for (m, d), rows in grafts[grafts["variant"] == ""].groupby(
            ["magnitude_arm", "direction_arm"], sort=False
        )
    }
    for (x, y), rows in table[table["role"] == "negative_control"].groupby(
        ["magnitude_arm", "direction_arm"], sort=False
    ):  # M = the graft X#Y, D = tuned X
        if (x, y) in full and x in tuned:
            controls.append(("negative", f"{x}#{y}", x))
            judgments.append(
                judge(*on_its_seeds(full[x, y], tuned[x], final_by_seed(rows, metric)))
            )
    rows = []
    # Holm over the grafts' verdicts (the findings); each control is judged on its own at
    # 5%: what it must show holds by construction, so it is a check of the instrument's
    # power, not a claim that a family-wise correction protects
    for judgment in holm_judgments(judgments[: len(keys)]) + judgments[len(keys) :]:
        row = judgment.as_row()
        rows.append(
            {
                "label": row["label"],
                "position": row["position"],
                "ci_low": row["ci_low"],
                "ci_high": row["ci_high"],
                "ci_level": 1.0 - row["alpha"],  # 95%, or Holm's stricter level in a family
                "p_holm": row["p_holm"],
                "margin": row["margin"],
                "judgment": row["reason"],
                **{
                    f"{arm}_{key}": row[f"{arm}_{key}"]
                    for arm in ("graft", "magnitude", "direction")
                    for key in ("mean", "median", "diverged")
                },
            }
        )
    index = pd.MultiIndex.from_tuples(keys, names=["magnitude", "direction", "grafted"])
    graft_rows = pd.DataFrame(rows[: len(keys)], index=index)
    graft_rows = graft_rows.drop(
        columns=["position", *(f"{a}_mean" for a in ("graft", "magnitude", "direction"))],
        errors="ignore",
    )  # the verdict table has them (same formula) from the summary
    control_rows = pd.DataFrame(rows[len(keys) :])
    if controls:
        for column, values in enumerate(zip(*controls)):
            control_rows.insert(column, ("control", "magnitude", "direction")[column], values)
        must = control_rows["control"].map({"positive": "like M", "negative": "like D"})
        control_rows["passed"] = control_rows["label"] == must
    return graft_rows, control_rows
