"""The app in a real browser: started the way the README says, driven with Playwright.

``./tasks app`` serves the app on a free port with a temporary run store; Debian's
chromium (headless) trains a short Graft lab experiment and waits for its live charts,
then opens every page of the navigation and saves a screenshot of each under
``test-artifacts/screenshots/`` (the README's pictures in docs/screenshots/ are copies).
The store also holds a small grid, schedule transfer and static-ratio experiment made
through the engine before the server starts, so that those pages are shown with results.
On the Grid page it then clicks through a tiny tuned comparison and waits for its verdicts.

    .venv/bin/python -m pytest tests/app/test_browser.py -m browser
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from grafting_core.lab.experiments.compare import read_comparison
from grafting_core.lab.experiments.comparison_reading import graft_name
from grafting_core.lab.experiments.grid import grid
from grafting_core.lab.experiments.static_ratios import static_ratio_experiment
from grafting_core.lab.experiments.transfer import schedule_transfer
from grafting_core.lab.experiments.verdict import label_words
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import CHROMIUM, ROOT, enter_number, ready, serve
from ui.charts import LIVE_CHART_FRAME as LIVE_CHART

SHOTS = ROOT / "test-artifacts" / "screenshots"
VIEWPORT = {"width": 1400, "height": 4000}  # tall: the app scrolls inside its own container
RESULT_PAGES = {  # url path -> (page title, live charts it shows with results)
    "md-grid": ("Grid", 3),  # the heatmap, and the curves in the (closed) expander
    "transfer": ("Schedule transfer", 4),
    "ratios": ("Static ratios", 4),
}
EXPERIMENT = {"width": 32, "steps": 300, "eval_every": 50, "eval_examples": 500}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium "
        "(apt-get install chromium; ./tasks test installs it)",
    ),
]


def _experiments(root: Path) -> dict[str, str]:
    """A grid, a schedule transfer and a static-ratio experiment in the store at ``root``."""
    store = RunStore(root)
    base = RunConfig(**EXPERIMENT)
    choice = {name: LAB_OPTIMIZERS[name] for name in ("sgd", "adam", "adagrad")}
    groups = {"md-grid": grid(store, base, choice)[0]}
    groups["transfer"] = schedule_transfer(
        store, base, ("adam", choice["adam"]), ("sgd", choice["sgd"])
    )[0]
    groups["ratios"] = static_ratio_experiment(
        store, base, ("adam", choice["adam"]), window=(30, 150), sgd_lrs=(0.03, 0.3)
    )[0]
    store.close()
    return groups


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """``./tasks app`` with stored experiments; yields (url, experiment groups, server log,
    the app's run store folder)."""
    runs = tmp_path_factory.mktemp("browser_runs")
    groups = _experiments(runs)
    with serve(runs) as (url, _, log):
        yield url, groups, log, runs


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                # this machine's network is closed: no background connections to try
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


def _shown(page, title: str) -> None:
    """Wait until the page ``title`` of the navigation has run and replaced the last one, and
    its plotly charts are drawn (the browser loads plotly.js when a page first needs it)."""
    main = page.locator('[data-testid="stMainBlockContainer"]')
    expect(main.get_by_role("heading", level=1, name=title)).to_be_visible(timeout=60_000)
    ready(page)
    expect(page.locator('[data-stale="true"]')).to_have_count(0, timeout=60_000)
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
    for loading in (
        '[data-testid="stSkeleton"]',  # a chart whose code is still loading
        '[data-testid="stPlotlyChart"]:not(:has(.main-svg))',
    ):
        expect(page.locator(loading)).to_have_count(0, timeout=30_000)


def _screenshot(page, name: str, *, below=None) -> Path:
    """The viewport cropped to the page's content: all of it with the sidebar, or the main
    column from the element ``below`` down (a results section)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    main = page.locator('[data-testid="stMainBlockContainer"]').bounding_box()
    bottom = min(VIEWPORT["height"], int(main["y"] + main["height"]) + 24)
    clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": bottom}
    if below is not None:
        top = int(below.bounding_box()["y"]) - 16
        clip = {"x": int(main["x"]), "y": top, "width": int(main["width"]), "height": bottom - top}
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), clip=clip)
    return path


def _expect_or_explain(page, log: Path, check) -> None:
    """Run the Playwright expectation ``check``; when it fails, say what the page showed
    and what the server printed (a CI log is all there is to read afterwards)."""
    try:
        check()
    except AssertionError as error:
        status = page.locator(
            ", ".join(
                f'[data-testid="{kind}"]'
                for kind in ("stProgress", "stAlert", "stException", "stToast")
            )
        ).all_inner_texts()
        raise AssertionError(
            "\n".join(
                [
                    "the page's progress bars, messages and errors:",
                    *status,
                    "the server printed (tail):",
                    log.read_text()[-3000:],
                    str(error),
                ]
            )
        ) from None


def _until_shown(page, log: Path, text: str) -> None:
    """Wait up to 3 minutes for ``text`` on the page (runs training), explaining a timeout."""
    _expect_or_explain(
        page,
        log,
        lambda: expect(page.get_by_text(text, exact=False)).to_be_visible(timeout=180_000),
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def test_graft_lab_trains_live_and_every_page_renders(app, browser):
    url, groups, log, _ = app
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    ready(page)
    expect(page.get_by_role("heading", name="Graft lab")).to_be_visible()

    for label, value in (("Width", "16"), ("Steps", "400")):
        enter_number(page, label, value)
    for label, value in (("Width", "16"), ("Steps", "400")):  # none undone by a later rerun
        expect(page.get_by_label(label, exact=True)).to_have_value(value)
    page.get_by_role("button", name="Start", exact=True).click()

    # Live: while the workers train, the loss chart (a chart redrawn in place) draws lines.
    live = page.frame_locator(LIVE_CHART).first
    _expect_or_explain(
        page,
        log,
        lambda: expect(live.locator(".scatterlayer .trace path.js-line").first).to_be_attached(
            timeout=180_000
        ),
    )
    _expect_or_explain(
        page,
        log,
        lambda: expect(page.get_by_text(re.compile(r"finished at step 400/400"))).to_have_count(
            4, timeout=180_000
        ),
    )
    # Ended: the same chart holds the whole runs, one line per run.
    ready(page)
    loss = page.frame_locator(LIVE_CHART).first
    legend = loss.locator(".legend .traces .legendtext")
    expect(legend).to_have_text(["adam", "sgd", "adam#sgd", "sgd#adam"])
    lines = loss.locator(".scatterlayer .trace path.js-line")
    expect(lines).to_have_count(4)
    for i in range(4):  # every run's line has data (a path with many points)
        assert len(lines.nth(i).get_attribute("d") or "") > 100
    _screenshot(page, "graft-lab")
    with page.expect_download() as download:  # the chart's camera button saves a PNG
        loss.locator('.modebar-btn[data-title="Download plot as a PNG"]').click()
    assert download.value.suggested_filename.endswith(".png")

    # Every page of the navigation, including pages added later.
    links = page.locator('[data-testid="stSidebarNavLink"]')
    titles = [links.nth(i).inner_text().strip().splitlines()[-1] for i in range(links.count())]
    assert len(titles) >= 5 and "Runs" in titles
    for i, title in enumerate(titles):
        links.nth(i).click()
        _shown(page, title)
        if _slug(title) != "graft-lab":
            _screenshot(page, _slug(title))

    # The experiment pages with the stored experiments (deep links re-attach a group).
    for path, group in groups.items():
        title, charts = RESULT_PAGES[path]
        page.goto(f"{url}/{path}?group={group}")
        ready(page)
        if page.get_by_text("Page not found").count():  # first deep link of a fresh server
            page.goto(f"{url}/{path}?group={group}")
        _shown(page, title)
        expect(page.frame_locator(LIVE_CHART).first.locator(".main-svg").first).to_be_visible(
            timeout=30_000
        )
        expect(page.locator(LIVE_CHART)).to_have_count(charts, timeout=30_000)
        # the page's first Start (the Static ratios page has a second one, for its study)
        start = page.get_by_role("button", name="Start", exact=True).first
        _screenshot(page, f"{_slug(title)}-results", below=start)
        if path == "md-grid":  # live charts in a closed expander are drawn when it opens
            page.get_by_text("Every run of the grid").click()
            for i in (1, 2):
                expect(
                    page.frame_locator(LIVE_CHART)
                    .nth(i)
                    .locator(".scatterlayer path.js-line")
                    .first
                ).to_be_visible(timeout=30_000)
    page.close()


#: a graft's tick on the verdict figure: its name and its judged verdict (verdict.LABELS)
VERDICT_TICK = (
    r"(adam#sgd|sgd#adam)\s*((like|closer to) [MD] \(\w+\)|between|worse than both"
    r"|better than both|cannot tell)"
)
TUNED = {
    "Width": "16",
    "Steps": "40",
    "Sweep points": "2",
    "Extensions": "0",
    "Halve at (% of steps)": "0",  # with the two text fields and the control below: the lr
}  # alone on the reporting seeds, 12 runs (the protocol's search is AppTest-checked)


def run_tuned_comparison(page, url: str, log: Path) -> None:
    """On the Grid page: a tuned comparison of sgd and adam (2 lrs each, 2 seeds, 12 tiny
    runs) started by clicks, until its verdicts are drawn; screenshot of its results."""
    page.goto(f"{url}/md-grid")
    ready(page)
    if page.get_by_text("Page not found").count():  # first deep link of a fresh server
        page.goto(f"{url}/md-grid")
    _shown(page, "Grid")
    page.get_by_text("Tuned comparison (each lr swept)").click()
    ready(page)
    page.get_by_role("button", name="Remove adagrad").click()
    ready(page)
    for label, value in TUNED.items():
        enter_number(page, label, value)
    for label in ("Warm-ups searched (% of steps)", "Tuning seeds"):
        field = page.get_by_label(label, exact=True)
        field.fill("")
        field.press("Enter")
        ready(page)
    page.get_by_text("Controls", exact=True).click()
    ready(page)
    seeds = page.get_by_label("Seeds", exact=True)
    seeds.fill("0, 1")
    seeds.press("Enter")
    expect(
        page.get_by_text("= 8 sweep runs, then 2 grafts × 2 seeds: 12 runs", exact=False)
    ).to_be_visible(timeout=30_000)
    start = page.get_by_role("button", name="Start", exact=True)
    start.click()
    _until_shown(page, log, "grafts at M's tuned lr: 4 of 4 done")
    expect(start).to_be_enabled(timeout=30_000)  # the comparison has ended
    ready(page)
    # 2 sweeps, the verdicts and the positions with their CIs
    expect(page.locator(LIVE_CHART)).to_have_count(4, timeout=30_000)
    positions = page.frame_locator(LIVE_CHART).nth(3).locator(".ytick text")
    _expect_or_explain(page, log, lambda: expect(positions).to_have_count(2, timeout=30_000))
    verdicts = page.frame_locator(LIVE_CHART).nth(2).locator(".xtick text")
    _expect_or_explain(page, log, lambda: expect(verdicts).to_have_count(2, timeout=30_000))
    for text in verdicts.all_text_contents():  # SVG text: no inner text
        assert re.fullmatch(VERDICT_TICK, text), text
    for i in (0, 1):  # each sweep draws its two lrs' means
        expect(
            page.frame_locator(LIVE_CHART).nth(i).locator(".scatterlayer .trace .point")
        ).not_to_have_count(0)
    _screenshot(page, "grid-tuned-results", below=start)


def assert_page_shows_the_engines_verdicts(page, runs: Path) -> None:
    """What the browser shows under each graft is what the engine reads from the store the
    clicks trained into (``read_comparison``: the newest comparison's verdicts), not merely
    a verdict-shaped text."""
    store = RunStore(runs)
    try:
        compared = store.runs(kind="compare")
        result = read_comparison(store, compared.sort_values("created")["group"].iloc[-1])
    finally:
        store.close()
    expected = sorted(
        f"{graft_name(m, d, g)}{label_words(label, m, d)}"
        for m, d, g, label in zip(
            result.verdicts["magnitude"],
            result.verdicts["direction"],
            result.verdicts["grafted"],
            result.verdicts["label"],
        )
    )
    assert len(expected) == 2  # adam#sgd and sgd#adam
    ticks = page.frame_locator(LIVE_CHART).nth(2).locator(".xtick text").all_text_contents()
    assert sorted(t.replace("\u00a0", " ").strip() for t in ticks) == expected


def continue_tuned_comparison(page, log: Path) -> None:
    """On the Grid page of a finished comparison: Continue with a third seed, until the
    grafts of all three have trained; screenshot of the results and the Continue form."""
    seeds = page.get_by_label("Seeds after continuing", exact=True)
    expect(seeds).to_have_value("0, 1, 2, 3")
    seeds.fill("0, 1, 2")
    seeds.press("Enter")
    expect(page.get_by_text("Adding 2 trains at least 6 new runs", exact=False)).to_be_visible(
        timeout=30_000
    )
    page.get_by_role("button", name="Continue", exact=True).click()
    _until_shown(page, log, "grafts at M's tuned lr: 6 of 6 done")
    ready(page)
    expect(page.get_by_text("seeds 0, 1, 2.", exact=False)).to_be_visible(timeout=30_000)
    expect(page.get_by_label("Seeds after continuing", exact=True)).to_have_value("0, 1, 2, 3, 4")
    expect(page.get_by_text("Seeds 0, 1, 2 are trained. Adding 3, 4", exact=False)).to_be_visible()
    _screenshot(page, "grid-tuned-continued", below=page.get_by_text("Verdicts: is M#D"))


def graft_tuned_comparison_at_other_lrs(page, log: Path) -> None:
    """On the Grid page of a finished comparison: its first graft trained again at the two
    lrs of M the form offers, until their figure draws three lrs; screenshot of it."""
    lrs = page.get_by_label(re.compile(r"^\w+'s lrs$"))
    expect(lrs).to_have_count(1, timeout=30_000)
    page.get_by_role("button", name="Train at these lrs", exact=True).click()
    _until_shown(page, log, "at other lrs of M")
    ready(page)
    expect(page.locator(LIVE_CHART)).to_have_count(5, timeout=30_000)  # + the lrs' figure
    line = page.frame_locator(LIVE_CHART).nth(4).locator(".scatterlayer .trace").first
    _expect_or_explain(
        page, log, lambda: expect(line.locator(".point")).to_have_count(3, timeout=120_000)
    )
    ready(page)
    _screenshot(page, "grid-graft-lrs", below=page.get_by_text("at other lrs of M").first)


def test_grid_page_runs_a_tuned_comparison_and_shows_its_verdicts(app, browser):
    url, _, log, runs = app
    page = browser.new_page(viewport=VIEWPORT)
    run_tuned_comparison(page, url, log)
    assert_page_shows_the_engines_verdicts(page, runs)
    continue_tuned_comparison(page, log)
    graft_tuned_comparison_at_other_lrs(page, log)
    page.close()
