"""Every chart of the app goes through ``show``: one look, one toolbar, and live charts
that redraw in place.

A live chart (``live=True``, the charts of the pages' live panels) is a small component: a
frame holding one Plotly chart that takes each new figure with ``Plotly.react`` and draws
only while it is on screen. ``st.plotly_chart`` rebuilds its chart in the browser on every
rerun; at one redraw a second the Graft lab's four charts then cost the browser about twice
what plotly.js itself needs (``bench/chart_cost.py``), CPU that training shares
(BENCHMARKS.md, "The app"). plotly.js comes from the installed plotly package: nothing is
fetched from the network.

Every chart keeps the figure's own look (``figures.LOOK``, as in the notebooks) rather than
Streamlit's theme, which a live chart cannot take: still and live charts look alike.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
import streamlit as st
import streamlit.components.v1 as components

CHART_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
PAGE = Path(__file__).with_name("live_chart") / "index.html"
#: A live chart's frame in the page (Streamlit titles a component's frame by its module and
#: name): what browser tests and benchmarks look for.
LIVE_CHART_FRAME = f'iframe[title="{__name__}.live_chart"]'


def show(fig: go.Figure, *, key: str, live: bool = False, **kwargs: Any) -> Any:
    """Draw ``fig``. ``live``: a chart of a live panel, redrawn every second while its runs
    train; it is drawn in place, in a frame that stays when the runs end, so that the next
    group's first points show at once (a new frame first loads plotly.js).

    ``kwargs`` go to ``st.plotly_chart`` (e.g. ``on_select``); a live chart takes none.
    """
    if live:
        if kwargs:
            raise TypeError(f"a live chart takes no {', '.join(kwargs)}")
        return _live_chart()(
            spec=fig.to_json(),
            height=fig.layout.height,
            config={**CHART_CONFIG, "responsive": True},
            key=key,
            default=None,
        )
    return st.plotly_chart(fig, key=key, config=CHART_CONFIG, theme=None, **kwargs)


@functools.cache
def _live_chart() -> Any:
    """The component, served from a folder holding its page and the installed plotly.js."""
    return components.declare_component("live_chart", path=str(component_dir()))


def component_dir() -> Path:
    """``~/.cache/grafting_lab/live_chart-<plotly version>`` (in the temporary folder when
    the home folder is not writable), filled on first use; writes are atomic (several
    servers may start at once)."""
    name = f"live_chart-{plotly.__version__}"
    try:
        folder = Path.home() / ".cache" / "grafting_lab" / name
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "grafting_lab" / name
        folder.mkdir(parents=True, exist_ok=True)
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    for source in (PAGE, plotly_js):
        target = folder / source.name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            partial = target.with_suffix(f".{os.getpid()}.part")
            shutil.copyfile(source, partial)
            partial.replace(target)
    return folder
