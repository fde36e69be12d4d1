"""The Grid page's shared inputs: the optimizers with their lrs, data and model, the training
loop; both the fixed grid and the tuned comparison start from them."""

import streamlit as st

from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from ui import forms

MAX_RUNS = 100  # a bigger grid belongs on the command line (python -m grafting_core grid)
SCHEDULE_NAMES = {
    "constant": "constant",
    "cosine": "cosine decay",
    "linear": "linear decay",
    "warmup_cosine": "warm-up + cosine",
}


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
