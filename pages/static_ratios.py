"""Static ratios: per-layer learning-rate multipliers from an M#D run, tested on plain SGD.

Four steps, each non-blocking: (1) train a short M#D run (or pick a saved one), (2) reduce
its ratios ‖Δ_M‖/‖Δ_D‖ over a window to one multiplier per layer (download as JSON),
(3) train SGD with them next to M alone and plain SGD at a few learning rates, with each
one's optimizer memory, (4) the static-ratio study of a tuned comparison
(``ratio_study``): D with the ratios of each window and scope, in the comparison's group,
next to tuned M and tuned D. Runs go to the worker processes (ui.resources); fragments poll
the store. The URL keeps ``?source=<run>``, ``?group=<comparison>`` and ``?study=<tuned
comparison>`` (with ``?study_m=``, ``?study_d=``) for re-attaching.
"""

import json

import pandas as pd
import streamlit as st

from grafting_core import STATISTICS, StaticRatios
from grafting_core.lab.experiments.analysis import static_ratios_from_run
from grafting_core.lab.experiments.common import final_metrics
from grafting_core.lab.experiments.ratio_study import (
    SCOPES,
    STUDY_KIND,
    WINDOWS,
    best_static_arm,
    plan_static_ratio_study,
    static_ratio_table,
)
from grafting_core.lab.experiments.static_ratios import static_ratio_configs_from
from grafting_core.lab.figures import experiments as experiment_figures
from grafting_core.lab.figures import runs as run_figures
from grafting_core.lab.runs.arms import Arm, PlannedRun
from grafting_core.lab.runs.capacity import check_fits
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store.norms import ratio_trajectories
from grafting_core.registry import OptimizerSpec
from ui import charts, forms, live
from ui.resources import get_store, queue_runs, start_group
from ui.state import keep_valid, page_setup

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
#: The study table's columns shown (``static_ratio_table``'s, less role and variant).
STUDY_COLUMNS = [
    "arm",
    "window",
    "scope",
    "mean",
    "std",
    "seeds",
    "failed",
    "state_bytes",
    "gap_closed",
]
INTRO = r"""
Grafting M#D rescales D's step in every layer by the ratio ‖Δ_M‖/‖Δ_D‖: a per-layer
learning-rate correction that changes at every step. The revised paper found that much of
it can be **frozen**: run Adam#SGD for a short while, take one number per layer (say the
median ratio over a window of steps), and train **plain SGD with a learning rate of
lr × c for each layer**, c being that layer's number. SGD with momentum keeps one extra
copy of the weights (its momentum), Adam two (first and second moments): if SGD with these
static multipliers trains like Adam, a big run halves its optimizer state.

**1.** Train a short M#D run, or pick a saved one. **2.** Choose the window and statistic
and look at the multipliers (download them as JSON). **3.** Train SGD with them next to
M alone and plain SGD at a few learning rates, and compare loss and memory. **4.** From
a tuned comparison (Grid page), find which window and scope of the ratios closes the most
of the gap between tuned D and tuned M.
"""
SNIPPET = """import torch
from grafting_core import StaticRatios

# lr of each parameter = base_lr × its multiplier (base_lr = {base_lr:g}, D's lr in the
# run); param_groups(..., lr=...) rescales them all, and LR schedulers work on top.
optimizer = torch.optim.SGD(
    StaticRatios.load("ratios.json").param_groups(model.named_parameters()),
    momentum={momentum:g})
"""


# ----------------------------------------------------------------------- 1. the source run
def graftable(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished (or stopped) grafted runs whose ratios can be measured."""
    if runs.empty:
        return runs
    ok = (
        runs["status"].isin(["finished", "stopped"])
        & runs["config.direction"].ne("")
        & runs["config.replay"].eq("")
        & runs["config.static_ratios"].eq("")
    )
    return runs[ok]


def new_source_form() -> tuple[PlannedRun | None, str]:
    """M, D, data and a short loop for the run to measure; (config, "") or (None, why)."""
    col_m, col_d, col_run = st.columns(3, gap="large")
    with col_m:
        m_name, m_hp = forms.optimizer_picker("ratios", "magnitude")
    with col_d:
        d_name, d_hp = forms.optimizer_picker("ratios", "direction")
    with col_run:
        st.markdown("**Data, model and training loop**")
        data = forms.data_model_picker("ratios")
        left, right = st.columns(2)
        steps = left.number_input(
            "Steps",
            step=100,
            key="ratios.source_steps",
            help="a short run is enough: the multipliers come from an early window",
        )
        batch = right.number_input("Batch size", step=16, key="ratios.batch_size")
        seed = left.number_input(
            "Seed", step=1, key="ratios.seed", help="model initialisation and batch order"
        )
    try:
        if not d_name:
            raise ValueError("a direction optimizer D is needed")
        forms.check_sizes(data)
        config = RunConfig(
            **data,
            steps=int(steps),
            batch_size=int(batch),
            seed=int(seed),
            magnitude=m_name,
            magnitude_hparams=m_hp,
            direction=d_name,
            direction_hparams=d_hp,
            name=f"{m_name}#{d_name}",
            device=st.session_state["shared.device"],
        )
        check_fits(config)
        return PlannedRun(config, Arm("graft", m_name, d_name)), ""
    except (ValueError, TypeError) as error:
        return None, str(error)


def source_section() -> str:
    """Step 1; returns the source run id ("" while there is none)."""
    st.header("1. A grafted run to measure")
    mode = st.radio(
        "Source",
        [NEW, SAVED],
        key="ratios.source_mode",
        horizontal=True,
        label_visibility="collapsed",
    )
    store = get_store()
    if mode == SAVED:
        runs = graftable(store.runs())
        if runs.empty:
            st.info(
                "No finished M#D run is saved yet: train one here (*Train a short M#D run "
                "now*) or on the **Graft lab** page."
            )
            return ""
        labels = {
            r["run_id"]: f"{r['name']} · {r['config.dataset']} · {r['config.steps']} "
            f"steps · {r['run_id']}"
            for _, r in runs.iterrows()
        }
        keep_valid("ratios.saved_run", list(labels), next(iter(labels)))
        return st.selectbox(
            "Saved M#D run", list(labels), key="ratios.saved_run", format_func=labels.get
        )
    config, problem = new_source_form()
    source = st.query_params.get("source") or st.session_state["ratios.source"]
    try:
        training = bool(source) and store.run(source)["status"] == "running"
    except KeyError:
        source, training = "", False  # deleted since
    if st.button(
        "Train M#D",
        type="primary",
        key="ratios.start_source",
        disabled=training,
        help="Wait for the run in progress"
        if training
        else "Trains the grafted run the multipliers are measured on.",
    ):
        if config is None:
            st.error(f"Not started: {problem}")
        else:
            _, (source,) = start_group([config], kind="ratios")
    return source


# --------------------------------------------------------------- 2. window and statistic
def default_window(steps: int) -> tuple[int, int]:
    """An early window, 10% to 50% of the recorded steps (the paper measures early)."""
    start = steps // 10
    return start, max(start + 1, steps // 2)


def layer_values(ratios: StaticRatios, layout: dict) -> dict[str, float]:
    """Each layer's multiplier (every parameter of a layer carries the layer's)."""
    names = layout["layer_names"]
    return {
        names[i]: ratios.ratios[p] for p, i in zip(layout["param_names"], layout["param_layer"])
    }


def estimate(source: str) -> StaticRatios | None:
    """The window and statistic widgets, the ratio chart and the multipliers; None if
    invalid."""
    store = get_store()
    trajectories = ratio_trajectories(store, source)
    if trajectories.empty:
        st.info("The ratios appear after the first few steps of the run.")
        return None
    steps = int(trajectories["step"].max()) + 1
    start, stop = st.session_state["ratios.window"]
    if (start, stop) == (0, 0) or not 0 <= start <= stop <= steps:  # unset, or another run's
        st.session_state["ratios.window"] = default_window(steps)
    left, right = st.columns([3, 1])
    window = left.slider(
        "Window (steps): the multipliers summarise these steps",
        0,
        steps,
        key="ratios.window",
        help="[start, stop): early steps are noisy, late ones may no longer "
        "represent training from scratch",
    )
    statistic = right.selectbox(
        "Statistic",
        STATISTICS,
        key="ratios.statistic",
        help="median and trimmed mean (10% cut at each end) ignore "
        "the occasional spike; mean does not",
    )
    try:
        ratios = static_ratios_from_run(store, source, window=tuple(window), statistic=statistic)
    except (ValueError, KeyError) as error:
        charts.show(
            experiment_figures.ratio_lines(trajectories, window=tuple(window)),
            key="ratios.ratio_chart",
            live=True,
        )
        st.error(f"No multipliers for this window: {error}")
        return None
    layout = store.get_artifact(source, "layers")
    values = layer_values(ratios, layout)
    title = f"‖Δ_M‖/‖Δ_D‖ per layer in {store.run(source)['name']}"
    fig = experiment_figures.ratio_lines(
        trajectories, window=tuple(window), values=values, title=title
    )
    charts.show(fig, key="ratios.ratio_chart", live=True)
    table = pd.DataFrame({"layer": list(values), "multiplier c": list(values.values())})
    table["D's lr for the layer (base lr × c)"] = table["multiplier c"] * ratios.base_lr
    st.dataframe(
        table,
        hide_index=True,
        key="ratios.table",
        column_config={c: st.column_config.NumberColumn(format="%.4g") for c in table.columns[1:]},
    )
    return ratios


def export(ratios: StaticRatios, source: str) -> None:
    """Download button and the code that uses the file in a training script."""
    config = get_store().run(source)["config"]
    d_hp = OptimizerSpec(config["direction"], config["direction_hparams"]).resolved
    col_button, col_code = st.columns([1, 3])
    col_button.download_button(
        "Download multipliers (JSON)",
        json.dumps(ratios.to_dict(), indent=2),
        file_name="ratios.json",
        mime="application/json",
        key="ratios.download",
        on_click="ignore",
        icon=":material/download:",
    )
    col_button.caption(f"{len(ratios.ratios)} parameters, keyed by name, with their shapes.")
    with col_code:
        st.code(
            SNIPPET.format(momentum=d_hp.get("momentum", 0.9), base_lr=ratios.base_lr),
            language="python",
        )
        if config["direction"] != "sgd":
            st.caption(
                f"D was {config['direction']}: use its torch class with the same param_groups."
            )


# ------------------------------------------------------------------------- 3. comparison
def comparison_configs(source: str) -> tuple[list[PlannedRun] | None, str]:
    """The steps and lr-sweep widgets; (configs, "") or (None, why they are invalid)."""
    left, right = st.columns(2)
    steps = left.number_input("Steps of each run", step=100, key="ratios.steps")
    lrs_text = right.text_input(
        "Plain SGD learning rates to compare",
        key="ratios.lrs",
        help="numbers > 0 separated by commas; each trains plain D (no multipliers)",
    )
    try:
        lrs = forms.parse_numbers(lrs_text, field="learning rates")
        return static_ratio_configs_from(
            get_store(),
            source,
            sgd_lrs=lrs,
            steps=int(steps),
            device=st.session_state["shared.device"],
        ), ""
    except (ValueError, TypeError, KeyError) as error:
        return None, str(error)


def source_of(runs: pd.DataFrame) -> str:
    """The run whose multipliers the comparison group's ratio run uses."""
    refs = runs.loc[runs["config.static_ratios"].str.startswith("run:"), "config.static_ratios"]
    return refs.iloc[0][4:] if not refs.empty else ""


def used_ratios(source: str) -> dict | None:
    """The multipliers last trained with from ``source`` (their window and statistic)."""
    store = get_store()
    if "static_ratios" not in store.artifact_names(source):
        return None
    return store.get_artifact(source, "static_ratios")


def results(runs: pd.DataFrame) -> None:
    """Loss curves, final metrics and optimizer memory of the comparison."""
    plain = runs["role"].eq("plain")
    runs.loc[plain, "label"] = runs.loc[plain, "magnitude_arm"] + " (M alone)"
    task = forms.task_of(str(runs["config.dataset"].iloc[0]))
    st.caption(
        f"Comparison `{runs['group'].iloc[-1]}`: "
        f"{live.settings_text(runs.iloc[-1])}, seed {int(runs['config.seed'].iloc[-1])}."
    )
    live.progress_panel(runs)
    st.columns(3)[0].slider(
        "Loss smoothing",
        0.0,
        0.99,
        key="ratios.smoothing",
        help="exponential moving average of the training loss",
    )
    live.loss_panel(runs, task, prefix="ratios", smoothing=st.session_state["ratios.smoothing"])
    store = get_store()
    finals = final_metrics(store, runs["run_id"].tolist()).set_index("run_id")
    labels = dict(zip(runs["run_id"], runs["label"]))
    colors = run_figures.run_colors(runs["run_id"].tolist())
    weights = None
    for run_id in runs["run_id"]:
        if "layers" in store.artifact_names(run_id):
            weights = 4.0 * store.get_artifact(run_id, "layers")["parameters"]  # float32
            break
    left, right = st.columns(2)
    with left:
        fig = experiment_figures.memory_bars(
            {labels[r]: finals.loc[r, "optimizer_state_bytes"] for r in runs["run_id"]},
            weight_bytes=weights,
            colors={labels[r]: colors[r] for r in runs["run_id"]},
            title="Optimizer state memory (recorded when a run ends)",
        )
        charts.show(fig, key="ratios.memory_chart", live=True)
    with right:
        st.markdown("**Final results**")
        table = pd.DataFrame(
            {
                "run": [labels[r] for r in runs["run_id"]],
                "status": finals.loc[runs["run_id"], "status"].to_numpy(),
                "val_loss": finals.loc[runs["run_id"], "val_loss"].to_numpy(),
                "val_accuracy": finals.loc[runs["run_id"], "val_accuracy"].to_numpy(),
                "state (KiB)": finals.loc[runs["run_id"], "optimizer_state_bytes"].to_numpy()
                / 1024,
            }
        )
        st.dataframe(
            table,
            hide_index=True,
            key="ratios.finals",
            column_config={
                c: st.column_config.NumberColumn(format="%.4g") for c in table.columns[2:]
            },
        )
        st.caption(
            "SGD with momentum keeps one buffer the size of the weights; Adam keeps "
            "two (first and second moments); the multipliers cost nothing at run time."
        )


def comparison_section(group: str, active: bool) -> None:
    """The comparison group, redrawn while a run is live."""
    live.redraw_while_live("ratios", lambda: live.group_runs(group), active, results)


def measure_section(source: str, active: bool) -> None:
    """Step 2 for ``source``; polls while the source run still trains."""

    def draw(runs: pd.DataFrame) -> None:
        if active:
            live.progress_panel(runs)
        ratios = estimate(source)
        if ratios is not None:
            export(ratios, source)

    live.redraw_while_live("ratios.source", lambda: live.runs_by_id([source]), active, draw)


# ------------------------------------------- 4. from a tuned comparison: window and scope
def comparison_groups() -> dict[str, str]:
    """Tuned comparisons with a finished graft, newest first: group -> label."""
    runs = get_store().runs(kind=STUDY_KIND)
    grafts = runs[(runs["role"] == "graft") & (runs["status"] == "finished")]
    newest = grafts.drop_duplicates("group")
    return {
        run["group"]: f"{run['group']} · {live.settings_text(run)}" for _, run in newest.iterrows()
    }


def finished_grafts(group: str) -> pd.DataFrame:
    """The finished M#D graft runs of comparison ``group``, newest first."""
    runs = get_store().runs(group=group)
    return runs[(runs["role"] == "graft") & (runs["status"] == "finished")]


def linked(key: str, param: str, options: list[str]) -> None:
    """Give widget ``key`` the URL's ``?param=`` on a tab's first run (a reloaded tab shows
    what it showed), else keep it among ``options``; then keep the URL in step with it once
    a study was started or linked (a tab that only uses steps 1-3 keeps a short URL)."""
    value = st.query_params.get(param, "")
    if not st.session_state[key] and value in options:
        st.session_state[key] = value
    keep_valid(key, options, options[0])
    if "study" in st.query_params:
        st.query_params[param] = st.session_state[key]


def study_choices(groups: dict[str, str]) -> tuple[str, str, str]:
    """The comparison, M and D widgets: (group, M label, D label). M and D are offered among
    the comparison's finished grafts (its arms' labels), the newest graft's by default."""
    linked("ratios.study.group", "study", list(groups))
    group = st.selectbox(
        "Tuned comparison", list(groups), key="ratios.study.group", format_func=groups.get
    )
    grafts = finished_grafts(group)
    magnitudes = list(dict.fromkeys(grafts["magnitude_arm"]))
    directions = list(dict.fromkeys(grafts["direction_arm"]))
    linked("ratios.study.magnitude", "study_m", magnitudes)
    linked("ratios.study.direction", "study_d", directions)
    left, right = st.columns(2)
    magnitude = left.selectbox(
        "M: the ratios are measured on M#D", magnitudes, key="ratios.study.magnitude"
    )
    direction = right.selectbox(
        "D: trained plain, with the static ratios", directions, key="ratios.study.direction"
    )
    return group, magnitude, direction


def study_runs(group: str, direction: str) -> pd.DataFrame:
    """The static-ratio runs of D in ``group`` (those of ``static_ratio_table``), labelled."""
    runs = live.group_runs(group)
    return runs[(runs["role"] == "static_ratios") & (runs["magnitude_arm"] == direction)]


def study_reading(table: pd.DataFrame, magnitude: str, direction: str) -> str:
    """One line: the static-ratio arm that closed the most of the gap from tuned D to tuned M,
    by how much and with what share of M's optimizer memory (or why there is no gap)."""
    m, d = live.plain(magnitude), live.plain(direction)
    tuned = table[table["role"] == "tuned"].set_index("arm")
    if {magnitude, direction} <= set(tuned.index) and (
        tuned.loc[magnitude, "mean"] >= tuned.loc[direction, "mean"]
    ):
        return (
            f"**Reading:** tuned {d} ({tuned.loc[direction, 'mean']:.4g}) is already as good "
            f"as tuned {m} ({tuned.loc[magnitude, 'mean']:.4g}): there is no gap for the "
            "static ratios to close."
        )
    best, unsteady = best_static_arm(table)
    caveat = "".join(
        f" {live.plain(row['arm'])} closed {row['gap_closed']:.0%} on its finished seeds, "
        f"but diverged or failed on {row['failed']} of {row['failed'] + row['seeds']}."
        for _, row in unsteady.iterrows()
    )
    if best is None:
        return (
            f"**Reading:** no gap to read yet: it needs tuned {m}, tuned {d} and a "
            f"static-ratio arm that finished on every seed.{caveat}"
        )
    m_bytes = tuned.loc[magnitude, "state_bytes"]
    memory = (
        f", with {best['state_bytes'] / m_bytes:.0%} of {m}'s optimizer memory"
        if m_bytes > 0
        else ""
    )
    return (
        f"**Reading:** {live.plain(best['arm'])} (window {live.plain(best['window'])}, "
        f"{live.plain(best['scope'])}) closed the most of the gap from tuned {d} to tuned "
        f"{m} of the arms that finished on every seed: {best['gap_closed']:.0%} (100% = as "
        f"good as {m}, 0% = no better than {d}){memory}.{caveat}"
    )


def study_results(group: str, magnitude: str, direction: str, runs: pd.DataFrame) -> None:
    """Progress while the study trains, then its table, figure and reading."""
    if live.is_active(runs):
        live.overall_progress(runs)
    table = static_ratio_table(get_store(), group, magnitude=magnitude, direction=direction)
    st.markdown(study_reading(table, magnitude, direction))
    fig = experiment_figures.ratio_study_figure(
        table,
        title=f"Static ratios from {magnitude}#{direction} next to tuned {magnitude} and tuned "
        f"{direction}",
    )
    charts.show(fig, key="ratios.study.chart", live=True)
    if not table.empty:
        shown = table[STUDY_COLUMNS]
        st.dataframe(
            shown,
            hide_index=True,
            key="ratios.study.table",
            column_config={
                c: st.column_config.NumberColumn(format="%.4g")
                for c in ("mean", "std", "state_bytes", "gap_closed")
            },
        )
        st.caption(
            "mean ± std of the final validation loss over the comparison's seeds; "
            "gap_closed = (D − arm) / (D − M): 1 trains as well as tuned M, 0 as tuned D; "
            "state_bytes: optimizer memory."
        )


def start_study(group: str, magnitude: str, direction: str) -> None:
    """Measure the chosen windows' and scopes' ratios and queue the runs not trained yet in
    the comparison's group; refuse bad choices with a message."""
    store = get_store()
    try:
        with st.spinner("Measuring the ratios…"):
            planned = plan_static_ratio_study(
                store,
                group,
                magnitude=magnitude,
                direction=direction,
                windows=st.session_state["ratios.study.windows"],
                scopes=st.session_state["ratios.study.scopes"],
            )
    except (ValueError, KeyError) as error:
        st.error(f"Not started: {error}")
        return
    if not planned:
        st.info(
            "Nothing new to train: every chosen window and scope is already trained (or "
            "training) in this comparison."
        )
        return
    queue_runs(planned, group=group, kind=STUDY_KIND, reuse=True)  # a stopped run resumes
    st.query_params.update(
        study=group, study_m=magnitude, study_d=direction
    )  # a reload re-attaches
    st.rerun()


def study_section() -> None:
    """Step 4: the static-ratio study of a tuned comparison, started and watched here."""
    st.header("4. From a tuned comparison: which window and scope")
    st.caption(
        "Takes the M#D grafts of a tuned comparison (M at its tuned lr), measures static "
        "ratios over several windows of each, per layer or as one global number, trains D "
        "with them (in the comparison's group, with its schedule) and sets each next to "
        "tuned M and tuned D."
    )
    groups = comparison_groups()
    if not groups:
        st.info(
            "No tuned comparison with a finished graft yet: run one on the **Grid** page "
            "(mode *tuned*) first, then choose it here and press **Start**."
        )
        return
    group, magnitude, direction = study_choices(groups)
    left, right = st.columns(2)
    left.multiselect(
        "Windows of the grafted run",
        list(WINDOWS),
        key="ratios.study.windows",
        help="early: the first 2% of the steps; warmup_end: ±1% around the end of the "
        "warm-up; whole: every step; late: the last 10%",
    )
    right.multiselect(
        "Scopes",
        list(SCOPES),
        key="ratios.study.scopes",
        help="per_layer: one multiplier per layer; global: one number for the whole model",
    )
    runs = study_runs(group, direction)
    active = not runs.empty and live.is_active(runs)
    start, stop, _ = live.start_stop(
        "ratios.study", disabled=active, active=active, why="Wait for the study's runs"
    )
    if start:
        start_study(group, magnitude, direction)
    if stop:
        live.stop_group(runs)
    if runs.empty:
        st.info(
            f"No static-ratio run of {live.plain(direction)} in this comparison yet: press "
            "**Start**."
        )
        return
    live.redraw_while_live(
        "ratios.study",
        lambda: study_runs(group, direction),
        active,
        lambda drawn: study_results(group, magnitude, direction, drawn),
    )


def comparison_sections(source: str, group: str, runs: pd.DataFrame) -> None:
    """Steps 2 and 3 for ``source``: its multipliers, and the comparison ``group`` (``runs``)
    that trains SGD with them."""
    record = get_store().run(source)
    source_active = record["status"] == "running"
    st.header("2. One multiplier per layer")
    st.caption(
        f"From **{record['name']}** (`{source}`, {record['status']}). The lines are "
        "‖Δ_M‖/‖Δ_D‖ at every step; the shaded window is what the statistic summarises, "
        "and the dashed line across it is the layer's multiplier."
    )
    measure_section(source, source_active)

    st.header("3. Train SGD with the multipliers")
    st.caption(
        "Three kinds of run on the same data, model and seed as the grafted run: D "
        "(SGD) with the multipliers, M alone, and plain D at each learning rate below."
    )
    configs, problem = comparison_configs(source)
    active = not runs.empty and live.is_active(runs)
    start, stop, _ = live.start_stop(
        "ratios",
        disabled=live.busy("ratios", active) or source_active,
        active=active,
        why="Wait for the grafted run to finish" if source_active else None,
    )
    if start:
        ratios = None
        try:
            window = tuple(st.session_state["ratios.window"])
            ratios = static_ratios_from_run(
                get_store(), source, window=window, statistic=st.session_state["ratios.statistic"]
            )
        except (ValueError, KeyError) as error:
            ratio_problem = f"no multipliers for this window: {error}"
        if configs is None or ratios is None:
            st.error(f"Not started: {problem if configs is None else ratio_problem}")
        else:
            get_store().put_artifact(
                source, "static_ratios", ratios.to_dict(), kind="static_ratios"
            )
            group, run_ids = start_group(configs, kind="ratios")
            get_store().put_artifact(
                run_ids[0], "static_ratios", ratios.to_dict(), kind="static_ratios"
            )  # the exact multipliers it trained with
            live.watch("ratios", group)
            st.rerun()
    if stop:
        live.stop_group(runs)
    if live.attach("ratios", group, runs, started=start, what="comparison"):
        comparison_section(group, active)


page_setup(DEFAULTS)
st.title("Static ratios")
st.markdown(INTRO)
group = live.watched_group("ratios", "ratios")
runs = live.group_runs(group) if group else pd.DataFrame()
group_source = source_of(runs) if not runs.empty else ""
if not group_source:
    group, runs = "", pd.DataFrame()  # none, or a source run's own group: not a comparison
else:
    if not st.query_params.get("source"):
        st.session_state["ratios.source"] = group_source  # re-attached by ?group= alone
    if tuple(st.session_state["ratios.window"]) == (0, 0):  # show what the comparison used
        used = used_ratios(group_source)
        if used:
            st.session_state["ratios.window"] = tuple(used["info"]["window"])
            st.session_state["ratios.statistic"] = used["info"]["statistic"]
source = source_section()
if source:
    st.session_state["ratios.source"] = source
    st.query_params["source"] = source
elif "source" in st.query_params:
    del st.query_params["source"]
if group_source != source:
    group, runs = "", pd.DataFrame()  # the comparison of another source

if source:
    comparison_sections(source, group, runs)
else:
    st.info(
        "Train a short M#D run above (press **Train M#D**) or pick a saved one: its "
        "per-layer ratios appear here, then **Start** trains SGD with them."
    )
study_section()
