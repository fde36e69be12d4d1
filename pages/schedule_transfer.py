"""Schedule transfer: a run's implicit per-layer schedule, replayed onto another optimizer.

The engine's ``start_schedule_transfer`` creates the runs in one group and queues them on
the worker processes; the replay waits for M alone to finish (or starts at once from a
saved run). A fragment reads the store once a second. The group is in the URL
(``?group=<id>``), so a reloaded tab re-attaches.
"""

import pandas as pd
import streamlit as st

from grafting_core.lab.experiments.transfer import start_schedule_transfer
from grafting_core.lab.figures import experiments as experiment_figures
from grafting_core.lab.figures import runs as run_figures
from grafting_core.lab.runs.capacity import check_fits
from grafting_core.lab.runs.config import RunConfig
from ui import charts, forms, live, recent
from ui.resources import get_jobs, get_store
from ui.state import keep_valid, page_setup

NEW, SAVED = "Train M alone now", "Use a saved run"
DEFAULTS = {
    **forms.optimizer_defaults("transfer", {"magnitude": "adam", "direction": "sgd"}),
    **forms.data_model_defaults("transfer"),
    "transfer.source_mode": NEW,
    "transfer.saved_run": "",
    "transfer.steps": 500,
    "transfer.batch_size": 64,
    "transfer.seed": 0,
    "transfer.smoothing": 0.6,
    "transfer.layers": [],  # layers drawn in the schedule chart
    "transfer.layer": "",  # layer of the replay comparison
    "transfer.group": "",  # the transfer this session watches (also the URL's ?group=)
    "transfer.norm_cache": {},  # run id -> ‖Δ_M‖, ‖Δ_D‖ read so far
    "transfer.schedule_cache": {},  # run id -> ‖Δ‖, ‖g‖ read so far
    "transfer.redraw_seconds": [],  # (CPU, wall) seconds of the last live redraws
    "transfer.metric_cache": {},  # run id -> (metrics read so far, run ended)
}
INTRO = r"""
Every optimizer implies a **learning-rate schedule per layer**: how long a step ‖Δ‖ it
takes in each layer at each moment of training. Adam, for example, takes very different
step sizes in different layers and changes them as training goes, without being told to.
Under *The implicit schedule* below you see it: the step size ‖Δ‖ of each layer, and the
**effective learning rate** ‖Δ‖/‖g‖ — the learning rate plain SGD would need to take the
same step from the same gradient g.

Grafting can **transfer** it: record M's step sizes once, then train another optimizer D
with exactly those step sizes in D's own directions, *replay(M)#D*, without running M
again. Compare it with M alone, D alone and the online graft M#D: if replay(M)#D trains
like M, the schedule was what made M good.
"""


def saved_sources() -> pd.DataFrame:
    """Finished runs whose steps were their own (not replays or static-ratio runs)."""
    runs = get_store().runs()
    if runs.empty:
        return runs
    own = (
        (runs["status"] == "finished")
        & runs["config.replay"].eq("")
        & runs["config.static_ratios"].eq("")
    )
    return runs[own]


def run_label(run: pd.Series) -> str:
    """``adam · mnist1d/mlp · 500 steps · <id>`` for pickers."""
    return (
        f"{run['name']} · {run['config.dataset']}/{run['config.model'] or 'default'} · "
        f"{run['config.steps']} steps · {run['run_id']}"
    )


def form() -> tuple[dict | None, str, str]:
    """The settings; returns (arguments of start_schedule_transfer, "", source run id) or
    (None, why they are invalid, source run id)."""
    mode = st.radio(
        "Whose schedule?",
        [NEW, SAVED],
        key="transfer.source_mode",
        horizontal=True,
        help="Train M alone as part of the experiment, or take the schedule a "
        "finished run already recorded (its data, model, steps and seed "
        "are reused so the curves compare like with like).",
    )
    col_m, col_d, col_run = st.columns(3, gap="large")
    source = ""
    try:
        with col_d:
            direction = forms.optimizer_picker("transfer", "direction")
        if mode == NEW:
            with col_m:
                magnitude = forms.optimizer_picker("transfer", "magnitude")
            with col_run:
                st.markdown("**Data, model and training loop**")
                data = forms.data_model_picker("transfer")
                left, right = st.columns(2)
                steps = left.number_input("Steps", step=100, key="transfer.steps")
                batch = right.number_input("Batch size", step=16, key="transfer.batch_size")
                seed = left.number_input(
                    "Seed", step=1, key="transfer.seed", help="model initialisation and batch order"
                )
            forms.check_sizes(data)
            base = RunConfig(
                **data,
                steps=int(steps),
                batch_size=int(batch),
                seed=int(seed),
                device=st.session_state["shared.device"],
            )
            check_fits(base)
            m_name, m_hp = magnitude
            args = {"base": base, "magnitude": (m_name, (m_name, m_hp)), "seeds": [base.seed]}
        else:
            with col_m:
                st.markdown("**Saved run: its recorded step sizes are the schedule**")
                runs = saved_sources()
                if runs.empty:
                    st.info(
                        "No finished run is saved yet: train one on the **Graft lab** "
                        "page, or choose *Train M alone now*."
                    )
                    return None, "there is no finished run to take the schedule from", ""
                labels = {r["run_id"]: run_label(r) for _, r in runs.iterrows()}
                keep_valid("transfer.saved_run", list(labels), next(iter(labels)))
                source = st.selectbox(
                    "Run", list(labels), key="transfer.saved_run", format_func=labels.get
                )
            config = RunConfig.from_dict(get_store().run(source)["config"])
            with col_run:
                st.markdown("**Data, model and training loop**")
                st.caption(
                    f"From the saved run: {config.dataset}, "
                    f"{config.model or 'default model'} (width {config.width or 'default'},"
                    f" depth {config.depth or 'default'}), {config.steps} steps, batch "
                    f"{config.batch_size}, seed {config.seed}."
                )
            base = config.replace(
                name="",
                direction="",
                direction_hparams={},
                replay="",
                static_ratios="",
                device=st.session_state["shared.device"],
            )
            args = {
                "base": base,
                "magnitude": (config.magnitude, (config.magnitude, config.magnitude_hparams)),
                "seeds": [config.seed],
                "source_runs": [source],
            }
        d_name, d_hp = direction
        args["direction"] = (d_name, (d_name, d_hp))
        m_name, m_hp = args["magnitude"][1]  # M#D validates both, naming the role at fault
        args["base"].replace(
            magnitude=m_name, magnitude_hparams=m_hp, direction=d_name, direction_hparams=d_hp
        )
        return args, "", source
    except (ValueError, TypeError, KeyError) as error:
        return None, str(error), source


def source_of(runs: pd.DataFrame) -> str:
    """The run whose recorded schedule the group's replay uses."""
    replays = runs.loc[runs["config.replay"].str.startswith("run:"), "config.replay"]
    return replays.iloc[0][4:] if not replays.empty else ""


def role_labels(runs: pd.DataFrame, source: str, group: str) -> pd.Series:
    """``adam (M alone)``, ``sgd (D alone)``, ``adam#sgd``, ``replay(adam)#sgd``."""
    labels = runs["label"].copy()
    for i, run in runs.iterrows():
        if run["run_id"] == source and run["group"] != group:
            labels[i] = f"{run['name']} (saved run)"
        elif run["run_id"] == source:
            labels[i] = f"{run['config.magnitude']} (M alone)"
        elif not run["config.direction"]:
            labels[i] = f"{run['config.magnitude']} (D alone)"
    return labels


def schedule_section(source: str, label: str) -> None:
    """The source run's ‖Δ‖ and ‖Δ‖/‖g‖ per layer over time."""
    st.subheader(f"The implicit schedule of {label}")
    norms = live.poll_norms([source], "transfer.schedule_cache", fields=("step_norm", "grad_norm"))
    layers = list(dict.fromkeys(norms["layer"].astype(str)))
    if not layers:
        st.info("The schedule appears after the first few steps.")
        return
    keep_valid("transfer.layers", layers, layers[:8])
    shown = st.multiselect("Layers (parameter tensors)", layers, key="transfer.layers")
    title = f"{label}: step size and effective learning rate per layer"
    fig = experiment_figures.implicit_schedule(
        norms.drop(columns="run_id"), layers=shown, title=title
    )
    charts.show(fig, key="transfer.schedule_chart", live=True)
    st.caption(
        "Top: the step each layer took, ‖Δ‖. Bottom: ‖Δ‖/‖g‖, the learning rate "
        "plain SGD would need for that step. Lines that differ between layers and "
        "move over time are a per-layer schedule nobody wrote down."
    )


def replay_section(runs: pd.DataFrame) -> None:
    """One layer's ‖Δ_M‖ (and ‖Δ_D‖) in every run: the replay follows M exactly."""
    st.subheader("Did the replay take M's step sizes?")
    layers = next(
        (names for names in (get_store().layer_norm_names(r)[0] for r in runs["run_id"]) if names),
        [],
    )
    if not layers:
        return
    keep_valid("transfer.layer", layers, layers[0])
    layer = st.columns(3)[0].selectbox("Layer", layers, key="transfer.layer")
    ids = runs["run_id"].tolist()
    norms = live.poll_norms(ids, "transfer.norm_cache")
    plain = runs.loc[runs["config.direction"] == "", "run_id"].tolist()
    fig = run_figures.norm_trajectories(
        norms,
        layer=layer,
        labels=dict(zip(ids, runs["label"])),
        colors=run_figures.run_colors(ids),
        plain=plain,
        title=f"Layer {layer}: step norms in each run",
    )
    charts.show(fig, key="transfer.replay_chart", live=True)
    st.caption(
        "replay(M)#D's ‖Δ_M‖ is the recorded schedule, so it lies on M's own ‖Δ‖; "
        "the online M#D computes ‖Δ_M‖ at its own weights, so it drifts away as the "
        "two trajectories part. The ratio below is the per-layer learning-rate "
        "correction each graft applied to D."
    )


def reading_section(runs: pd.DataFrame, source: str) -> None:
    """One computed line: where replay(M)#D landed between M alone and D alone (and M#D)."""
    plain = runs[runs["config.direction"] == ""]
    replay = runs[runs["config.replay"].str.startswith("run:")]
    online = runs[(runs["config.direction"] != "") & ~runs["config.replay"].str.startswith("run:")]
    others = plain[plain["run_id"] != source]
    if source not in set(runs["run_id"]) or replay.empty or others.empty:
        return
    if live.is_active(runs):
        st.caption("The reading of these runs appears when they have all finished.")
        return
    roles = {"M": source, "D": others["run_id"].iloc[-1], "replay": replay["run_id"].iloc[-1]}
    if not online.empty:
        roles["M#D"] = online["run_id"].iloc[-1]
    metrics = live.poll_metrics(runs, "transfer.metric_cache")
    lines = run_figures.lab_reading(metrics, roles, dict(zip(runs["run_id"], runs["label"])))
    st.markdown("**Computed from these runs.** " + "  \n".join(lines))


def live_section(group: str, active: bool) -> None:
    """Progress, losses, the schedule and the replay check; redraws while a run is live."""

    def draw(own: pd.DataFrame) -> None:
        source = source_of(own)
        runs = live.group_runs(group, before=[source]) if source else own
        runs["label"] = role_labels(runs, source, group)
        task = forms.task_of(str(runs["config.dataset"].iloc[0]))
        st.caption(
            f"Transfer `{group}`: {live.settings_text(runs.iloc[-1])}, seed "
            f"{int(runs['config.seed'].iloc[-1])}."
        )
        live.progress_panel(runs)
        st.columns(3)[0].slider(
            "Loss smoothing",
            0.0,
            0.99,
            key="transfer.smoothing",
            help="exponential moving average of the training loss",
        )
        live.loss_panel(
            runs, task, prefix="transfer", smoothing=st.session_state["transfer.smoothing"]
        )
        reading_section(runs, source)
        if source in set(runs["run_id"]):  # (a saved source may have been deleted since)
            schedule_section(source, runs.set_index("run_id").loc[source, "label"])
        replay_section(runs)
        live.drop_cache(runs["run_id"].tolist(), "transfer.norm_cache")

    live.redraw_while_live("transfer", lambda: live.group_runs(group), active, draw)


page_setup(DEFAULTS)
st.title("Schedule transfer")
st.markdown(INTRO)
args, problem, saved = form()


def start() -> str:
    """Start the transfer the form describes; its replays wait for M alone."""
    if args is None:
        raise ValueError(problem)
    return start_schedule_transfer(get_store(), **args, executor=get_jobs())[0]


def empty() -> None:
    if saved:
        record = get_store().run(saved)
        schedule_section(saved, f"{record['name']} (saved run)")
        st.info("Press **Start** to replay this schedule onto D, next to D alone and M#D.")
        return
    st.info(
        "Nothing open: choose M and D above and press **Start**, or open a recent transfer "
        "below. M alone, D alone and M#D train in the background; replay(M)#D starts when "
        "M alone has finished."
    )
    recent.offer("transfer", ("transfer",), "transfer")


live.page_skeleton(
    "transfer", "transfer", start=start, draw=live_section, empty=empty, what="transfer"
)
