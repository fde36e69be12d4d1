"""Graft lab (landing page): train M alone, D alone and M#D side by side and watch them live.

Runs train in worker processes (ui.resources); this page only writes configs to the store,
reads it back once a second in a fragment, and draws the engine's run_figures. The watched
group is in the URL (``?group=<id>``), so a reloaded or reopened tab re-attaches.
"""

import streamlit as st

from grafting_core import GRANULARITIES
from grafting_core.lab.figures import runs as run_figures
from grafting_core.lab.runs.capacity import check_fits
from grafting_core.lab.runs.config import RunConfig
from ui import charts, forms, live, recent
from ui.resources import get_store, start_group
from ui.state import keep_valid, page_setup

DEFAULTS = {
    **forms.optimizer_defaults("lab", {"magnitude": "adam", "direction": "sgd"}),
    **forms.data_model_defaults("lab"),
    "lab.granularity": "tensor",
    "lab.steps": 800,  # ~10-20 s for the four runs of the default MLP on two CPU cores
    "lab.batch_size": 64,
    "lab.seed": "0",  # typed as text: every digit reaches the server (see forms.seed_input)
    "lab.reverse": True,  # also train D#M
    "lab.smoothing": 0.6,
    "lab.layer": "",
    "lab.norm_runs": [],
    "lab.heatmap_run": "",
    "lab.heatmap_quantity": "ratio",
    "lab.group": "",  # the group this session watches (also the URL's ?group=)
    "lab.norm_cache": {},  # run id -> layer norms read so far (polls read only newer steps)
    "lab.redraw_seconds": [],  # (CPU, wall) seconds of the last live redraws
    "lab.metric_cache": {},  # run id -> (metrics read so far, run ended)
}
INTRO = r"""
*Grafting* M#D steps each layer by the **length** of optimizer M's step (magnitude) in the
**direction** of optimizer D's: $\Delta = \lVert\Delta_M\rVert \, \Delta_D / \lVert\Delta_D\rVert$.
Press **Start**: M alone, D alone, M#D (and D#M) train side by side on the same batches.
"""
STORY = r"""
**The paper's claim.** Agarwal et al. ([arXiv 2002.11803](https://arxiv.org/abs/2002.11803))
found that M#D trains like M on their networks: much of what makes an optimizer good is the
per-layer step-size schedule it implies, not its direction.

**What this lab measured** (RESULTS.md §0; each optimizer's learning rate and warm-up
tuned, 10 seeds, verdicts with 95% CIs). On an MNIST-1D MLP, SGD, Adam and AdaGrad tuned
end close (1.056, 1.056, 1.129), and no graft trains like its M: every graft mixing AdaGrad
with SGD or Adam is *worse than both* its arms but one (Adam#AdaGrad, closer to Adam), and
the SGD–Adam grafts land between. Two controls show the lab can see magnitude, and
direction, decide where each must. On a small character transformer (5 seeds) Adam#SGD on
the hidden matrices trains *like* Adam, its M, while SGD#Adam lands *closer to* Adam, its
D: there magnitude decides for Adam's step sizes, not for SGD's.

**Why they can differ.** Grafting takes one step length per *layer*; how that length is
shared among the layer's coordinates comes with D's direction. Adam's advantage is largely
*per-coordinate* scaling, which therefore travels with Adam's direction. Which side decides
can change with the model, the number and size of its layers (the paper's networks have
hundreds of layers of millions of weights), the learning rates and how well each is tuned.
*Grafting in 2-D* shows one case of each; the reading under the charts below is computed
from these runs (one seed: small differences mean nothing).
"""


def form() -> tuple[list[RunConfig] | None, str]:
    """The settings widgets; returns (configs, "") or (None, why they are invalid)."""
    col_m, col_d, col_run = st.columns(3, gap="large")
    with col_m:
        magnitude = forms.optimizer_picker("lab", "magnitude")
    with col_d:
        direction = forms.optimizer_picker("lab", "direction")
    with col_run:
        st.markdown("**Data, model and training loop**")
        data = forms.data_model_picker("lab")
        left, right = st.columns(2)
        with left:
            steps = st.number_input("Steps", step=100, key="lab.steps")
            seed = forms.seed_input("lab.seed")
        with right:
            batch = st.number_input("Batch size", step=16, key="lab.batch_size")
            granularity = st.selectbox(
                "Grafting layer",
                GRANULARITIES,
                key="lab.granularity",
                help="tensor: each parameter tensor is a layer (the paper's layer-wise "
                "grafting); module: weight and bias together; global: one norm for all",
            )
    try:  # no min_value on the inputs: a browser keeps out-of-range values from the server
        forms.check_sizes(data)
        seed = forms.parse_seed(seed)  # the seed shown is the seed trained, or an error
        base = RunConfig(
            **data,
            granularity=granularity,
            steps=int(steps),
            batch_size=int(batch),
            seed=seed,
            device=st.session_state["shared.device"],
        )
        configs = forms.lab_configs(
            base, magnitude, direction, reverse=st.session_state["lab.reverse"]
        )
        check_fits(base)
        return configs, ""
    except (ValueError, TypeError) as error:
        return None, str(error)


def norms_section(runs, task: str) -> None:
    """‖Δ_M‖, ‖Δ_D‖ and their ratio for one layer, then every layer as a heatmap."""
    st.subheader("Per-layer step sizes: the schedule each optimizer implies")
    st.caption(
        "‖Δ_M‖ is the step M proposes for a layer, ‖Δ_D‖ the step D proposes, at the "
        "same weights and gradient. M#D moves each layer by ‖Δ_M‖ in D's direction, "
        "so the ratio ‖Δ_M‖/‖Δ_D‖ is the per-layer learning-rate correction grafting "
        "applies to D. Runs without D show their own step ‖Δ‖."
    )
    labels = dict(zip(runs["run_id"], runs["label"]))
    colors = run_figures.run_colors(runs["run_id"].tolist())
    plain = runs.loc[runs["config.direction"] == "", "run_id"].tolist()
    layers = next(
        (names for names in (get_store().layer_norm_names(r)[0] for r in runs["run_id"]) if names),
        [],
    )
    if not layers:
        st.info("Per-layer norms appear after the first few steps.")
        return
    ids = runs["run_id"].tolist()
    keep_valid("lab.layer", layers, layers[0])
    keep_valid("lab.norm_runs", ids, ids)
    left, right = st.columns([1, 2])
    with left:
        layer = st.selectbox("Layer", layers, key="lab.layer")
    with right:
        shown = st.multiselect("Runs", ids, key="lab.norm_runs", format_func=labels.get)
    norms = live.poll_norms(shown, "lab.norm_cache", layer=layer)
    fig = run_figures.norm_trajectories(
        norms,
        layer=layer,
        labels={r: labels[r] for r in shown},
        colors=colors,
        plain=plain,
        title=f"Layer {layer}",
        x_max=live.steps_of(runs),
    )
    charts.show(fig, key="lab.norm_chart", live=True)

    grafted = [r for r in ids if r not in plain] or ids
    keep_valid("lab.heatmap_run", ids, grafted[0])
    left, right = st.columns([1, 2])
    with left:
        heat_run = st.selectbox(
            "Heatmap of run", ids, key="lab.heatmap_run", format_func=labels.get
        )
    with right:
        quantity = st.selectbox(
            "Quantity",
            ["ratio", "magnitude_norm", "direction_norm"],
            key="lab.heatmap_quantity",
            format_func=lambda q: run_figures.QUANTITIES[q][1],
        )
    heat = live.poll_norms([heat_run], "lab.norm_cache")
    fig = run_figures.norm_heatmap(
        heat.drop(columns="run_id"),
        quantity=quantity,
        title=f"All layers of {labels[heat_run]}: {run_figures.QUANTITIES[quantity][1]} per step",
        x_max=live.steps_of(runs),
    )
    charts.show(fig, key="lab.heatmap_chart", live=True)
    live.drop_cache(list(dict.fromkeys([*shown, heat_run])), "lab.norm_cache")


def roles_of(runs) -> dict[str, str]:
    """ "M", "D", "M#D" (and "D#M") → run id, for a group the form made (else {})."""
    rows = runs.to_dict("records")
    if len(rows) < 3:
        return {}
    m, d, g = rows[:3]
    if not (
        m["config.direction"] == ""
        and d["config.direction"] == ""
        and (g["config.magnitude"], g["config.direction"])
        == (m["config.magnitude"], d["config.magnitude"])
    ):
        return {}
    roles = {"M": m["run_id"], "D": d["run_id"], "M#D": g["run_id"]}
    if len(rows) > 3:
        roles["D#M"] = rows[3]["run_id"]
    return roles


def reading_section(runs) -> None:
    """The computed reading of the group, once every run has ended."""
    roles = roles_of(runs)
    if not roles:
        return
    if live.is_active(runs):
        st.caption("The reading of these runs appears when they have all finished.")
        return
    metrics = live.poll_metrics(runs, "lab.metric_cache")
    labels = dict(zip(runs["run_id"], runs["label"]))
    lines = run_figures.lab_reading(metrics, roles, labels)
    st.markdown("**Computed from these runs.** " + "  \n".join(lines))


def live_section(group: str, active: bool) -> None:
    """Progress, losses and norms of ``group``; redraws while a run is live."""

    def draw(runs) -> None:
        task = forms.task_of(str(runs["config.dataset"].iloc[0]))
        live.progress_panel(runs)
        st.columns(3)[0].slider(
            "Loss smoothing",
            0.0,
            0.99,
            key="lab.smoothing",
            help="exponential moving average of the training loss (0 = raw)",
        )
        live.loss_panel(runs, task, prefix="lab", smoothing=st.session_state["lab.smoothing"])
        reading_section(runs)
        norms_section(runs, task)

    live.redraw_while_live("lab", lambda: live.group_runs(group), active, draw)


page_setup(DEFAULTS)
st.title("Graft lab")
st.markdown(INTRO)
with st.expander("What the paper claims, what this lab measured, and why they can differ"):
    st.markdown(STORY)
toolbar = st.container()  # Start and Stop above the settings: in view at 1400 × 900
configs, problem = form()


def start() -> str:
    """Start the form's runs as a new group."""
    if configs is None:
        raise ValueError(problem)
    return start_group(configs)[0]


def empty() -> None:
    st.info(
        "Nothing open: choose M and D above and press **Start**, or open a recent group "
        "below. The runs train in the background; every saved run is on the **Runs** page."
    )
    recent.offer("lab", ("lab",), "Graft lab group")


rest = live.page_skeleton(
    "lab", "lab", start=start, draw=live_section, empty=empty, place=lambda: toolbar
)
rest.checkbox("Also train D#M (D's step sizes in M's directions)", key="lab.reverse")
