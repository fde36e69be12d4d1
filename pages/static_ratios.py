"""Static ratios: per-layer learning-rate multipliers from an M#D run, tested on plain SGD.

Widgets in, one engine call per action (``experiments.static_ratios``: the source run, the
multipliers, the comparison; ``experiments.ratio_study``: the study of a tuned comparison),
figures out. Runs go to the worker processes (``ui.resources.get_jobs``); fragments poll the
store. The URL keeps ``?source=``, ``?group=`` and ``?study=`` (``?study_m=``, ``?study_d=``).
"""

import pandas as pd
import streamlit as st

from grafting_core.lab.experiments.ratio_study import (
    SCOPES,
    WINDOWS,
    plan_study,
    start_study,
    study_groups,
    study_runs,
)
from grafting_core.lab.experiments.static_ratios import (
    group_source,
    plan_source_run,
    plan_static_ratios,
    read_ratios,
    read_static_ratio_group,
    start_source_run,
    start_static_ratios,
)
from ui import forms, live, resources
from ui import static_ratio_widgets as widgets
from ui.state import page_setup

NEW, SAVED = "Train a short M#D run now", "Use a saved M#D run"
DEFAULTS = {
    **forms.optimizer_defaults("ratios", {"magnitude": "adam", "direction": "sgd"}),
    **forms.data_model_defaults("ratios"),
    "ratios.source_mode": NEW,
    "ratios.saved_run": "",
    "ratios.source_steps": 200,  # the short grafted run the multipliers are measured on
    "ratios.batch_size": 64,
    "ratios.seed": 0,
    "ratios.source": "",  # the M#D run measured (also the URL's ?source=)
    "ratios.window": (0, 0),  # [start, stop) steps; (0, 0) = not chosen: a default is set
    "ratios.statistic": "median",
    "ratios.steps": 500,  # the comparison runs
    "ratios.lrs": "0.03, 0.1, 0.3",
    "ratios.smoothing": 0.6,
    "ratios.group": "",  # the comparison this session watches (also the URL's ?group=)
    "ratios.redraw_seconds": [],  # (CPU, wall) seconds of the last live redraws
    "ratios.source.redraw_seconds": [],  # the same for the source run's panel
    "ratios.metric_cache": {},  # run id -> (metrics read so far, run ended)
    "ratios.study.group": "",  # the tuned comparison studied (also the URL's ?study=)
    "ratios.study.magnitude": "",  # its M and D arms (?study_m=, ?study_d=)
    "ratios.study.direction": "",
    "ratios.study.windows": list(WINDOWS),
    "ratios.study.scopes": list(SCOPES),
    "ratios.study.redraw_seconds": [],
}
INTRO = r"""
Grafting M#D rescales D's step in every layer by the ratio ‖Δ_M‖/‖Δ_D‖, a per-layer
learning-rate correction that changes at every step. The revised paper found that much of it
can be **frozen**: run Adam#SGD briefly, take one number per layer (say the median ratio over a
window of steps), and train **plain SGD with a learning rate of lr × c for each layer**. SGD
with momentum keeps one extra copy of the weights, Adam two: if SGD with these multipliers
trains like Adam, a big run halves its optimizer state.

**1.** Train a short M#D run, or pick a saved one. **2.** Choose the window and statistic and
look at the multipliers (download them as JSON). **3.** Train SGD with them next to M alone
and plain SGD at a few learning rates. **4.** Separately, from a tuned comparison (Grid page):
which window and scope of the ratios closes the most of the gap between tuned D and tuned M,
each arm judged like a graft between the two (on the lab's character transformer the best
went halfway to Adam, none all the way: RESULTS.md §3.0).
"""


def source_section(store) -> str:
    """Step 1; returns the source run id ("" while there is none)."""
    st.header("1. A grafted run to measure")
    mode = st.radio(
        "Source",
        [NEW, SAVED],
        key="ratios.source_mode",
        horizontal=True,
        label_visibility="collapsed",
    )
    if mode == SAVED:
        return widgets.saved_source(store)
    magnitude, direction, data, (steps, batch, seed) = widgets.source_form()
    source = st.query_params.get("source") or st.session_state["ratios.source"]
    try:
        training = bool(source) and store.run(source)["status"] == "running"
    except KeyError:
        source, training = "", False  # deleted since
    why = "Wait for the run in progress" if training else "Trains the run the ratios come from."
    if st.button(
        "Train M#D", type="primary", key="ratios.start_source", disabled=training, help=why
    ):
        try:
            forms.check_sizes(data)
            planned = plan_source_run(
                data,
                magnitude=magnitude,
                direction=direction,
                steps=steps,
                batch_size=batch,
                seed=seed,
                device=st.session_state["shared.device"],
            )
            source = start_source_run(store, planned, resources.get_jobs())
        except (ValueError, TypeError) as error:
            st.error(f"Not started: {error}")
    return source


def measure_section(store, source: str, active: bool) -> None:
    """Step 2: the window and statistic, the ratio chart, the multipliers and their export;
    redrawn while the source run trains."""

    def draw(runs: pd.DataFrame) -> None:
        if active:
            live.progress_panel(runs)
        chosen = tuple(st.session_state["ratios.window"])
        reading = read_ratios(
            store,
            source,
            window=None if chosen == (0, 0) else chosen,
            statistic=st.session_state["ratios.statistic"],
        )
        if not reading.steps:
            st.info("The ratios appear after the first few steps of the run.")
            return
        st.session_state["ratios.window"] = reading.window  # the default, or kept as chosen
        widgets.window_controls(reading.steps)
        widgets.multipliers_panel(store, source, reading)

    live.redraw_while_live("ratios.source", lambda: live.runs_by_id([source]), active, draw)


def comparison_sections(store, source: str, group: str, runs: pd.DataFrame) -> None:
    """Steps 2 and 3 for ``source``: its multipliers, and the comparison ``group``."""
    record = store.run(source)
    source_active = record["status"] == "running"
    st.header("2. One multiplier per layer")
    st.caption(
        f"From **{live.literal(record['name'])}** (`{source}`, {record['status']}). Lines: "
        "‖Δ_M‖/‖Δ_D‖ at every step; shaded: the window; dashed: the layer's multiplier."
    )
    measure_section(store, source, source_active)
    st.header("3. Train SGD with the multipliers")
    left, right = st.columns(2)
    steps = left.number_input("Steps of each run", step=100, key="ratios.steps")
    lrs = right.text_input(
        "Plain SGD learning rates to compare",
        key="ratios.lrs",
        help="numbers > 0 separated by commas",
    )
    try:
        plan = plan_static_ratios(
            store,
            source,
            window=tuple(st.session_state["ratios.window"]),
            statistic=st.session_state["ratios.statistic"],
            sgd_lrs=forms.parse_numbers(lrs, field="learning rates"),
            steps=int(steps),
            device=st.session_state["shared.device"],
        )
        st.caption(
            f"Start trains {live.literal(plan.describe())}, on the source run's data, model "
            "and seed."
        )
    except (ValueError, TypeError, KeyError) as error:
        plan, problem = None, str(error).strip("'\"")
    active = not runs.empty and live.is_active(runs)
    start, stop, _ = live.start_stop(
        "ratios",
        disabled=live.busy("ratios", active) or source_active,
        active=active,
        why="Wait for the grafted run to finish" if source_active else None,
    )
    if start and plan is None:
        st.error(f"Not started: {problem}")
    elif start:
        group, _ = start_static_ratios(store, plan, resources.get_jobs())
        live.watch("ratios", group)
        st.rerun()
    if stop:
        live.stop_group(runs)
    if live.attach("ratios", group, runs, started=start, what="comparison"):
        live.redraw_while_live(
            "ratios",
            lambda: live.group_runs(group),
            active,
            lambda drawn: widgets.comparison_results(store, drawn),
        )


def study_section(store) -> None:
    """Step 4: the static-ratio study of a tuned comparison, planned, started and watched."""
    st.header("4. From a tuned comparison: which window and scope")
    st.caption(
        "Needs a tuned comparison (Grid page, mode *tuned*) with a finished M#D graft; steps 1 "
        "to 3 are not needed. Measures the graft's ratios over several windows, per layer or as "
        "one number, and trains D with them in the comparison's group, next to tuned M and D."
    )
    groups = study_groups(store)
    if groups.empty:
        st.info(
            "No tuned comparison with a finished graft yet: run one on the **Grid** page "
            "(mode *tuned*) first, then choose it here and press **Start**."
        )
        return
    group, magnitude, direction = widgets.study_choices(store, groups)
    try:
        plan = plan_study(
            store,
            group,
            magnitude=magnitude,
            direction=direction,
            windows=st.session_state["ratios.study.windows"],
            scopes=st.session_state["ratios.study.scopes"],
        )
        st.caption(f"**Start the study** trains {live.literal(plan.describe())}.")
    except (ValueError, KeyError) as error:
        plan, problem = None, str(error).strip("'\"")
        st.caption(f"Not ready to start: {live.literal(problem)}")
    runs = study_runs(live.group_runs(group), direction)
    active = not runs.empty and live.is_active(runs)
    col_start, col_stop, _ = st.columns([3, 1, 8], vertical_alignment="center")
    label = f"Start the study ({plan.count} runs)" if plan and plan.count else "Start the study"
    start = col_start.button(
        label,
        type="primary",
        key="ratios.study.start",
        disabled=active,
        help="Wait for the study's runs" if active else None,
    )
    if col_stop.button("Stop", key="ratios.study.stop", disabled=not active):
        live.stop_group(runs)
    if start and plan is None:
        st.error(f"Not started: {problem}")
    elif start and not plan.count:
        st.info(
            "Nothing new to train: every chosen window and scope is already trained (or "
            "training) in this comparison."
        )
    elif start:
        with st.spinner("Measuring the ratios…"):
            start_study(store, plan, resources.get_jobs())  # a stopped run resumes
        st.query_params.update(study=group, study_m=magnitude, study_d=direction)
        st.rerun()
    if runs.empty:
        st.info(f"No static-ratio run of {live.literal(direction)} in this comparison yet.")
        return
    live.redraw_while_live(
        "ratios.study",
        lambda: study_runs(live.group_runs(group), direction),
        active,
        lambda drawn: widgets.study_results(store, group, magnitude, direction, drawn),
    )


page_setup(DEFAULTS)
st.title("Static ratios")
st.markdown(INTRO)
store = resources.get_store()
group = live.watched_group("ratios", "ratios")
runs = live.group_runs(group) if group else pd.DataFrame()
group_source = group_source(runs)
if not group_source:
    group, runs = "", pd.DataFrame()  # none, or a source run's own group: not a comparison
else:
    if not st.query_params.get("source"):
        st.session_state["ratios.source"] = group_source  # re-attached by ?group= alone
    if tuple(st.session_state["ratios.window"]) == (0, 0):  # show what the comparison used
        used = read_static_ratio_group(store, group).ratios
        if used:
            st.session_state["ratios.window"] = tuple(used["info"]["window"])
            st.session_state["ratios.statistic"] = used["info"]["statistic"]
source = source_section(store)
if source:
    st.session_state["ratios.source"] = source
    st.query_params["source"] = source
elif "source" in st.query_params:
    del st.query_params["source"]
if group_source != source:
    group, runs = "", pd.DataFrame()  # the comparison of another source
if source:
    comparison_sections(store, source, group, runs)
else:
    st.info(
        "Train a short M#D run above (**Train M#D**) or pick a saved one: its per-layer "
        "ratios appear here, then **Start** trains SGD with them."
    )
study_section(store)
