"""The "Grafting in 2-D" teaching page through AppTest."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from grafting_core.lab.tasks.toy2d import PRESETS
from tests.helpers import ROOT


@pytest.fixture
def page(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFTING_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.syspath_prepend(str(ROOT))
    at = AppTest.from_file(str(ROOT / "pages" / "grafting_2d.py"), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def traces(at: AppTest, index: int = 0) -> dict[str, dict]:
    """The named traces of the page's ``index``-th plotly chart."""
    spec = json.loads(at.get("plotly_chart")[index].proto.spec)
    return {t.get("name"): t for t in spec["data"] if t.get("name")}


def test_every_preset_and_layout_renders(page):
    for problem in PRESETS:
        for layout in ("joint", "per_coordinate"):
            page.selectbox(key="toy.problem").set_value(problem).run()
            page.radio(key="toy.layout").set_value(layout).run()
            assert not page.exception and not page.error, (problem, layout)
            names = traces(page)
            m, d = page.session_state["toy.magnitude"], page.session_state["toy.direction"]
            assert {f"M = {m}", f"D = {d}", f"M#D = {m}#{d}", f"D#M = {d}#{m}"} <= set(names)
            assert any(n.startswith("grafted step") for n in names)
            assert any("Computed from these paths" in m.value for m in page.markdown)
            assert not any("What to look for" in i.value for i in page.info)


def test_a_decides_preset_sets_its_optimizers_and_says_what_the_paths_show(page):
    page.selectbox(key="toy.problem").set_value("direction_decides").run()
    assert page.session_state["toy.magnitude"] == "sign_sgd"
    assert page.session_state["toy.direction"] == "adam"
    assert page.session_state["toy.steps"] == 300
    text = " ".join(m.value for m in page.markdown)
    assert "Both grafts follow their direction" in text
    page.selectbox(key="toy.problem").set_value("magnitude_decides").run()
    text = " ".join(m.value for m in page.markdown)
    assert "Both grafts follow their magnitude" in text
    page.selectbox(key="toy.problem").set_value("quadratic").run()  # the default: level
    text = " ".join(m.value for m in page.markdown)
    assert "Cannot tell" in text and "follow their" not in text


def test_changes_redraw_the_paths(page):
    before = traces(page)["M#D = adam#sgd"]["x"]
    page.selectbox(key="toy.direction").set_value("sign_sgd").run()
    assert "M#D = adam#sign_sgd" in traces(page)
    page.selectbox(key="toy.direction").set_value("sgd").run()
    assert traces(page)["M#D = adam#sgd"]["x"] == before
    page.number_input(key="toy.x").set_value(2.0).run()
    assert traces(page)["M#D = adam#sgd"]["x"] != before
    page.selectbox(key="toy.magnitude").set_value("rmsprop").run()
    assert "M#D = rmsprop#sgd" in traces(page)


def test_step_slider_moves_the_arrows(page):
    arrow = next(t for n, t in traces(page).items() if n.startswith("grafted step"))
    page.slider(key="toy.step").set_value(5).run()
    moved = next(t for n, t in traces(page).items() if n.startswith("grafted step"))
    assert arrow["x"] != moved["x"]


def test_invalid_input_is_refused_with_the_reason(page):
    # A non-finite start cannot be typed (the widget turns it into 0); the engine refuses
    # one anyway (tests/lab/tasks/test_toy2d.py). Learning rates <= 0 are refused here:
    for key, value in (("toy.magnitude.adam.lr", 0.0), ("toy.direction.sgd.lr", -1.0)):
        page.number_input(key=key).set_value(value).run()
        assert not page.exception
        assert page.error and "learning rate must be > 0" in page.error[0].value
        assert not page.get("plotly_chart")
        page.number_input(key=key).set_value(0.01).run()
        assert not page.error and page.get("plotly_chart")


def test_html_export(page):
    page.button(key="toy.prepare").click().run()
    assert not page.exception
    assert page.get("download_button")
