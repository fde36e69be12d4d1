"""The Static ratios page's panels: data in, widgets and figures out (every number from an
engine reading: ``experiments.static_ratios`` and ``experiments.ratio_study``)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from grafting_core import STATISTICS
from grafting_core.lab.experiments.ratio_study import (
    SCOPES,
    STUDY_VERDICT_COLUMNS,
    WINDOWS,
    static_ratio_table,
    study_pairs,
    study_reading,
    study_verdicts_text,
)
from grafting_core.lab.experiments.static_ratios import (
    RatioReading,
    direction_momentum,
    graftable_runs,
    read_static_ratio_group,
)
from grafting_core.lab.figures import experiments as experiment_figures
from grafting_core.lab.figures import runs as run_figures
from grafting_core.lab.store.run_store import RunStore
from ui import charts, forms, live
from ui.state import keep_valid

#: The study table's columns shown (``static_ratio_table``'s, less role and variant).
STUDY_COLUMNS = [
    "arm",
    "window",
    "scope",
    "mean",
    "std",
    "median",
    "seeds",
    "failed",
    "state_bytes",
    "gap_closed",
]


SNIPPET = """import torch
from grafting_core import StaticRatios

# lr of each parameter = base_lr × its multiplier (base_lr = {base_lr:g}, D's lr in the
# run); param_groups(..., lr=...) rescales them all, and LR schedulers work on top.
optimizer = torch.optim.SGD(
    StaticRatios.load("ratios.json").param_groups(model.named_parameters()),
    momentum={momentum:g})
"""
NUMBERS = {"format": "%.4g"}


def number_columns(columns) -> dict:
    return {c: st.column_config.NumberColumn(**NUMBERS) for c in columns}


def window_controls(steps: int) -> None:
    """The window slider and the statistic (``ratios.window``, ``ratios.statistic``)."""
    left, right = st.columns([3, 1])
    left.slider(
        "Window (steps): the multipliers summarise these steps",
        0,
        steps,
        key="ratios.window",
        help="[start, stop): early steps are noisy, late ones may no longer represent "
        "training from scratch",
    )
    right.selectbox(
        "Statistic",
        STATISTICS,
        key="ratios.statistic",
        help="median and trimmed mean (10% cut at each end) ignore the occasional spike; "
        "mean does not",
    )


def multipliers_panel(store: RunStore, source: str, reading: RatioReading) -> None:
    """The ratio chart with the window, each layer's multiplier, the JSON and its snippet."""
    title = f"‖Δ_M‖/‖Δ_D‖ per layer in {store.run(source)['name']}"
    fig = experiment_figures.ratio_lines(
        reading.trajectories,
        window=reading.window,
        values=reading.values or None,
        title=title if reading.ratios else "",
    )
    charts.show(fig, key="ratios.ratio_chart", live=True)
    if reading.ratios is None:
        st.error(f"No multipliers for this window: {reading.problem}")
        return
    st.dataframe(
        reading.table,
        hide_index=True,
        key="ratios.table",
        column_config=number_columns(reading.table.columns[1:]),
    )
    d_name, momentum = direction_momentum(store, source)
    col_button, col_code = st.columns([1, 3])
    col_button.download_button(
        "Download multipliers (JSON)",
        json.dumps(reading.ratios.to_dict(), indent=2),
        file_name="ratios.json",
        mime="application/json",
        key="ratios.download",
        on_click="ignore",
        icon=":material/download:",
    )
    col_button.caption(f"{len(reading.ratios.ratios)} parameters, keyed by name, with shapes.")
    col_code.code(SNIPPET.format(momentum=momentum, base_lr=reading.ratios.base_lr), "python")
    if d_name != "sgd":
        col_code.caption(f"D was {d_name}: use its torch class with the same param_groups.")


def comparison_results(store: RunStore, runs: pd.DataFrame) -> None:
    """Loss curves, final metrics and optimizer memory of the comparison ``runs``."""
    plain = runs["role"].eq("plain")
    runs.loc[plain, "label"] = runs.loc[plain, "magnitude_arm"] + " (M alone)"
    last = runs.iloc[-1]
    st.caption(
        f"Comparison `{last['group']}`: {live.settings_text(last)}, "
        f"seed {int(last['config.seed'])}."
    )
    live.progress_panel(runs)
    st.columns(3)[0].slider("Loss smoothing", 0.0, 0.99, key="ratios.smoothing")
    task = forms.task_of(str(runs["config.dataset"].iloc[0]))
    live.loss_panel(runs, task, prefix="ratios", smoothing=st.session_state["ratios.smoothing"])
    reading = read_static_ratio_group(store, str(last["group"]))
    finals = reading.finals.set_index("run_id").loc[runs["run_id"]]
    labels, colors = runs["label"].tolist(), run_figures.run_colors(runs["run_id"].tolist())
    left, right = st.columns(2)
    fig = experiment_figures.memory_bars(
        dict(zip(labels, finals["optimizer_state_bytes"])),
        weight_bytes=reading.weight_bytes,
        colors={label: colors[r] for label, r in zip(labels, runs["run_id"])},
        title="Optimizer state memory (recorded when a run ends)",
    )
    with left:
        charts.show(fig, key="ratios.memory_chart", live=True)
    table = finals[["status", "val_loss", "val_accuracy", "state (KiB)"]].reset_index(drop=True)
    right.markdown("**Final results**")
    right.dataframe(
        table.assign(run=labels)[["run", *table.columns]],
        hide_index=True,
        key="ratios.finals",
        column_config=number_columns(table.columns[1:]),
    )
    right.caption("SGD with momentum keeps one buffer the size of the weights, Adam two.")


def study_results(
    store: RunStore, group: str, magnitude: str, direction: str, runs: pd.DataFrame
) -> None:
    """Progress while the study trains, then its reading, figure and table."""
    if live.is_active(runs):
        live.overall_progress(runs)
    table = static_ratio_table(store, group, magnitude=magnitude, direction=direction)
    st.markdown("**Reading:** " + live.literal(study_reading(table, magnitude, direction)))
    st.markdown("**Verdicts:** " + live.literal(study_verdicts_text(table, magnitude, direction)))
    title = (
        f"Static ratios from {magnitude}#{direction} next to tuned {magnitude} and tuned "
        f"{direction}"
    )
    charts.show(
        experiment_figures.ratio_study_figure(table, title=title),
        key="ratios.study.chart",
        live=True,
    )
    if not table.empty:
        st.dataframe(
            table[STUDY_COLUMNS],
            hide_index=True,
            key="ratios.study.table",
            column_config=number_columns(("mean", "std", "state_bytes", "gap_closed")),
        )
        st.caption(
            "mean ± std of the final validation loss over the seeds; gap_closed = "
            "(D − arm) / (D − M): 1 trains as well as tuned M, 0 as tuned D."
        )
    static = table[table["role"] == "static_ratios"] if not table.empty else table
    if not static.empty:
        charts.show(
            experiment_figures.study_intervals(table, magnitude, direction),
            key="ratios.study.verdicts_chart",
            live=True,
        )
        st.dataframe(
            static[list(STUDY_VERDICT_COLUMNS)],
            hide_index=True,
            key="ratios.study.verdicts",
            column_config=number_columns(("position", "ci_low", "ci_high", "p_holm")),
        )
        st.caption(
            f"Each arm judged like a graft between tuned {direction} (position 0) and tuned "
            f"{magnitude} (1), paired by seed: position with its CI at the level Holm's "
            "correction over the arms judged it (ci_level); *like* when the CI lies within "
            "the margin (shaded) of an end, *closer to* when on one side of 0.5, *between* "
            "when inside both margins, *better* / *worse than both*, else *cannot tell*; "
            "alone: the verdict on its own at 95%."
        )


def saved_source(store: RunStore) -> str:
    """The saved M#D runs to measure, newest first: the one chosen ("" when there is none)."""
    runs = graftable_runs(store)
    if runs.empty:
        st.info("No finished M#D run is saved yet: train one here or on the **Graft lab**.")
        return ""
    labels = {
        r["run_id"]: f"{r['name']} · {r['config.dataset']} · {r['config.steps']} steps · "
        f"{r['run_id']}"
        for _, r in runs.iterrows()
    }
    keep_valid("ratios.saved_run", list(labels), next(iter(labels)))
    return st.selectbox(
        "Saved M#D run", list(labels), key="ratios.saved_run", format_func=labels.get
    )


def source_form() -> tuple:
    """M, D, data and a short loop for the run to measure: (M, D, data, (steps, batch, seed))."""
    col_m, col_d, col_run = st.columns(3, gap="large")
    with col_m:
        magnitude = forms.optimizer_picker("ratios", "magnitude")
    with col_d:
        direction = forms.optimizer_picker("ratios", "direction")
    with col_run:
        st.markdown("**Data, model and training loop**")
        data = forms.data_model_picker("ratios")
        left, right = st.columns(2)
        steps = left.number_input("Steps", step=100, key="ratios.source_steps")
        batch = right.number_input("Batch size", step=16, key="ratios.batch_size")
        seed = left.number_input("Seed", step=1, key="ratios.seed")
    return magnitude, direction, data, (steps, batch, seed)


def linked(key: str, param: str, options: list[str]) -> None:
    """Widget ``key`` takes the URL's ``?param=`` on a tab's first run, else stays among
    ``options``; the URL follows it once a study was started or linked."""
    value = st.query_params.get(param, "")
    if not st.session_state[key] and value in options:
        st.session_state[key] = value
    keep_valid(key, options, options[0])
    if "study" in st.query_params:
        st.query_params[param] = st.session_state[key]


def study_choices(store: RunStore, groups: pd.DataFrame) -> tuple[str, str, str]:
    """The comparison, its M and D (among its finished grafts, the newest's by default), the
    windows and scopes: (group, M label, D label)."""
    labels = {
        row["group"]: f"{row['group']} · {live.settings_text(row)}" for _, row in groups.iterrows()
    }
    linked("ratios.study.group", "study", list(labels))
    group = st.selectbox(
        "Tuned comparison", list(labels), key="ratios.study.group", format_func=labels.get
    )
    magnitudes, directions = study_pairs(store, group)
    linked("ratios.study.magnitude", "study_m", magnitudes)
    linked("ratios.study.direction", "study_d", directions)
    left, right = st.columns(2)
    magnitude = left.selectbox(
        "M: the ratios are measured on M#D", magnitudes, key="ratios.study.magnitude"
    )
    direction = right.selectbox(
        "D: trained with the static ratios", directions, key="ratios.study.direction"
    )
    left.multiselect(
        "Windows of the grafted run",
        list(WINDOWS),
        key="ratios.study.windows",
        help="early: first 2% of the steps; warmup_end: ±1% around the warm-up's "
        "end; whole: every step; late: the last 10%",
    )
    right.multiselect(
        "Scopes",
        list(SCOPES),
        key="ratios.study.scopes",
        help="per_layer: one multiplier per layer; global: one for the model",
    )
    return group, magnitude, direction
