"""Grid: every M#D pair of a set of optimizers, trained in parallel, as a heatmap; or a tuned
comparison of them (each optimizer's lr swept, M#D at M's tuned lr, a verdict per pair).

Grid runs are created here in one group and queued on the worker processes (ui.resources);
a comparison is orchestrated by a thread of the server (``start_comparison``), phase by
phase, its runs trained by the same workers. A fragment reads the store once a second and
fills the results in as runs finish. The watched group is in the URL (``?group=<id>``), so a
reloaded tab re-attaches (a ``compare-`` group opens the page in the tuned mode).
"""

import math

import pandas as pd
import streamlit as st

from grafting_core import LAYER_KINDS
from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from grafting_core.lab.experiments.compare import (
    LR_COLUMN,
    SweepPlan,
    check_partial,
    comparison_request,
    read_comparison,
)
from grafting_core.lab.experiments.graft_lrs import GRAFT_ROLES, graft_lr_table, plan_graft_lrs
from grafting_core.lab.experiments.graft_lrs import ROLE as GRAFT_LR_ROLE
from grafting_core.lab.experiments.grid import grid_configs, grid_matrix, grid_reading, grid_table
from grafting_core.lab.experiments.verdict import closer_to_words
from grafting_core.lab.figures import experiments as experiment_figures
from grafting_core.lab.runs.capacity import check_fits
from grafting_core.lab.runs.config import SCHEDULES, RunConfig
from ui import charts, forms, live
from ui.resources import (
    comparison_state,
    get_jobs,
    get_store,
    orchestrating,
    queue_runs,
    start_comparison,
    start_group,
    stop_comparison,
)
from ui.state import keep_valid, page_setup

MAX_RUNS = 100  # a bigger grid belongs on the command line (python -m grafting_core grid)
MODES = {"grid": "Fixed learning rates (grid)", "tuned": "Tuned comparison (each lr swept)"}
FACTORS = {math.sqrt(10): "half a decade (× 3.16)", 10.0: "a decade (× 10)", 2.0: "× 2"}
SCHEDULE_NAMES = {
    "constant": "constant",
    "cosine": "cosine decay",
    "linear": "linear decay",
    "warmup_cosine": "warm-up + cosine",
}
PARTIAL_KEYS = ("grid.partial", "grid.partial.2", "grid.partial.3")  # partial grafts per pair
DEFAULTS = {
    **forms.data_model_defaults("grid"),
    "grid.mode": "grid",  # the URL's group decides on a session's first run (mode_of_url)
    "grid.optimizers": ["sgd", "adam", "adagrad"],
    **{f"grid.lr.{label}": float(hp["lr"]) for label, (_, hp) in LAB_OPTIMIZERS.items()},
    "grid.seeds": "0",
    "grid.steps": 500,  # 9 runs of the default MLP: ~15-30 s on two CPU cores
    "grid.batch_size": 64,
    "grid.metric": "val_loss",
    "grid.smoothing": 0.6,
    "grid.group": "",  # the grid this session watches (also the URL's ?group=)
    "grid.redraw_seconds": [],  # (CPU, wall) seconds of the last live redraws
    "grid.metric_cache": {},  # run id -> (metrics read so far, run ended)
    "grid.tuned_seeds": "0, 1, 2",  # a verdict weighs the spread over seeds
    "grid.points": 5,
    "grid.factor": math.sqrt(10),
    "grid.extensions": 2,
    "grid.tune_grafts": False,
    # layer kinds of each partial graft per pair (the first empty one ends the list)
    **{key: [] for key in PARTIAL_KEYS},
    "grid.schedule": "warmup_cosine",
    "grid.warmup_percent": 10,
    "grid.tuned.group": "",  # the comparison this session watches (also the URL's ?group=)
    "grid.tuned.redraw_seconds": [],
}
INTRO = r"""
Grafting M#D takes each layer's step **size** from optimizer M and its step **direction**
from optimizer D. Train every pair of a few optimizers and lay the results out as a table:
one **row per M**, one **column per D** (the diagonal A#A is plain A). If the rows are
uniform — every D gives about the same result under the same M — then the step size
decides how well an optimizer trains, and the direction matters little. That is what
Agarwal et al. ([arXiv 2002.11803](https://arxiv.org/abs/2002.11803)) found; check it on
your own data here. All pairs train in parallel in the background, on the same batches in
the same order for a given seed.
"""
TUNED_INTRO = r"""
A fair comparison tunes each optimizer first. Each one's learning rate is **swept** on a
log grid centred on its lr below, with every seed; the lr with the best mean final
validation loss is its **tuned** lr (the grid grows while the best sits at its edge). Then
every M#D trains at **M's tuned lr**, and each pair gets a verdict, *closer to M*, *closer
to D* or *cannot tell*, that weighs the gap against the spread over seeds.
"""
METRICS = {"val_loss": "final validation loss", "val_accuracy": "final validation accuracy"}


def mode_of_url() -> str:
    """The mode a new session opens in: tuned when the URL watches a comparison."""
    return "tuned" if st.query_params.get("group", "").startswith("compare-") else "grid"


def optimizer_inputs() -> dict[str, tuple[str, dict]]:
    """The chosen lab optimizers, each with its edited learning rate."""
    labels = st.multiselect(
        "Optimizers (each is tried as M and as D)",
        list(LAB_OPTIMIZERS),
        key="grid.optimizers",
        help="The lab's presets; momentum, betas etc. keep their defaults.",
    )
    chosen = {}
    columns = st.columns(3)
    for i, label in enumerate(labels):
        name, hparams = LAB_OPTIMIZERS[label]
        with columns[i % 3]:
            lr = st.number_input(
                f"{label} lr",
                key=f"grid.lr.{label}",
                format="%g",
                step=forms.increment(float(hparams["lr"])),
                help=f"{label}'s learning rate, used when it is M and when "
                "it is D (in a tuned comparison: its sweep's centre)",
            )
        chosen[label] = (name, {**hparams, "lr": float(lr)})
    return chosen


def common_form(
    seeds_key: str,
) -> tuple[dict, dict, int, int, str, st.delta_generator.DeltaGenerator]:
    """The widgets both modes share; returns (optimizers, data and model settings, steps,
    batch size, seeds as typed, the column where the run count goes)."""
    col_opt, col_data, col_run = st.columns(3, gap="large")
    with col_opt:
        st.markdown("**Optimizers and their learning rates**")
        optimizers = optimizer_inputs()
    with col_data:
        st.markdown("**Data and model**")
        data = forms.data_model_picker("grid")
    with col_run:
        st.markdown("**Training loop**")
        steps = st.number_input("Steps", step=100, key="grid.steps")  # no min_value: see
        batch = st.number_input("Batch size", step=16, key="grid.batch_size")  # check_sizes
        seeds = st.text_input(
            "Seeds",
            key=seeds_key,
            help="whole numbers separated by commas, e.g. 0, 1, 2: every "
            "run is trained once per seed",
        )
    return optimizers, data, int(steps), int(batch), seeds, col_run


def form() -> tuple[list[RunConfig] | None, str]:
    """The grid's settings; returns (configs, "") or (None, why they are invalid)."""
    optimizers, data, steps, batch, seeds_text, col_run = common_form("grid.seeds")
    try:
        seeds = forms.parse_numbers(seeds_text, field="seeds", integer=True)
        forms.check_sizes(data)
        base = RunConfig(
            **data, steps=steps, batch_size=batch, device=st.session_state["shared.device"]
        )
        check_fits(base)
        configs = grid_configs(base, optimizers, seeds)
    except (ValueError, TypeError) as error:
        return None, str(error)
    if len(configs) > MAX_RUNS:
        return None, (
            f"{len(configs)} runs ({len(optimizers)}² pairs × {len(seeds)} seeds) is "
            f"more than this page trains ({MAX_RUNS}); choose fewer, or use "
            "`python -m grafting_core grid`."
        )
    col_run.caption(
        f"{len(configs)} runs: {len(optimizers)}² pairs × {len(seeds)} "
        f"seed{'s' if len(seeds) > 1 else ''}, {get_jobs().max_workers} at a time."
    )
    return configs, ""


def sweep_inputs() -> tuple[SweepPlan | None, str, int, str]:
    """The sweep's and the schedule's widgets; returns (plan or None, why not, warm-up
    percent, schedule)."""
    st.markdown("**Learning-rate sweep and schedule** (every run of the comparison)")
    cols = st.columns(5)
    points = cols[0].number_input(
        "Sweep points",
        min_value=2,
        max_value=15,
        key="grid.points",
        help="lrs in each optimizer's first sweep, centred on its lr",
    )
    factor = cols[1].selectbox(
        "Step between lrs", list(FACTORS), key="grid.factor", format_func=FACTORS.get
    )
    extensions = cols[2].number_input(
        "Extensions",
        min_value=0,
        max_value=5,
        key="grid.extensions",
        help="while an optimizer's best lr sits at its grid's edge, one more lr beyond that "
        "edge (all seeds), at most this many times",
    )
    schedule = cols[3].selectbox(
        "Schedule",
        SCHEDULES,
        key="grid.schedule",
        format_func=SCHEDULE_NAMES.get,
        help="of every run's lr (a graft's: M's lr)",
    )
    warmup = cols[4].number_input(
        "Warm-up (% of steps)",
        min_value=0,
        max_value=100,
        step=5,
        key="grid.warmup_percent",
        disabled=schedule != "warmup_cosine",
    )
    left, right = st.columns(2, vertical_alignment="center")
    first, more = "Also a partial graft per pair", "And another partial graft"
    for number, key in enumerate(PARTIAL_KEYS):
        if number and not st.session_state[PARTIAL_KEYS[number - 1]]:
            break  # one more appears once this one has kinds
        right.multiselect(
            f"{more if number else first}, grafting only",
            LAYER_KINDS,
            key=key,
            placeholder="none" if number else "none: whole grafts only",
            help="Layer kinds that take D's direction in one more graft per pair; the other "
            "layers take M's own step. Which layers carry D's advantage? (Zhao et al. 2024 "
            "found SGD-like steps fail mainly on embeddings, the head and norms.) None: whole "
            f"grafts only. Up to {len(PARTIAL_KEYS)} partial grafts per pair.",
        )
    left.checkbox(
        "Tune each graft's lr too",
        key="grid.tune_grafts",
        help="M's tuned lr is M's best alone: with D's direction a graft may train best at "
        "another. Then each graft's M lr is swept like the optimizers' (same grid around "
        "M's tuned lr, same extensions); the verdicts stay those at M's tuned lr, and each "
        "graft gets a figure of its lrs.",
    )
    try:
        plan = SweepPlan(points=int(points), factor=float(factor), extensions=int(extensions))
    except ValueError as error:
        return None, str(error), int(warmup), schedule
    return plan, "", int(warmup), schedule


def chosen_partials() -> list[list[str]]:
    """The layer kinds of each partial graft chosen, up to the first empty choice."""
    partial = []
    for key in PARTIAL_KEYS:
        kinds = list(st.session_state.get(key, []))
        if not kinds:
            break
        partial.append(kinds)
    return partial


def tuned_form() -> tuple[dict | None, str]:
    """The comparison's settings; returns (``start_comparison``'s arguments, "") or (None,
    why they are invalid)."""
    optimizers, data, steps, batch, seeds_text, col_run = common_form("grid.tuned_seeds")
    plan, problem, warmup, schedule = sweep_inputs()
    try:
        if plan is None:
            raise ValueError(problem)
        seeds = forms.parse_numbers(seeds_text, field="seeds", integer=True)
        if len(optimizers) < 2:
            raise ValueError(f"A comparison needs at least two optimizers (got {len(optimizers)})")
        warmup_steps = steps * warmup // 100 if schedule == "warmup_cosine" else 0
        forms.check_sizes(data)
        base = RunConfig(
            **data,
            steps=steps,
            batch_size=batch,
            schedule=schedule,
            warmup_steps=warmup_steps,
            device=st.session_state["shared.device"],
        )
        check_fits(base)
        grid_configs(base, optimizers, seeds)  # every optimizer's settings, alone and grafted
        partial = chosen_partials()
        check_partial(base, partial)
        for label, (_, hparams) in optimizers.items():
            try:
                plan.grid(hparams["lr"])
            except ValueError as error:
                raise ValueError(f"{label}: {error}") from None
    except (ValueError, TypeError) as error:
        return None, str(error)
    tune = bool(st.session_state["grid.tune_grafts"])
    variants = 1 + len(partial)
    low, high = run_count(len(optimizers), len(seeds), plan, variants, tune_grafts=tune)
    if high > MAX_RUNS:
        problem = (
            f"Up to {high} runs is more than this page trains ({MAX_RUNS}); choose "
            "fewer, or use `python -m grafting_core compare`."
        )
        col_run.caption(problem)  # said before Start is pressed
        return None, problem
    col_run.caption(count_text(len(optimizers), len(seeds), plan, variants, tune))
    request = {"base": base, "optimizers": optimizers, "seeds": seeds, "plan": plan}
    return {**request, "partial": partial, "tune_grafts": tune}, ""


def run_count(
    arms: int, seeds: int, plan: SweepPlan, variants: int = 1, *, tune_grafts: bool = False
) -> tuple[int, int]:
    """The fewest and the most runs of a comparison (with no extension, with every one);
    ``variants``: grafts per pair (the full one and each partial one); ``tune_grafts``: each
    graft's lr swept too (its grid less M's tuned lr, which an odd grid centres on)."""
    grafts = arms * (arms - 1) * variants
    fewest = arms * plan.points * seeds + grafts * seeds
    most = fewest + arms * plan.extensions * seeds
    if tune_grafts:
        lrs = plan.points - plan.points % 2
        fewest, most = (
            fewest + grafts * lrs * seeds,
            most + grafts * (lrs + plan.extensions) * seeds,
        )
    return fewest, most


def count_text(
    arms: int, seeds: int, plan: SweepPlan, variants: int = 1, tune_grafts: bool = False
) -> str:
    """``2 optimizers × 5 lrs × 3 seeds = 30 sweep runs, ...``: what Start will train."""
    low, high = run_count(arms, seeds, plan, variants, tune_grafts=tune_grafts)
    s = "s" if seeds > 1 else ""
    more = (
        f", up to {high - low} more where a best lr sits at its grid's edge" if high > low else ""
    )
    total = f"{low}–{high}" if high > low else f"{low}"
    tuned = ", then each graft's lrs" if tune_grafts else ""
    return (
        f"{arms} optimizers × {plan.points} lrs × {seeds} seed{s} = "
        f"{arms * plan.points * seeds} sweep runs{more}, then {arms * (arms - 1) * variants} "
        f"grafts{' (whole and partial)' if variants > 1 else ''} × "
        f"{seeds} seed{s}{tuned}: {total} runs, {get_jobs().max_workers} at a time."
    )


def cell_notes(table: pd.DataFrame, runs: pd.DataFrame, matrix: pd.DataFrame) -> pd.DataFrame:
    """Text for each cell without a finished value: queued, running 40%, diverged, ..."""
    progress = runs.set_index("run_id")["progress"]
    notes = pd.DataFrame("", index=matrix.index, columns=matrix.columns)
    for (m, d), cell in table.groupby(["magnitude", "direction"]):
        if m not in notes.index or d not in notes.columns:
            continue
        statuses = set(cell["status"])
        if "running" in statuses:
            done = progress.reindex(cell["run_id"]).fillna(0).mean()
            notes.loc[m, d] = f"running {done:.0%}" if done > 0 else "queued"
        elif statuses - {"finished"}:
            notes.loc[m, d] = " / ".join(sorted(statuses - {"finished"}))
    return notes


def results(group: str, runs: pd.DataFrame) -> None:
    """The heatmap of the chosen final metric, its reading, the runs' table and curves."""
    task = forms.task_of(str(runs["config.dataset"].iloc[0]))
    metrics = ["val_loss"] + (["val_accuracy"] if task != "regression" else [])
    keep_valid("grid.metric", metrics, "val_loss")
    metric = st.columns(3)[0].selectbox(
        "Colour the cells by", metrics, key="grid.metric", format_func=METRICS.get
    )
    seeds = sorted(set(runs["config.seed"].astype(int)))
    st.caption(
        f"Grid `{group}`: {live.settings_text(runs.iloc[0])}, "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}."
    )
    table = grid_table(get_store(), group)
    finished = table[table["status"] == "finished"]
    order = list(dict.fromkeys(table["magnitude"]))
    matrix = (
        grid_matrix(finished, metric).reindex(index=order, columns=order)
        if not finished.empty
        else pd.DataFrame(index=order, columns=order, dtype=float)
    )
    if metric == "val_loss":
        z_title = live.loss_title(task, "final validation").replace(" (", "<br>(")
    else:
        z_title = "final validation<br>accuracy (fraction)"
    fig = experiment_figures.grid_heatmap(
        matrix,
        z_title=z_title,
        notes=cell_notes(table, runs, matrix),
        lower_is_better=metric == "val_loss",
        title=f"{METRICS[metric].capitalize()} of M#D "
        "(mean over seeds; diagonal = plain optimizer)",
    )
    charts.show(fig, key="grid.heatmap", live=True)
    what = "the final validation loss" if metric == "val_loss" else "the final accuracy"
    st.markdown(f"**Reading:** {grid_reading(table, metric, what=what)}")
    st.caption(
        "Spread = max − min of the finished cells, averaged over rows (or columns); "
        "rows are judged more alike when their spread is at most 2/3 of the columns'."
    )
    with st.expander("Every run of the grid"):
        columns = ["magnitude", "direction", "seed", "status", *metrics, "run_id"]
        st.dataframe(
            table[columns],
            hide_index=True,
            key="grid.table",
            column_config={m: st.column_config.NumberColumn(format="%.4f") for m in metrics},
        )
        st.slider(
            "Loss smoothing",
            0.0,
            0.99,
            key="grid.smoothing",
            help="exponential moving average of the training loss (0 = raw)",
        )
        live.loss_panel(runs, task, prefix="grid", smoothing=st.session_state["grid.smoothing"])


def live_section(group: str, active: bool) -> None:
    """Progress and results of ``group``; redraws while a run is live."""

    def draw(runs) -> None:
        live.overall_progress(runs)
        results(group, runs)

    live.redraw_while_live("grid", lambda: live.group_runs(group), active, draw)


SWEEP_ROLES = ("sweep_point", "tuned")


def phase_text(runs: pd.DataFrame, group: str) -> str:
    """Where a comparison stands: its sweeps' runs done, then its grafts', then the grafts
    at other lrs of M (``--tune-grafts``, or the form below), then any other runs added
    since (static ratios)."""
    done = runs["status"].isin(live.TERMINAL)
    sweeps, grafts = runs["role"].isin(SWEEP_ROLES), runs["role"].isin(GRAFT_ROLES)
    graft_lrs = runs["role"].eq(GRAFT_LR_ROLE)
    added = ~(sweeps | grafts | graft_lrs | runs["role"].eq("superseded"))

    def count(part: pd.Series) -> str:
        return f"{int((done & part).sum())} of {int(part.sum())}"

    text = f"Sweeps: {count(sweeps)} runs done"
    if not grafts.any():
        return text + (
            "; the grafts start when every sweep has settled"
            if orchestrating(group)
            else "; no grafts were started"
        )
    text += f"; grafts at M's tuned lr: {count(grafts)} done"
    if graft_lrs.any():
        text += f"; grafts at other lrs of M: {count(graft_lrs)} done"
    if added.any():
        text += f"; other runs added since: {count(added)} done"
    return text


def lr_notes(runs: pd.DataFrame, arm: str) -> dict[float, str]:
    """What became of each lr of ``arm``'s sweep that has an unfinished run: "training…"
    while one is queued or training, else its runs' ends ("stopped", "diverged" ...)."""
    sweep = runs[
        runs["magnitude_arm"].eq(arm)
        & runs["role"].isin(SWEEP_ROLES)
        & runs["status"].ne("finished")
    ]
    notes = {}
    for lr, cell in sweep.groupby(LR_COLUMN):
        ends = set(cell["status"])
        notes[float(lr)] = "training…" if ends - set(live.TERMINAL) else " / ".join(sorted(ends))
    return notes


def variant_name(layers: str) -> str:
    """A graft variant as the page names it: ``whole graft`` or ``[hidden only]``."""
    return f"[{layers} only]" if layers else "whole graft"


def verdict_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per graft (a pair, or a partial graft of it): the three arms' means and stds,
    the position, the verdict and why."""
    grafted = verdicts["grafted"] if "grafted" in verdicts else ["all"] * len(verdicts)
    return pd.DataFrame(
        {
            "pair": [
                experiment_figures.graft_name(m, d, g)
                for m, d, g in zip(verdicts["magnitude"], verdicts["direction"], grafted)
            ],
            "M#D mean": verdicts["graft_mean"],
            "M#D std": verdicts["graft_std"],
            "M mean": verdicts["magnitude_mean"],
            "M std": verdicts["magnitude_std"],
            "D mean": verdicts["direction_mean"],
            "D std": verdicts["direction_std"],
            "seeds": verdicts["graft_seeds"],
            "position": verdicts["position"],
            "verdict": [
                closer_to_words(v, m, d)
                for v, m, d in zip(
                    verdicts["verdict"], verdicts["magnitude"], verdicts["direction"]
                )
            ],
            "reason": verdicts["reason"],
        }
    )


def tuned_text(runs: pd.DataFrame, sweep: pd.DataFrame, running: bool) -> str:
    """``Tuned lrs: sgd 0.316 (best at the grid's edge ...), adam 0.00316.``: the lrs the
    comparison marked tuned (none while the sweeps train, nor when they were stopped)."""
    tuned = runs[runs["role"] == "tuned"].drop_duplicates("magnitude_arm")
    edge = sweep[sweep["best"] & sweep["at_edge"]]
    parts = [
        f"**{arm}** {lr:.3g}"
        + (
            " (best at the grid's edge: the true best may lie beyond it)"
            if arm in set(edge["arm"])
            else ""
        )
        for arm, lr in zip(tuned["magnitude_arm"], tuned[LR_COLUMN].astype(float))
    ]
    if parts:
        return "Tuned lrs: " + ", ".join(parts) + "."
    return (
        "No tuned lr yet: each is chosen when its sweep has settled."
        if running
        else "No tuned lr: the comparison ended before its sweeps did."
    )


def comparison_results(group: str, runs: pd.DataFrame) -> None:
    """The sweeps (one figure per optimizer), the tuned lrs and the verdicts with their
    spread, all read from the store (``read_comparison``)."""
    task = forms.task_of(str(runs["config.dataset"].iloc[0]))
    result = read_comparison(get_store(), group)
    seeds = sorted(set(runs["config.seed"].astype(int)))
    first = runs.iloc[0]
    st.caption(
        f"Comparison `{group}`: {live.settings_text(first)}, "
        f"{SCHEDULE_NAMES[first['config.schedule']]} schedule, seeds "
        f"{', '.join(map(str, seeds))}."
    )
    y_title = live.loss_title(task, "final validation").replace(" (", "<br>(")
    st.subheader("Learning-rate sweeps")
    arms = list(dict.fromkeys(runs.loc[runs["role"].isin(SWEEP_ROLES), "magnitude_arm"]))
    tuned = set(runs.loc[runs["role"] == "tuned", "magnitude_arm"])
    columns = st.columns(min(len(arms), 3) or 1)
    for i, arm in enumerate(arms):
        with columns[i % len(columns)]:
            fig = experiment_figures.lr_sweep(
                result.sweep[result.sweep["arm"] == arm],
                y_title=y_title,
                notes=lr_notes(runs, arm),
                settled=arm in tuned,
                title=f"{arm}'s sweep",
            )
            charts.show(fig, key=f"grid.tuned.sweep.{arm}", live=True)
    running = orchestrating(group)
    st.markdown(tuned_text(runs, result.sweep, running))
    st.caption(
        "Each M#D trains with **M's tuned lr**: M sets every layer's step size. "
        "**D's lr cancels** in ‖Δ_M‖/‖Δ_D‖ · Δ_D; D keeps its other tuned settings."
    )
    st.subheader("Verdicts: is M#D closer to M or to D?")
    if result.verdicts.empty:
        st.info(
            "The verdicts come when the grafts M#D have trained, after the sweeps."
            if running
            else "No verdicts: the comparison ended before its grafts trained."
        )
    else:
        fig = experiment_figures.verdict_points(
            result.verdicts,
            y_title=y_title,
            title="Tuned M, M#D and tuned D: mean over seeds, ± std",
        )
        charts.show(fig, key="grid.tuned.verdicts", live=True)
        numbers = ["M#D mean", "M#D std", "M mean", "M std", "D mean", "D std", "position"]
        st.table(
            verdict_table(result.verdicts).style.format("{:.4f}", subset=numbers).hide(axis="index")
        )  # a static table: the reasons wrap instead of clipping
        st.caption(
            "position = (M#D − M) / (D − M): 0 on M, 1 on D. A verdict needs M and D "
            "apart, and M#D off their midpoint, by more than twice the standard error "
            "of the seeds; otherwise it says *cannot tell*."
        )
    graft_lrs_results(group, runs, y_title)
    with st.expander("Every run of the comparison"):
        table = runs[["label", "role", LR_COLUMN, "config.seed", "status", "run_id"]]
        st.dataframe(
            table.rename(columns={LR_COLUMN: "lr (M's)", "config.seed": "seed"}),
            hide_index=True,
            key="grid.tuned.runs",
        )


def continue_form(group: str) -> None:
    """More seeds for the comparison ``group``, with the settings it was made with: its runs
    are kept and only the new ones train (``protocol.comparison_request``)."""
    request = comparison_request(get_store(), group)
    st.subheader("Continue with more seeds")
    if request is None:
        st.caption(
            f"`{group}` was made before the lab kept a comparison's settings: continue it "
            f"with `python -m grafting_core compare --group {group}` and the options it was "
            "made with."
        )
        return
    trained = list(request["seeds"])
    more = [*trained, max(trained) + 1, max(trained) + 2]
    text = st.text_input(
        "Seeds after continuing",
        value=", ".join(map(str, more)),
        key=f"grid.tuned.more_seeds.{group}.{'-'.join(map(str, trained))}",  # anew when run
        help="Every arm's seeds. The runs of the seeds already trained are kept; a verdict "
        "weighs the spread over all of them.",
    )
    problem = ""
    try:
        seeds = forms.parse_numbers(text, field="seeds", integer=True)
        new = [seed for seed in seeds if seed not in trained]

        def count(seeds: int) -> tuple[int, int]:
            arms, variants = len(request["optimizers"]), 1 + len(request["partial"])
            return run_count(
                arms, seeds, request["plan"], variants, tune_grafts=request["tune_grafts"]
            )

        # At most every run of the seeds but the sweeps of those trained, which are kept
        # (their grafts train again where a tuned lr moves)
        _, high = count(len(seeds))
        most_new = high - len(request["optimizers"]) * request["plan"].points * len(trained)
        if most_new > MAX_RUNS:
            problem = (
                f"With these seeds the comparison trains up to {most_new} new runs: more "
                f"than this page trains ({MAX_RUNS}); use "
                f"`python -m grafting_core compare --group {group} "
                f"--seeds {' '.join(map(str, seeds))}`."
            )
        elif not new:
            problem = f"Seeds {', '.join(map(str, trained))} are trained already: add a new one."
    except ValueError as error:
        problem = str(error)
    if problem:
        st.caption(problem)
    else:
        fewest, _ = count(len(new))
        st.caption(
            f"Seeds {', '.join(map(str, trained))} are trained. Adding "
            f"{', '.join(map(str, new))} trains at least {fewest} new runs, with the same "
            "settings; if the new seeds move a tuned lr, the grafts at the new lr train "
            "on every seed (those at the old one are kept, marked superseded)."
        )
    if st.button("Continue", key="grid.tuned.continue", disabled=bool(problem)):
        live.watch("grid.tuned", start_comparison(**{**request, "seeds": seeds}, group=group))
        st.rerun()


def graft_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The comparison's M#D pairs, as (M label, D label), in the order they were made."""
    grafts = runs[runs["role"].isin(GRAFT_ROLES)]
    return list(dict.fromkeys(zip(grafts["magnitude_arm"], grafts["direction_arm"])))


def graft_lrs_results(group: str, runs: pd.DataFrame, y_title: str) -> None:
    """Per pair trained at other lrs of M (``graft_lrs``): where each lr lands, as a figure
    and a table."""
    extra = runs[runs["role"] == GRAFT_LR_ROLE]
    for m, d in graft_pairs(runs):
        if not (extra["magnitude_arm"].eq(m) & extra["direction_arm"].eq(d)).any():
            continue
        st.subheader(f"{m}#{d} at other lrs of M")
        table = graft_lr_table(get_store(), group, magnitude=m, direction=d)
        fig = experiment_figures.graft_lr_figure(
            table, magnitude=m, direction=d, y_title=y_title, title=f"{m}#{d} at each lr of {m}"
        )
        charts.show(fig, key=f"grid.graft_lrs.{m}#{d}", live=True)
        shown = table.assign(
            variant=table["variant"].map(variant_name),
            verdict=[closer_to_words(v, m, d) for v in table["verdict"]],
        )
        columns = ["variant", "lr", "tuned_lr", "seeds", "failed", "mean", "std", "position"]
        st.dataframe(
            shown[[*columns, "verdict", "best", "at_edge"]],
            hide_index=True,
            key=f"grid.graft_lrs.table.{m}#{d}",
            column_config={
                c: st.column_config.NumberColumn(format="%.4g")
                for c in ("lr", "mean", "std", "position")
            },
        )


def graft_lrs_form(group: str, runs: pd.DataFrame) -> None:
    """Train a pair's grafts (its seeds, its settings) again at other lrs of M."""
    pairs = graft_pairs(runs)
    if not pairs:
        return
    st.subheader("Train the grafts at other lrs of M")
    st.caption(
        "M's tuned lr is M's best *alone*: with D's direction M#D may train best at "
        "another, and its verdict move with it. These runs join the comparison (same "
        "seeds and settings, only M's lr changed); the verdicts above stay those at M's "
        "tuned lr."
    )
    left, middle, right = st.columns([1, 1, 1])
    m, d = left.selectbox(
        "Graft", pairs, format_func=lambda pair: "#".join(pair), key="grid.graft_lrs.pair"
    )
    own = runs[runs["role"].isin(GRAFT_ROLES) & runs["magnitude_arm"].eq(m)]
    own = own[own["direction_arm"].eq(d)]
    tuned_lr = float(own[LR_COLUMN].iloc[0])
    text = middle.text_input(
        f"{m}'s lrs",
        value=", ".join(f"{tuned_lr * factor:.3g}" for factor in (math.sqrt(10), 10)),
        key=f"grid.graft_lrs.lrs.{group}.{m}#{d}",
        help=f"M's tuned lr, {tuned_lr:.3g}, is the comparison's own graft.",
    )
    variants = sorted(set(own["arm_variant"].fillna("")))
    chosen = right.multiselect(
        "Which grafts",
        variants,
        default=[""],
        format_func=variant_name,
        key=f"grid.graft_lrs.variants.{group}.{m}#{d}",
    )
    if st.button("Train at these lrs", key="grid.graft_lrs.start"):
        try:
            if not chosen:
                raise ValueError("choose at least one graft")
            lrs = forms.parse_numbers(text, field="lrs")
            planned = plan_graft_lrs(
                get_store(), group, magnitude=m, direction=d, lrs=lrs, variants=chosen
            )
        except ValueError as error:
            st.error(f"Not started: {error}")
            return
        if not planned:
            st.info(f"Nothing to train: {tuned_lr:.3g} is M's tuned lr, the comparison's own.")
            return
        if not queue_runs(planned, group=group, kind="compare", reuse=True):
            st.info("Nothing new to train: these grafts are trained at these lrs already.")
            return
        st.rerun()


def comparison_section(group: str, active: bool) -> None:
    """Progress and results of the comparison ``group``; redraws while it is live."""

    def draw(runs: pd.DataFrame) -> None:
        state = comparison_state(group)
        if state is not None and state.error:
            st.error(f"The comparison ended early: {state.error}")
        st.progress(float(runs["status"].isin(live.TERMINAL).mean()), text=phase_text(runs, group))
        live.progress_panel(runs[runs["status"].isin(["failed", "interrupted"])])
        comparison_results(group, runs)

    live.redraw_while_live(
        "grid.tuned",
        lambda: live.group_runs(group),
        active,
        draw,
        is_live=lambda runs: live.is_active(runs) or orchestrating(group),
    )


def grid_mode() -> None:
    """Every M#D pair at the lrs typed in."""
    configs, problem = form()
    group = live.watched_group("grid", "grid")
    runs = live.group_runs(group) if group else None
    active = runs is not None and live.is_active(runs)
    start, stop, _ = live.start_stop(
        "grid",
        disabled=live.busy("grid", active),
        active=active,
        why="Stop the grid in progress first",
    )
    if start:
        if configs is None:
            st.error(f"Not started: {problem}")
        else:
            group, _ = start_group(configs, kind="grid")
            live.watch("grid", group)
            st.rerun()
    if stop and runs is not None:
        live.stop_group(runs)
    if live.attach("grid", group, runs, started=start, what="grid"):
        live_section(group, active)
    elif not group:
        st.info(
            "No grid yet: choose the optimizers above and press **Start**. Every M#D "
            "pair trains in the background and its cell fills in when it finishes."
        )


def tuned_mode() -> None:
    """Each optimizer's lr swept, every M#D at M's tuned lr, a verdict per pair."""
    st.markdown(TUNED_INTRO)
    request, problem = tuned_form()
    group = live.watched_group("grid.tuned", "compare")
    runs = live.group_runs(group) if group else None
    active = bool(group) and (orchestrating(group) or live.is_active(runs))
    start, stop, rest = live.start_stop(
        "grid.tuned",
        disabled=live.busy("grid.tuned", active),
        active=active,
        why="Stop the comparison in progress first",
    )
    rest.caption(
        "A comparison in progress is run by this app's server: it ends if the server "
        "stops (runs already trained are kept)."
    )
    if start:
        if request is None:
            st.error(f"Not started: {problem}")
        else:
            live.watch("grid.tuned", start_comparison(**request))
            st.rerun()
    if stop and group:
        stop_comparison(group)
        st.toast(
            "Stopping: no further phase starts; queued runs never start, running ones "
            "end within 10 steps."
        )
    if live.attach(
        "grid.tuned", group, runs, started=start or orchestrating(group), what="comparison"
    ):
        comparison_section(group, active)
        if not active:
            continue_form(group)
            graft_lrs_form(group, live.group_runs(group))
    elif not group:
        st.info(
            "No comparison yet: choose the optimizers and the sweep above and press "
            "**Start**. The sweeps train first, then the grafts; the figures fill in as "
            "runs finish."
        )


page_setup({**DEFAULTS, "grid.mode": mode_of_url()})
st.title("Grid")
st.markdown(INTRO)
mode = st.radio(
    "What to train",
    list(MODES),
    format_func=MODES.get,
    key="grid.mode",
    horizontal=True,
    help="A grid trains every M#D at the lrs you type; a tuned "
    "comparison first tunes each optimizer's lr.",
)
if mode == "tuned":
    tuned_mode()
else:
    grid_mode()
