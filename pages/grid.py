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

from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from grafting_core.lab.experiments.comparison_plan import PROTOCOL
from grafting_core.lab.experiments.grid import (
    cell_notes,
    grid_configs,
    grid_matrix,
    grid_reading,
    grid_table,
)
from grafting_core.lab.figures import experiments as experiment_figures
from grafting_core.lab.runs.capacity import check_fits
from grafting_core.lab.runs.config import RunConfig
from ui import charts, forms, live, recent
from ui.comparison import PARTIAL_KEYS, tuned_mode
from ui.grid_forms import MAX_RUNS, common_form
from ui.resources import (
    get_jobs,
    get_store,
    start_group,
)
from ui.state import keep_valid, page_setup

MODES = {"grid": "Fixed learning rates (grid)", "tuned": "Tuned comparison (each lr swept)"}
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
    # the protocol's search: lr × warm-up, on a tuning seed, halved (comparison_plan.PROTOCOL)
    "grid.warmups": ", ".join(f"{w * 100:g}" for w in PROTOCOL.warmups),
    "grid.tune_seeds": ", ".join(map(str, PROTOCOL.tune_seeds)),
    "grid.rung_percent": round(PROTOCOL.rung * 100),
    "grid.control": PROTOCOL.control,
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
METRICS = {"val_loss": "final validation loss", "val_accuracy": "final validation accuracy"}


def mode_of_url() -> str:
    """The mode a new session opens in: tuned when the URL watches a comparison."""
    return "tuned" if st.query_params.get("group", "").startswith("compare-") else "grid"


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


def grid_mode() -> None:
    """Every M#D pair at the lrs typed in."""
    configs, problem = form()

    def start() -> str:
        if configs is None:
            raise ValueError(problem)
        return start_group(configs, kind="grid")[0]

    def empty() -> None:
        st.info(
            "No grid yet: choose the optimizers above and press **Start**. Every M#D "
            "pair trains in the background and its cell fills in when it finishes."
        )
        recent.offer("grid", ("grid",), "grid")

    live.page_skeleton(
        "grid",
        "grid",
        start=start,
        draw=live_section,
        empty=empty,
        what="grid",
        why="Stop the grid in progress first",
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
