"""Runs: every saved run of the store; filter, overlay curves, read a config, re-run, export
(CSV, or TensorBoard event files), delete (after a confirmation)."""

from pathlib import Path

import streamlit as st

from grafting_core.lab.experiments.common import final_metrics
from grafting_core.lab.figures import runs as run_figures
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store.tensorboard import export_runs, partial_runs
from ui import catalog, charts, forms, live, recent
from ui.resources import get_store, start_group, stop_runs
from ui.state import keep_valid, page_setup

DEFAULTS = {
    "runs.search": "",
    "runs.status": [],
    "runs.kind": [],
    "runs.compare": None,  # None = not chosen yet: the newest group's runs
    "runs.metric": "train_loss",
    "runs.smoothing": 0.0,
    "runs.log_y": False,
    "runs.detail": "",
    "runs.pending_delete": "",  # run id awaiting "Yes, delete"
    "runs.flash": "",  # one message for the next run of the page (after a callback)
}
INTRO = """
Every training run is saved with its full configuration, its metrics at every step and its
per-layer norms, whether it was started here, on another page or from the command line.
Filter the list, pick runs to overlay their curves, open one to read its configuration or
train it again. Deleting removes the run and everything recorded for it.
"""
HOW_TO_START = """
**No runs saved yet.** Open the **Graft lab** page, choose a magnitude optimizer M and a
direction optimizer D, and press **Start**: the runs are saved here as they train.
"""


def _rerun_config(run_id: str) -> None:
    store = get_store()
    try:
        config = RunConfig.from_dict(store.run(run_id)["config"])
    except (ValueError, TypeError, KeyError) as error:
        st.session_state["runs.flash"] = f"error:Cannot re-run {run_id}: {error}"
        return
    group, (new_id,) = start_group([config])
    st.session_state["lab.group"] = group
    st.session_state["runs.flash"] = (
        f"success:Started run `{new_id}` with the same config "
        f"(group `{group}`); the Graft lab page shows it live."
    )


def _export_tensorboard(run_ids: list[str]) -> None:
    store = get_store()
    out = Path(store.root) / "tensorboard"
    try:
        export_runs(store, run_ids, out)
    except ImportError as error:
        st.session_state["runs.flash"] = f"error:{error}"
        return
    done = (
        f"Exported {len(run_ids)} run(s) to `{out}`; view them with `tensorboard --logdir {out}`."
    )
    partial = partial_runs(store, run_ids)
    st.session_state["runs.flash"] = (
        f"warning:{done} {len(partial)} of them had not ended, so their logs are partial: "
        + " ".join(live.literal(notice.removeprefix("notice: ")) for notice in partial.values())
        if partial
        else f"success:{done}"
    )


def _ask_delete(run_id: str) -> None:
    st.session_state["runs.pending_delete"] = run_id


def _cancel_delete() -> None:
    st.session_state["runs.pending_delete"] = ""


def _delete(run_id: str) -> None:
    get_store().delete_run(run_id)
    st.session_state["runs.pending_delete"] = ""
    st.session_state["runs.flash"] = f"success:Deleted run `{run_id}`."


def flash() -> None:
    """Show (once) the message a button callback left."""
    message = st.session_state["runs.flash"]
    if message:
        kind, _, text = message.partition(":")
        {"error": st.error, "warning": st.warning}.get(kind, st.success)(text)
        st.session_state["runs.flash"] = ""


def compare(runs, labels: dict[str, str]) -> None:
    """Overlay one metric of several runs; export their metrics (CSV) and the chart."""
    st.subheader("Compare runs")
    ids = runs["run_id"].tolist()
    chosen = st.session_state["runs.compare"]
    if chosen is None:
        newest = runs["group"].iloc[0]
        chosen = runs.loc[runs["group"] == newest, "run_id"].tolist()[:6] if newest else ids[:1]
    st.session_state["runs.compare"] = [r for r in chosen if r in ids]
    selected = st.multiselect("Runs to overlay", ids, key="runs.compare", format_func=labels.get)
    if not selected:
        st.caption("Pick one or more runs above to draw their curves.")
        return
    store = get_store()
    metrics = store.metrics(selected)
    names = [n for n in run_figures.METRIC_TITLES if n in set(metrics["name"])]
    if not names:
        st.info("These runs have no metrics yet.")
        return
    if st.session_state["runs.metric"] not in names:
        st.session_state["runs.metric"] = names[0]
    left, middle, right = st.columns([2, 2, 1], vertical_alignment="bottom")
    metric = left.selectbox(
        "Metric", names, key="runs.metric", format_func=run_figures.METRIC_TITLES.get
    )
    smoothing = middle.slider("Smoothing", 0.0, 0.99, key="runs.smoothing")
    log_y = right.checkbox("Log scale", key="runs.log_y")
    chosen = runs[runs["run_id"].isin(selected)].iloc[::-1]  # oldest first, as on Graft lab
    legend = catalog.legend_labels(chosen)
    tasks = {forms.task_of(str(d)) for d in chosen["config.dataset"]}
    y_title = run_figures.METRIC_TITLES[metric]
    if metric in ("train_loss", "val_loss") and len(tasks) == 1:
        y_title = live.loss_title(
            tasks.pop(), "training" if metric == "train_loss" else "validation"
        )
    fig = run_figures.metric_curves(
        metrics,
        metric=metric,
        smoothing=smoothing,
        log_y=log_y,
        labels={r: legend[r] for r in chosen["run_id"]},
        title=run_figures.METRIC_TITLES[metric],
        y_title=y_title,
    )
    charts.show(fig, key="runs.chart")
    col_csv, col_html, col_tb, col_note = st.columns([1, 1, 1, 2], vertical_alignment="center")
    col_csv.download_button(
        "Metrics (CSV)",
        catalog.metrics_csv(store, selected),
        file_name="metrics.csv",
        mime="text/csv",
        key="runs.csv",
        on_click="ignore",
    )
    col_html.download_button(
        "Chart (HTML)",
        lambda: run_figures.figure_html(fig),
        file_name=f"{metric}.html",
        mime="text/html",
        key="runs.html",
        on_click="ignore",
    )
    col_tb.button(
        "TensorBoard",
        key="runs.tensorboard",
        on_click=_export_tensorboard,
        args=(selected,),
        help="Write these runs' metrics, per-layer norms and "
        "configs as TensorBoard event files next to the run store",
    )
    col_note.caption(
        "PNG: the camera icon at the chart's top right. The CSV has every "
        "recorded step, the chart at most 2000 points per run."
    )


def details(runs, labels: dict[str, str]) -> None:
    """One run's status, error and config, with re-run, stop and delete."""
    st.subheader("Run details")
    ids = runs["run_id"].tolist()
    if st.session_state["runs.detail"] not in ids:
        st.session_state["runs.detail"] = ids[0]
    run_id = st.selectbox("Run", ids, key="runs.detail", format_func=labels.get)
    record = get_store().run(run_id)
    row = runs.set_index("run_id").loc[run_id]
    st.markdown(f"**{live.literal(record['name'])}** — {live.literal(live.status_text(row))}")
    if record["status"] in ("failed", "interrupted") and record["error"]:
        st.error(live.literal(record["error"]))
    running = record["status"] == "running"
    col_rerun, col_stop, col_delete, _ = st.columns([1, 1, 1, 3])
    col_rerun.button("Re-run this config", key="runs.rerun", on_click=_rerun_config, args=(run_id,))
    if running:
        col_stop.button("Stop", key="runs.stop", on_click=stop_runs, args=([run_id],))
    col_delete.button(
        "Delete…",
        key="runs.delete",
        on_click=_ask_delete,
        args=(run_id,),
        disabled=running,
        help="Stop the run first" if running else None,
    )
    if st.session_state["runs.pending_delete"] == run_id:
        st.warning(
            f"Delete run `{run_id}` ({live.literal(record['name'])}) with all its metrics, "
            "norms and checkpoints? This cannot be undone."
        )
        yes, no, _ = st.columns([1, 1, 4])
        yes.button(
            "Yes, delete",
            type="primary",
            key="runs.confirm_delete",
            on_click=_delete,
            args=(run_id,),
        )
        no.button("Cancel", key="runs.cancel_delete", on_click=_cancel_delete)
    st.markdown("**Configuration**")
    st.json(record["config"], expanded=True)


page_setup(DEFAULTS)
st.title("Runs")
st.markdown(INTRO)
flash()
all_runs = get_store().runs()
if all_runs.empty:
    st.info(HOW_TO_START)
    st.stop()

col_search, col_status, col_kind = st.columns([2, 2, 1])
keep_valid("runs.status", sorted(set(all_runs["status"])), [])
keep_valid("runs.kind", sorted(set(all_runs["kind"])), [])
search = col_search.text_input(
    "Search", key="runs.search", placeholder="name, optimizer, run or group id"
)
statuses = col_status.multiselect("Status", sorted(set(all_runs["status"])), key="runs.status")
kinds = col_kind.multiselect("Kind", sorted(set(all_runs["kind"])), key="runs.kind")
shown = catalog.filter_runs(all_runs, search=search, statuses=statuses, kinds=kinds)
st.caption(f"{len(shown)} of {len(all_runs)} runs")
if shown.empty:
    st.info("No run matches these filters.")
    st.stop()
finals = final_metrics(get_store(), shown["run_id"].tolist(), metrics=("val_loss", "val_accuracy"))
table = catalog.run_table(shown, finals)
links = [recent.page_link(g) for g in table["group"]]
table.insert(2, "made on", [recent.page_title(g) for g in table["group"]])
table.insert(3, "open", [link or None for link in links])
st.dataframe(
    table,
    hide_index=True,
    key="runs.table",
    column_config={
        "val_accuracy": st.column_config.NumberColumn(format="%.3f"),
        "val_loss": st.column_config.NumberColumn(format="%.3f"),
        "open": st.column_config.LinkColumn(
            "open",
            help="the page that made this run, showing its group",
            display_text="open ↗",
            width="small",
        ),
    },
)
labels = catalog.run_labels(shown)
compare(shown, labels)
details(shown, labels)
