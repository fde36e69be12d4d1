"""The Grid page's tuned comparison: the sweep's inputs, Start/Stop, the sweeps, verdicts and
grafts at other lrs as they come in, and Continue; every count, plan and reading is the
engine's (``experiments.comparison_plan``, ``comparison_reading``, ``compare``)."""

import math

import pandas as pd
import streamlit as st

from grafting_core import LAYER_KINDS
from grafting_core.lab.experiments.common import LAB_OPTIMIZERS, LR_COLUMN
from grafting_core.lab.experiments.compare import read_comparison
from grafting_core.lab.experiments.comparison_plan import (
    PROTOCOL,
    SweepPlan,
    comparison_request,
    plan_comparison,
    plan_continuation,
)
from grafting_core.lab.experiments.comparison_reading import (
    SWEEP_ROLES,
    control_text,
    cut_short,
    graft_pairs,
    lr_notes,
    phase_text,
    tuned_text,
    variant_name,
    verdict_table,
)
from grafting_core.lab.experiments.graft_lrs import GRAFT_ROLES, graft_lr_table, queue_graft_lrs
from grafting_core.lab.experiments.graft_lrs import ROLE as GRAFT_LR_ROLE
from grafting_core.lab.experiments.pace import comparison_pace
from grafting_core.lab.experiments.verdict import closer_to_words
from grafting_core.lab.figures import experiments as experiment_figures
from grafting_core.lab.figures import search as search_figures
from grafting_core.lab.runs.config import SCHEDULES, RunConfig
from grafting_core.lab.tasks.models import default_model
from ui import charts, forms, live, recent
from ui.grid_forms import MAX_RUNS, SCHEDULE_NAMES, common_form
from ui.resources import (
    comparison_state,
    get_jobs,
    get_store,
    orchestrating,
    start_comparison,
    stop_comparison,
)

FACTORS = {math.sqrt(10): "half a decade (× 3.16)", 10.0: "a decade (× 10)", 2.0: "× 2"}
PARTIAL_KEYS = ("grid.partial", "grid.partial.2", "grid.partial.3")  # partial grafts per pair
TUNED_INTRO = r"""
A fair comparison tunes each optimizer first. Its learning rate and warm-up are
**searched** on a log grid centred on its lr below, on tuning seeds of their own (every
setting to half the steps, each warm-up's best on to the end on two seeds; the grid grows
while the best sits at its edge); the best is its **tuned** setting, trained again on the
reporting seeds (an lr whose next lr up diverged is passed over: it sits at the edge of
stability). Then every M#D trains at **M's tuned lr**, and each pair gets a verdict
from where M#D lands between M (0) and D (1), with its CI over the seeds: *like M*,
*like D*, *closer to M or D*, *between*, *worse or better than both*, or *cannot tell*.
Two controls check that these seeds can show magnitude, and direction, deciding.
"""


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
        "Controls",
        key="grid.control",
        help="On the first 3 seeds. Positive: the first optimizer X at a tenth of its tuned "
        "lr as M, tuned X as D: they differ only in step size, so M#D is M step for step and "
        "must come out 'like M'. Negative: the graft X#Y of the two tuned optimizers farthest "
        "apart (X the worse) as M, tuned X as D: they share X's "
        "step sizes and differ only in direction, so M#D is D step for step and must come "
        "out 'like D'. If one does not, the seeds cannot show what it controls, and the "
        "verdicts say little.",
    )
    left.checkbox(
        "Tune each graft's lr too",
        key="grid.tune_grafts",
        help="M's tuned lr is M's best alone: with D's direction a graft may train best at "
        "another. Then each graft's M lr is swept like the optimizers' (same grid around "
        "M's tuned lr, same extensions); the verdicts stay those at M's tuned lr, and each "
        "graft gets a figure of its lrs.",
    )
    search = st.columns(3)
    warmups = search[0].text_input(
        "Warm-ups searched (% of steps)",
        key="grid.warmups",
        disabled=schedule != "warmup_cosine",
        help="each lr is tried with each of these warm-up lengths (the warm-up above is then "
        "only the default's); empty: the warm-up above alone",
    )
    tune_seeds = search[1].text_input(
        "Tuning seeds",
        key="grid.tune_seeds",
        help="the search trains on these seeds, and each optimizer's best again on the seeds "
        "above, which report it (a setting chosen on the seeds that report it looks better "
        "than it is); empty: search on the reporting seeds",
    )
    rung = search[2].number_input(
        "Halve at (% of steps)",
        min_value=0,
        max_value=90,
        step=5,
        key="grid.rung_percent",
        help="successive halving: every searched setting trains to here, and only each "
        "warm-up's best lr goes on to the end (a run paused here and resumed is the same run); "
        "0: every setting to the end",
    )
    try:
        plan = SweepPlan(
            points=int(points),
            factor=float(factor),
            extensions=int(extensions),
            warmups=tuple(
                w / 100
                for w in forms.parse_numbers(warmups, field="warm-ups")
                if schedule == "warmup_cosine"
            )
            if warmups.strip()
            else (),
            tune_seeds=tuple(forms.parse_numbers(tune_seeds, field="tuning seeds", integer=True))
            if tune_seeds.strip()
            else (),
            rung=int(rung) / 100,
            control=bool(st.session_state["grid.control"]),
            back_off=PROTOCOL.back_off,
        )
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
        forms.check_sizes(data)
        base = RunConfig(
            **data,
            steps=steps,
            batch_size=batch,
            schedule=schedule,
            warmup_steps=steps * warmup // 100 if schedule == "warmup_cosine" else 0,
            device=st.session_state["shared.device"],
        )
        planned = plan_comparison(
            base,
            optimizers,
            seeds=forms.parse_numbers(seeds_text, field="seeds", integer=True),
            plan=plan,
            partial=chosen_partials(),
            tune_grafts=bool(st.session_state["grid.tune_grafts"]),
        )
    except (ValueError, TypeError) as error:
        return None, str(error)
    if planned.most > MAX_RUNS:
        problem = (
            f"Up to {planned.most} runs is more than this page trains ({MAX_RUNS}); choose "
            "fewer, or use `python -m grafting_core compare`."
        )
        col_run.caption(problem)  # said before Start is pressed
        return None, problem
    col_run.caption(planned.text(get_jobs().max_workers))
    return planned.request, ""


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
    arms = list(dict.fromkeys(runs.loc[runs["role"].isin(SWEEP_ROLES), "magnitude_arm"]))
    tuned = set(runs.loc[runs["role"] == "tuned", "magnitude_arm"])
    # A search of lr × warm-up reads best as a heatmap: every setting's value or fate (pruned
    # at the rung, diverged, training) in its cell; the curves stay below for the spread.
    # An lr alone reads best as curves with their spread: no heatmap.
    searched = result.sweep.groupby("arm")["warmup"].nunique().gt(1).any()
    if searched:
        st.subheader("The search: learning rate × warm-up")
        request = comparison_request(get_store(), group)
        steps = request["base"].steps if request else int(first["config.steps"])
        tuning = bool(request and request["plan"].tune_seeds)
        on = (request["plan"].tune_seeds or request["seeds"]) if request else seeds
        fig = search_figures.search_heatmap(
            result.sweep,
            steps=steps,
            z_title=y_title,
            settled=tuned,
            arms=arms,
            title=f"Mean final validation loss on {'tuning ' if tuning else ''}seed"
            f"{'s' if len(on) > 1 else ''} {', '.join(map(str, on))}, per lr × warm-up "
            "(lower is better)",
        )
        charts.show(fig, key="grid.tuned.search", live=True)
        rung = request["plan"].rung if request else 0
        st.caption(
            "Each cell: one setting's mean final validation loss over the search's seeds. "
            + (
                f"*pruned*: stopped at {rung:.0%} of the steps, behind its warm-up's best lrs "
                "there. "
                if rung
                else ""
            )
            + "*diverged / failed*: a seed did not finish. Framed: the best setting, the "
            "optimizer's tuned lr and warm-up."
        )
    else:
        st.subheader("Learning-rate sweeps")
    with (
        st.expander("Each optimizer's search as curves (mean ± std)")
        if searched
        else st.container()
    ):
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
    if not result.controls.empty:  # said first: what the verdicts below can show
        shown = st.success if result.controls["passed"].all() else st.warning
        shown(control_text(result.controls))
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
        charts.show(
            experiment_figures.position_intervals(result.verdicts),
            key="grid.tuned.positions",
            live=True,
        )
        numbers = ["M#D mean", "M#D median", "M#D std", "M mean", "M std", "D mean", "D std"]
        st.table(
            verdict_table(result.verdicts)
            .style.format("{:.4f}", subset=numbers)
            .format("{:.2f}", subset=["position"], na_rep="—")
            .hide(axis="index")
        )  # a static table: the reasons wrap instead of clipping
        st.caption(
            "position = (M#D − M) / (D − M): 0 on M, 1 on D, with its confidence interval "
            "from the seeds, paired (every arm of a seed shares its init and batches), at the "
            "level its verdict is judged at: 95%, or stricter where Holm's correction over the "
            "table's verdicts asks for it (97.5%, 98.3%, …). No position where the interval is "
            "unbounded: M and D cannot be told apart there. "
            "*like M* / *like D*: the interval lies within ±0.25 of 0 / 1; *closer to M / D*: "
            "on one side of 0.5; *between*: inside (0.25, 0.75); *worse / better than both*: "
            "beyond both arms; else *cannot tell*."
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
    stopped = cut_short(live.group_runs(group), request["plan"].rung_step(request["base"]))
    if stopped.any():  # a server killed mid-comparison, or a Stop: resume it exactly
        st.warning(
            f"{int(stopped.sum())} runs of this comparison were stopped or interrupted before "
            "their end. **Resume** trains them on from their last checkpoint, then the phases "
            "that had not begun, with the settings and seeds it was made with."
        )
        if st.button("Resume", key="grid.tuned.resume"):
            live.watch("grid.tuned", start_comparison(**request, group=group))
            st.rerun()
    more = [*trained, max(trained) + 1, max(trained) + 2]
    text = st.text_input(
        "Seeds after continuing",
        value=", ".join(map(str, more)),
        key=f"grid.tuned.more_seeds.{group}.{'-'.join(map(str, trained))}",  # anew when run
        help="Every arm's seeds. The runs of the seeds already trained are kept; a verdict "
        "weighs the spread over all of them.",
    )
    problem, seeds = "", trained
    try:
        seeds = forms.parse_numbers(text, field="seeds", integer=True)
        planned = plan_continuation(get_store(), group, seeds)
        if planned.most > MAX_RUNS:
            problem = (
                f"With these seeds the comparison trains up to {planned.most} new runs: more "
                f"than this page trains ({MAX_RUNS}); use "
                f"`python -m grafting_core compare --group {group} "
                f"--seeds {' '.join(map(str, seeds))}`."
            )
        elif not planned.new_seeds:
            problem = f"Seeds {', '.join(map(str, trained))} are trained already: add a new one."
    except ValueError as error:
        problem = str(error)
    st.caption(problem or planned.text())
    if st.button("Continue", key="grid.tuned.continue", disabled=bool(problem)):
        live.watch("grid.tuned", start_comparison(**{**request, "seeds": seeds}, group=group))
        st.rerun()


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


def graft_lrs_form(group: str, runs: pd.DataFrame, *, busy: bool = False) -> None:
    """Train a pair's grafts (its seeds, its settings) again at other lrs of M. ``busy``: the
    comparison is training; the form stays, with its button off, so that what was typed
    survives (a widget not drawn in a run loses its value)."""
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
    if st.button(
        "Train at these lrs",
        key="grid.graft_lrs.start",
        disabled=busy,
        help="Once the comparison's runs have ended" if busy else None,
    ):
        try:
            if not chosen:
                raise ValueError("choose at least one graft")
            lrs = forms.parse_numbers(text, field="lrs")
            if all(lr == tuned_lr for lr in lrs):
                raise ValueError(f"{tuned_lr:.3g} is M's tuned lr, the comparison's own graft")
            queued = queue_graft_lrs(
                get_store(), get_jobs(), group, magnitude=m, direction=d, lrs=lrs, variants=chosen
            )
        except ValueError as error:
            st.error(f"Not started: {error}")
            return
        if not queued:
            st.info("Nothing new to train: these grafts are trained at these lrs already.")
            return
        st.rerun()


def comparison_section(group: str, active: bool) -> None:
    """Progress and results of the comparison ``group``; redraws while it is live."""

    def draw(runs: pd.DataFrame) -> None:
        state = comparison_state(group)
        if state is not None and state.error:
            st.error(f"The comparison ended early: {state.error}")
        request = comparison_request(get_store(), group)
        rung = request["plan"].rung_step(request["base"]) if request else 0
        still = orchestrating(group)
        st.progress(
            float(runs["status"].isin(live.TERMINAL).mean()),
            text=phase_text(runs, orchestrating=still, rung_step=rung),
        )
        st.caption(comparison_pace(get_store(), group, active=still, runs=runs).text)
        live.progress_panel(runs[runs["status"].isin(["failed", "interrupted"])])
        comparison_results(group, runs)

    live.redraw_while_live(
        "grid.tuned",
        lambda: live.group_runs(group),
        active,
        draw,
        is_live=lambda runs: live.is_active(runs) or orchestrating(group),
    )


def settings_of(request: dict) -> dict:
    """The form's widget values that remake ``request`` (a stored comparison's settings), so a
    reopened comparison shows what it was made with, not the form's defaults."""
    base, plan = request["base"], request["plan"]
    values = {
        "grid.optimizers": [label for label in request["optimizers"] if label in LAB_OPTIMIZERS],
        **{f"grid.lr.{label}": float(hp["lr"]) for label, (_, hp) in request["optimizers"].items()},
        "grid.dataset": base.dataset,
        f"grid.model.{base.dataset}": base.model or default_model(base.dataset),
        "grid.steps": base.steps,
        "grid.batch_size": base.batch_size,
        "grid.tuned_seeds": ", ".join(map(str, request["seeds"])),
        "grid.points": plan.points,
        "grid.extensions": plan.extensions,
        "grid.schedule": base.schedule,
        "grid.warmup_percent": round(100 * base.warmup_steps / base.steps),
        "grid.warmups": ", ".join(f"{w * 100:g}" for w in plan.warmups),
        "grid.tune_seeds": ", ".join(map(str, plan.tune_seeds)),
        "grid.rung_percent": round(plan.rung * 100),
        "grid.control": plan.control,
        "grid.tune_grafts": request["tune_grafts"],
        **{key: [] for key in PARTIAL_KEYS},
        **dict(zip(PARTIAL_KEYS, map(list, request["partial"]))),
    }
    model = values[f"grid.model.{base.dataset}"]
    if base.width:
        values[f"grid.width.{model}"] = base.width
    if base.depth:
        values[f"grid.depth.{model}"] = base.depth
    if plan.factor in FACTORS:
        values["grid.factor"] = plan.factor
    return values


def show_settings_of(group: str) -> None:
    """Once per opened comparison: put its stored settings into the form."""
    if not group or st.session_state.get("grid.tuned.shown") == group:
        return
    st.session_state["grid.tuned.shown"] = group
    request = comparison_request(get_store(), group)
    if request is not None:
        st.session_state.update(settings_of(request))


def tuned_mode() -> None:
    """Each optimizer's lr swept, every M#D at M's tuned lr, a verdict per pair."""
    st.markdown(TUNED_INTRO)
    show_settings_of(st.query_params.get("group", "") or st.session_state["grid.tuned.group"])
    request, problem = tuned_form()

    def start() -> str:
        if request is None:
            raise ValueError(problem)
        return start_comparison(**request)

    def stop(group: str, _) -> None:
        stop_comparison(group)
        st.toast(
            "Stopping: no further phase starts; queued runs never start, running ones "
            "end within 10 steps."
        )

    def draw(group: str, active: bool) -> None:
        comparison_section(group, active)
        if not active:
            continue_form(group)
        graft_lrs_form(group, live.group_runs(group), busy=active)

    def empty() -> None:
        st.info(
            "No comparison yet: choose the optimizers and the sweep above and press "
            "**Start**. The sweeps train first, then the grafts; the figures fill in as "
            "runs finish."
        )
        recent.offer("grid.tuned", ("compare",), "comparison")

    rest = live.page_skeleton(
        "grid.tuned",
        "compare",
        start=start,
        draw=draw,
        empty=empty,
        what="comparison",
        why="Stop the comparison in progress first",
        still_coming=orchestrating,
        stop=stop,
    )
    rest.caption(
        "A comparison in progress is run by this app's server: it ends if the server "
        "stops (runs already trained are kept)."
    )
