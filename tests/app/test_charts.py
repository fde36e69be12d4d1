"""ui/charts.py: every chart through one function, live ones as an in-place component."""

from __future__ import annotations

import json

import plotly
import pytest
from streamlit.testing.v1 import AppTest

from ui import charts


def test_the_component_folder_holds_its_page_and_the_installed_plotly_js(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = charts.component_dir()
    assert folder == tmp_path / ".cache" / "grafting_lab" / f"live_chart-{plotly.__version__}"
    page = (folder / "index.html").read_text()
    assert '<script src="plotly.min.js">' in page and "streamlit:componentReady" in page
    assert "https:" not in page and "http:" not in page  # nothing from the network
    installed = charts.Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert (folder / "plotly.min.js").read_bytes() == installed.read_bytes()
    written = (folder / "plotly.min.js").stat().st_mtime_ns
    (folder / "index.html").write_text("stale")
    charts.component_dir()  # a second server: the stale page is replaced, plotly.js kept
    assert (folder / "index.html").read_text() == page
    assert (folder / "plotly.min.js").stat().st_mtime_ns == written
    assert not list(folder.glob("*.part"))


def _script() -> None:
    import plotly.graph_objects as go

    from ui import charts

    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[3, 2, 1], name="run"))
    charts.show(fig, key="live", live=True)
    charts.show(fig, key="still")


def test_a_live_chart_sends_its_figure_to_the_component_and_a_still_one_is_a_plotly_chart():
    at = AppTest.from_function(_script, default_timeout=60).run()
    assert not at.exception
    (live,) = at.get("component_instance")
    args = json.loads(live.proto.json_args)
    figure = json.loads(args["spec"])
    assert figure["data"][0]["name"] == "run" and figure["data"][0]["y"] == [3, 2, 1]
    assert args["config"]["displaylogo"] is False and args["config"]["responsive"] is True
    assert args["height"] is None  # the figure has none: the frame takes the drawn height
    (still,) = at.get("plotly_chart")
    assert json.loads(still.proto.spec)["data"][0]["name"] == "run"
    assert still.proto.theme == ""  # the figure's own look, as on the live chart


def test_a_live_chart_refuses_plotly_chart_options():
    with pytest.raises(TypeError, match="on_select"):
        charts.show(None, key="k", live=True, on_select="rerun")
