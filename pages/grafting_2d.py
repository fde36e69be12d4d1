"""Grafting in 2-D (teaching page): paths of M, D, M#D and D#M on two-parameter problems.

Everything is computed in the script (about 0.1–0.5 s for 4 × 200 steps, cached per
setting), with the project's own ``Graft``; a step slider scrubs through the M#D path and
draws M's and D's proposed steps and the grafted step at that point.
"""

import streamlit as st

from grafting_core import RULES
from grafting_core.lab.figures import toy2d as toy2d_figures
from grafting_core.lab.tasks.toy2d import LAYOUTS, PRESETS, grafted_paths, make_problem
from ui import charts, forms
from ui.state import page_setup

NATIVE = list(RULES)  # 2-D problems have 1-element tensors: black-box Muon (2-D only) won't fit
DEFAULTS = {
    **forms.optimizer_defaults("toy", {"magnitude": "adam", "direction": "sgd"}),
    **{
        f"toy.{role}.{name}.lr": lr
        for role in ("magnitude", "direction")
        for name, lr in PRESETS["quadratic"]["suggested_lr"].items()
    },
    "toy.problem": "quadratic",
    "toy.condition": 20.0,
    "toy.noise": 1.0,
    "toy.noise_seed": 0,
    "toy.x": PRESETS["quadratic"]["start"][0],
    "toy.y": PRESETS["quadratic"]["start"][1],
    "toy.steps": 100,
    "toy.layout": "joint",
    "toy.step": 0,
    "toy.start_click": None,
}
LAYOUT_TEXT = {
    "joint": "both parameters form one layer",
    "per_coordinate": "each parameter is its own layer",
}
INTRO = r"""
An optimizer step is an arrow in parameter space: it has a **length** and a **direction**.
*Grafting* M#D takes the direction from optimizer D and the length from optimizer M:
$\Delta = \lVert\Delta_M\rVert\,\Delta_D/\lVert\Delta_D\rVert$. Here the "model" has just
two parameters (x, y), so you can see every step. Pick a problem, M and D, and scrub
through the steps: the blue arrow is what M proposes, the orange one what D proposes, and
the green one the grafted step that is taken (D's direction, M's length).
"""
STORY = r"""
**The paper's claim** (Agarwal et al. 2020): on real networks M#D trains like M — the
step length each *layer* gets carries much of what makes an optimizer good.
**What this lab measured** (RESULTS.md §0, every optimizer's lr and warm-up tuned, 10
seeds): on an MNIST-1D MLP no graft of SGD, Adam and AdaGrad trains like its M; most grafts
with AdaGrad are *worse than both* their arms.

**Why a picture, a network and the paper's scale can differ.** Grafting takes *one*
length per layer; how that length is shared among the layer's coordinates comes with D's
direction. Adam's advantage is mostly *per-coordinate* scaling, so within a layer it
travels with Adam's direction. With "both parameters form one layer" below, this picture
is one layer of two coordinates: Adam's per-coordinate scaling is part of its direction.
With "each parameter is its own layer", M sets each coordinate's step and D gives only
its sign. A network has a few dozen layers of thousands of coordinates, the paper's a
few hundred layers of millions, so which side decides can change with the model, its
scale and the learning rates. The presets *round bowl: magnitude decides* and *curved
valley: direction decides* show one case of each; the reading under the chart is
computed from the paths on screen.
"""


def _apply_preset() -> None:
    """On a new preset: its start point, learning rates that move visibly, and the M, D and
    step count of a preset that names them."""
    preset = PRESETS[st.session_state["toy.problem"]]
    st.session_state["toy.x"], st.session_state["toy.y"] = preset["start"]
    st.session_state["toy.step"] = 0
    for role, name in preset.get("optimizers", {}).items():
        st.session_state[f"toy.{role}"] = name
    if "steps" in preset:
        st.session_state["toy.steps"] = preset["steps"]
        st.session_state["toy.layout"] = "joint"
    for option in ("condition", "noise"):
        if option in preset["defaults"]:
            st.session_state[f"toy.{option}"] = preset["defaults"][option]
    for role in ("magnitude", "direction"):
        name = st.session_state[f"toy.{role}"]
        if name in preset["suggested_lr"]:
            st.session_state[f"toy.{role}.{name}.lr"] = preset["suggested_lr"][name]


@st.cache_data(max_entries=64, show_spinner=False)
def compute(
    problem: str,
    options: tuple,
    magnitude: tuple,
    direction: tuple,
    start: tuple,
    steps: int,
    layout: str,
):
    """The four paths (cached: scrubbing the step slider recomputes nothing)."""
    return grafted_paths(
        make_problem(problem, **dict(options)),
        (magnitude[0], dict(magnitude[1])),
        (direction[0], dict(direction[1])),
        start=start,
        steps=steps,
        layout=layout,
    )


def _frozen(hparams: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in hparams.items()))


def controls() -> tuple:
    """The settings; returns the arguments of :func:`compute`."""
    left, mid, right = st.columns(3, gap="large")
    with left:
        st.markdown("**Problem**")
        st.selectbox(
            "problem",
            list(PRESETS),
            key="toy.problem",
            on_change=_apply_preset,
            format_func=lambda name: PRESETS[name]["title"],
            label_visibility="collapsed",
        )
        problem = st.session_state["toy.problem"]
        options = {}
        if "condition" in PRESETS[problem]["defaults"]:
            options["condition"] = st.slider(
                "condition number κ (how narrow the valley)", 1.0, 100.0, key="toy.condition"
            )
        if "noise" in PRESETS[problem]["defaults"]:
            options["noise"] = st.slider("gradient noise (std)", 0.0, 5.0, key="toy.noise")
            options["seed"] = st.number_input(
                "noise seed", min_value=0, step=1, key="toy.noise_seed"
            )
        a, b = st.columns(2)
        x = a.number_input("start x", key="toy.x", step=0.1, format="%g")
        y = b.number_input("start y", key="toy.y", step=0.1, format="%g")
        steps = st.slider("steps", 10, 300, key="toy.steps")
        layout = st.radio(
            "grafting layers",
            LAYOUTS,
            key="toy.layout",
            format_func=LAYOUT_TEXT.get,
            horizontal=True,
        )
        if layout == "per_coordinate":
            st.caption(
                "With one parameter per layer, M#D moves each coordinate by |Δ_M| in "
                "the sign of Δ_D: only the sign of D's step matters."
            )
    with mid:
        magnitude = forms.optimizer_picker("toy", "magnitude", NATIVE)
    with right:
        direction = forms.optimizer_picker("toy", "direction", NATIVE)
    return (
        problem,
        tuple(sorted(options.items())),
        (magnitude[0], _frozen(magnitude[1])),
        (direction[0], _frozen(direction[1])),
        (x, y),
        int(steps),
        layout,
    )


def _start_from_click() -> None:
    """Apply a click on the paths chart (read before the start widgets are drawn)."""
    event = st.session_state.get("toy.paths")
    points = event["selection"]["points"] if event else []
    if not points or "x" not in points[0]:
        return
    click = (round(float(points[0]["x"]), 3), round(float(points[0]["y"]), 3))
    if click != st.session_state.get("toy.start_click"):  # a selection persists: apply once
        st.session_state["toy.start_click"] = click
        st.session_state["toy.x"], st.session_state["toy.y"] = click
        st.session_state["toy.step"] = 0


def main() -> None:
    page_setup(DEFAULTS)
    st.title("Grafting in 2-D")
    st.markdown(INTRO)
    with st.expander(
        "What the paper claims, what this lab measured, and why a 2-D picture can differ"
    ):
        st.markdown(STORY)
    _start_from_click()
    args = controls()
    try:
        for role, (name, hparams) in zip(("M", "D"), args[2:4]):
            lr = dict(hparams).get("lr")
            if lr is not None and not lr > 0:
                raise ValueError(f"{role} ({name}): the learning rate must be > 0, got {lr}")
        problem = make_problem(args[0], **dict(args[1]))
        paths = compute(*args)
    except (ValueError, TypeError) as error:
        st.error(f"Cannot draw this: {error}")
        return
    st.caption(f"**{PRESETS[args[0]]['title'].capitalize()}.** {problem.about}")
    steps = args[5]
    st.session_state["toy.step"] = min(st.session_state["toy.step"], steps - 1)
    step = st.slider("step (arrows drawn at this step of M#D)", 0, steps - 1, key="toy.step")
    charts.show(
        toy2d_figures.paths_figure(problem, paths, step, clickable=True),
        key="toy.paths",
        on_select="rerun",
        selection_mode="points",
    )
    st.caption("Click anywhere on the contour plot to start the paths from there.")
    st.markdown(
        "**Computed from these paths.** "
        + "  \n".join(toy2d_figures.reading(paths, noisy=problem.noise > 0))
    )
    charts.show(toy2d_figures.curves_figure(paths), key="toy.curves")
    if st.button("Prepare animated HTML for slides", key="toy.prepare"):
        with st.spinner("Building one frame per step…"):
            st.session_state["toy.html"] = toy2d_figures.export_html(problem, paths)
    if st.session_state.get("toy.html"):
        st.download_button(
            "Download HTML (works offline)",
            st.session_state["toy.html"],
            file_name=f"grafting_{problem.name}.html",
            mime="text/html",
            key="toy.download",
        )


main()
