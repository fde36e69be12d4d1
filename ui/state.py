"""Session state and the shared sidebar: every page starts with ``page_setup(defaults)``.

Widget keys are ``<page>.<name>`` (``lab.steps``, ``runs.search``) and shared choices are
``shared.<name>``. Each page declares its keys with their defaults in one dict; ``init_state``
is the one place that creates session keys. A page works standalone (AppTest runs
``pages/x.py`` alone) and under ``app.py``'s navigation alike.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st
import torch

from .resources import get_jobs, get_store

SHARED_DEFAULTS: dict[str, Any] = {
    "shared.device": "auto",  # where new runs train: auto (CUDA when present) | cpu | cuda
    "shared.executor": "local",  # local worker processes | dask (the scheduler below)
    "shared.scheduler": "",  # a Dask scheduler's address, tcp://HOST:8786
}
EXECUTORS = {"local": "this machine", "dask": "a Dask cluster"}
_DECLARED: dict[str, None] = {}  # every key any page declared, in this server process


def init_state(defaults: Mapping[str, Any]) -> None:
    """Give each key its default once per session; keep declared values across pages.

    Streamlit drops a widget's value when a run does not draw the widget (another page is
    shown); re-assigning every declared key each run keeps the user's choices (the
    documented workaround). Only value widgets may be declared here, never buttons.
    """
    _DECLARED.update(dict.fromkeys(defaults))
    for key, value in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = copy.deepcopy(value)  # no list or dict shared by sessions
    for key in _DECLARED:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def keep_valid(key: str, options: Sequence[Any], default: Any) -> None:
    """Reset ``key`` to ``default`` when its value is no longer among ``options``."""
    value = st.session_state.get(key)
    if isinstance(value, list):
        kept = [v for v in value if v in options]
        st.session_state[key] = kept if kept else default
    elif value not in options:
        st.session_state[key] = default


def device_options() -> list[str]:
    """Devices the user may pick here: auto and cpu, plus cuda when one is present."""
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def sidebar() -> None:
    """Shared controls under the page navigation: device, and where runs are stored."""
    store = get_store()
    with st.sidebar:
        keep_valid("shared.device", device_options(), "auto")
        st.selectbox(
            "Device for new runs",
            device_options(),
            key="shared.device",
            help="auto = the CUDA GPU when one is present, else the CPU.",
        )
        if st.session_state["shared.device"] == "auto":
            st.caption(
                "auto → " + ("CUDA GPU" if torch.cuda.is_available() else "CPU (no CUDA GPU found)")
            )
        st.radio(
            "New runs train on",
            list(EXECUTORS),
            format_func=EXECUTORS.get,
            key="shared.executor",
            horizontal=True,
            help="A Dask cluster's workers train the runs and stream what they record "
            "to this server, which alone writes the run store (README: point the "
            "lab at a cluster).",
        )
        if st.session_state["shared.executor"] == "dask":
            st.text_input(
                "Dask scheduler",
                key="shared.scheduler",
                placeholder="tcp://HOST:8786",
                help="Start one with `dask scheduler`, and workers with "
                "`dask worker tcp://HOST:8786 --nthreads 1`.",
            )
            if not st.session_state["shared.scheduler"].strip():
                st.error("Dask scheduler: enter its address (tcp://HOST:8786) to train there.")
                st.stop()
        try:
            jobs = get_jobs()
        except ConnectionError as error:  # nothing is started while it cannot be reached
            st.error(str(error))
            st.stop()
        runs = store.runs(flatten_config=False)
        running = int((runs["status"] == "running").sum())
        on = (
            f", on {jobs.executor.scheduler}"
            if st.session_state["shared.executor"] == ("dask")
            else ""
        )
        st.caption(
            f"Run store: `{store.root}`  \n{len(runs)} runs saved, {running} running "
            f"({jobs.max_workers} at a time{on})"
        )


def page_setup(defaults: Mapping[str, Any] | None = None) -> None:
    """First call of every page: layout, session keys (shared + the page's), sidebar."""
    st.set_page_config(layout="wide")
    init_state({**SHARED_DEFAULTS, **(defaults or {})})
    sidebar()
