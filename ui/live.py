"""Live view of a group of runs: cheap polls of the store and the panels that draw them.

Workers write to the store; a page draws its live part with ``redraw_while_live``, a
fragment that redraws itself while a run trains. Metrics and layer norms are read
incrementally into per-session caches, so a poll reads only what was written since the last.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from grafting_core.lab.figures import runs as run_figures

from . import charts
from .resources import get_store, stop_runs

#: What makes markdown of plain text: emphasis, code, links and images ("[" starts both),
#: HTML, tables, strikethrough, LaTeX, and the ":" of an autolinked URL.
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~$:])")
#: Where GFM starts a bare link: "http(s)://" and "www." (any case).
AUTOLINK_START = re.compile(r"(https?|www)", re.IGNORECASE)
TERMINAL = ("finished", "stopped", "diverged", "failed", "interrupted")
#: Live redraws: every second, unless a redraw takes the server (measured) more than
#: REDRAW_SHARE of that (very many or very long runs): then at the first of INTERVALS that
#: keeps it under. The server draws at a low priority (``yield_to_training``) and the browser
#: redraws charts in place (``charts.show``): at one redraw a second the Graft lab costs a
#: training run on the same two cores about 7% (BENCHMARKS.md, "The app").
INTERVALS = (1.0, 2.0, 5.0, 10.0)
REDRAW_SHARE = 0.5
REDRAW_NICE = 10  # the nice value of a thread that draws live charts (yield_to_training)
NORM_FIELDS_SHOWN = ["magnitude_norm", "direction_norm"]
LOSS_UNITS = {
    "classification": "cross-entropy, nats",
    "language": "cross-entropy per character, nats",
    "regression": "mean squared error",
}


def loss_title(task: str, which: str = "training") -> str:
    """Axis title of a loss with its units, e.g. ``training loss (cross-entropy, nats)``."""
    units = LOSS_UNITS.get(task)
    return f"{which} loss ({units})" if units else f"{which} loss"


def group_runs(group: str, *, before: Sequence[str] = ()) -> pd.DataFrame:
    """The group's runs in creation order, with a display ``label`` and a ``progress`` 0..1.

    ``before``: ids of runs outside the group to list first (e.g. a saved source run).
    """
    store = get_store()
    store.mark_interrupted()  # a worker that died (killed, out of memory) leaves "running"
    runs = store.runs(group=group).iloc[::-1]
    if before:
        others = store.runs()
        others = others[others["run_id"].isin(before) & ~others["run_id"].isin(runs["run_id"])]
        runs = pd.concat([others, runs])
    return _labelled(runs.reset_index(drop=True))


def runs_by_id(run_ids: Sequence[str]) -> pd.DataFrame:
    """Like ``group_runs`` for the given runs (in that order), wherever they belong."""
    store = get_store()
    store.mark_interrupted()
    runs = store.runs()
    runs = (
        runs.set_index("run_id")
        .reindex([r for r in run_ids if r in set(runs["run_id"])])
        .reset_index()
    )
    return _labelled(runs)


def _labelled(runs: pd.DataFrame) -> pd.DataFrame:
    names = runs["name"].fillna(runs["run_id"]).astype(str)
    counts = names.groupby(names).cumcount()
    runs["label"] = [n if c == 0 else f"{n} ({c + 1})" for n, c in zip(names, counts)]
    done = runs["last_step"].astype("Float64").fillna(0.0).to_numpy(dtype=float)
    runs["progress"] = (done / runs["config.steps"].astype(float)).clip(0.0, 1.0)
    return runs


def is_active(runs: pd.DataFrame) -> bool:
    """Whether any run of the group is queued or training."""
    return bool((~runs["status"].isin(TERMINAL)).any())


def status_text(run: pd.Series) -> str:
    """``running 120/500``, ``queued``, ``diverged at step 37``, ``failed: <error>`` ..."""
    status, steps = run["status"], int(run["config.steps"])
    step = None if pd.isna(run["last_step"]) else int(run["last_step"])
    if status == "running":
        return "queued (waiting for a free worker)" if step is None else f"running {step}/{steps}"
    if status == "diverged":
        return f"diverged at step {step} (loss or weights became NaN/inf)"
    if status in ("failed", "interrupted"):
        return f"{status}: {run['error']}"
    return f"{status} at step {step}/{steps}"


def literal(text: str) -> str:
    """``text`` shown as typed inside Streamlit markdown: a run name or an error message is
    data, never a link, an image or formatting."""
    escaped = MARKDOWN_SPECIAL.sub(r"\\\1", str(text))
    # Streamlit's markdown links bare URLs and e-mail addresses in the text it has parsed
    # (escapes already resolved): a word joiner (U+2060, invisible) before "http"/"www" and
    # after "@" leaves nothing it recognises as one.
    return AUTOLINK_START.sub("\u2060\\1", escaped).replace("@", "@\u2060")


def progress_panel(runs: pd.DataFrame) -> None:
    """One progress bar per run; diverged and failed runs say so in colour."""
    for _, run in runs.iterrows():
        text = f"**{literal(run['label'])}**: {literal(status_text(run))}"
        if run["status"] == "diverged":
            st.warning(text, icon="⚠️")
        elif run["status"] in ("failed", "interrupted"):
            st.error(text, icon="🛑")
        else:
            st.progress(float(run["progress"]), text=text)


def poll_metrics(runs: pd.DataFrame, cache_key: str) -> pd.DataFrame:
    """All metrics of ``runs`` (the store's long frame), reading only what is new.

    A training run writes each metric in step order, so a poll reads, per run, the steps
    from the oldest of its metrics' last seen steps on and keeps, per metric, the later
    ones. A run read once more after it ended is complete and never read again.
    ``cache_key``: a session key holding a dict (declared in the page's defaults), one key
    per set of runs: runs not in ``runs`` are dropped from it.
    """
    store = get_store()
    cache: dict[str, tuple[pd.DataFrame, bool]] = st.session_state[cache_key]
    drop_cache(runs["run_id"].tolist(), cache_key)
    frames = []
    for run_id, status in zip(runs["run_id"], runs["status"]):
        seen, complete = cache.get(run_id, (None, False))
        if not complete:
            if seen is None or seen.empty or status in TERMINAL:
                seen = store.metrics(run_id)
            else:
                last = seen.groupby("name", observed=True)["step"].max()
                new = store.metrics(run_id, since_step=int(last.min()) - 1)
                new = new[new["step"] > new["name"].map(last).fillna(-1)]
                seen = pd.concat([seen, new], ignore_index=True) if not new.empty else seen
            cache[run_id] = seen, status in TERMINAL
        frames.append(seen)
    if not frames:
        return pd.DataFrame(columns=["run_id", "step", "name", "value"])
    return pd.concat(frames, ignore_index=True)


def poll_norms(
    run_ids: list[str],
    cache_key: str,
    fields: Sequence[str] = tuple(NORM_FIELDS_SHOWN),
    layer: str | None = None,
) -> pd.DataFrame:
    """‖Δ_M‖ and ‖Δ_D‖ (or ``fields``) of ``run_ids`` (run_id column added), of every layer
    or of ``layer`` only, read since the last poll.

    ``cache_key``: a session key holding a dict (declared in the page's defaults); use one
    key per set of ``fields``.
    """
    store = get_store()
    cache: dict[str, pd.DataFrame] = st.session_state[cache_key]
    frames = []
    for run_id in run_ids:
        seen = cache.get(run_id)
        last = int(seen["step"].max()) if seen is not None and not seen.empty else None
        new = store.layer_norms(run_id, fields=list(fields), since_step=last)
        # one byte a row (a run has millions of norm rows; its id as text would be ~30 bytes)
        new = new.assign(run_id=pd.Categorical.from_codes(np.zeros(len(new), "int8"), [run_id]))
        if seen is None or (not new.empty and seen.empty):
            seen = new
        elif not new.empty:
            seen = pd.concat([seen, new], ignore_index=True)
        cache[run_id] = seen
        frames.append(seen if layer is None else seen[seen["layer"] == layer])
    if not frames:
        return pd.DataFrame(columns=["run_id", "step", "layer", "field", "value"])
    return pd.concat(frames, ignore_index=True)


def drop_cache(keep: list[str], cache_key: str) -> None:
    """Forget cached norms of runs no longer shown."""
    cache = st.session_state[cache_key]
    for run_id in [r for r in cache if r not in keep]:
        del cache[run_id]


def steps_of(runs: pd.DataFrame) -> int:
    """The longest run's step count: the x span of the live charts (lines grow across it)."""
    return int(runs["config.steps"].max())


def loss_panel(runs: pd.DataFrame, task: str, *, prefix: str, smoothing: float) -> None:
    """Training loss (left) and validation accuracy or loss (right), one line per run.

    ``prefix``: the page's key prefix; ``<prefix>.metric_cache`` (a declared session key)
    keeps the metrics read so far (``poll_metrics``).
    """
    metrics = poll_metrics(runs, f"{prefix}.metric_cache")
    labels = dict(zip(runs["run_id"], runs["label"]))
    colors = run_figures.run_colors(runs["run_id"].tolist())
    x_max = steps_of(runs)
    left, right = st.columns(2)
    with left:
        if metrics.empty or not (metrics["name"] == "train_loss").any():
            fig = run_figures.empty_figure("waiting for the first steps…", y_title=loss_title(task))
        else:
            fig = run_figures.metric_curves(
                metrics,
                metric="train_loss",
                labels=labels,
                colors=colors,
                smoothing=smoothing,
                title="Training loss (per step)",
                y_title=loss_title(task),
                x_max=x_max,
            )
        charts.show(fig, key=f"{prefix}.loss_chart", live=True)
    with right:
        metric = "val_accuracy" if task != "regression" else "val_loss"
        y_title = (
            "validation accuracy (fraction correct)"
            if metric == "val_accuracy"
            else loss_title(task, "validation")
        )
        if metrics.empty or not (metrics["name"] == metric).any():
            fig = run_figures.empty_figure("waiting for the first evaluation…", y_title=y_title)
        else:
            fig = run_figures.metric_curves(
                metrics,
                metric=metric,
                labels=labels,
                colors=colors,
                title="Validation (held-out data)",
                y_title=y_title,
                x_max=x_max,
            )
        charts.show(fig, key=f"{prefix}.val_chart", live=True)


def watched_group(prefix: str, kind: str) -> str:
    """The URL's ``?group=`` when it is a ``kind`` group, else the session's, else the newest
    ``kind`` group still running ("" when none), which the tab then only looks at: see
    ``busy``."""
    group = st.query_params.get("group", "")
    if not group.startswith(f"{kind}-"):
        group = st.session_state[f"{prefix}.group"]
    # a group this tab only looks at stays looked at when ``watch`` puts it in the URL
    looked_at = st.session_state.get(f"{prefix}.looked_at", "")
    st.session_state[f"{prefix}.adopted"] = not group or group == looked_at
    if not group:
        running = get_store().runs(kind=kind, status="running", flatten_config=False)
        group = running["group"].iloc[0] if not running.empty else ""
        st.session_state[f"{prefix}.looked_at"] = group
    return group or ""


def busy(prefix: str, active: bool) -> bool:
    """Whether Start waits for the page's ``active`` group: only for a group this tab started
    or was linked to. A tab that merely shows another tab's runs keeps Start: two tabs that
    press Start within a second each start their own runs (the second would otherwise find
    the first's runs in progress and drop its click without a word)."""
    return active and not st.session_state.get(f"{prefix}.adopted", False)


def watch(prefix: str, group: str) -> None:
    """Remember ``group`` in the session and the URL (a reloaded tab re-attaches)."""
    st.session_state[f"{prefix}.group"] = group
    if group:
        st.query_params["group"] = group
    elif "group" in st.query_params:
        del st.query_params["group"]


def stop_group(runs: pd.DataFrame) -> None:
    """What the Stop button does: stop the group's runs and say how."""
    stop_runs(runs["run_id"].tolist())
    st.toast("Stopping: queued runs never start, running ones end within 10 steps.")


def attach(
    prefix: str, group: str, runs: pd.DataFrame | None, *, started: bool, what: str = "group"
) -> bool:
    """Re-attach the page to its watched ``group`` (session and URL) and say whether to draw
    it; a group whose runs were all deleted is forgotten, with a note. ``started``: Start was
    just pressed (its runs may not be listed yet). ``what``: the page's word for a group."""
    if group and runs is not None and runs.empty and not started:
        st.info(f"No runs in {what} `{group}` (deleted?). Press Start to train a new {what}.")
        group = ""
    watch(prefix, group)
    return bool(group)


def overall_progress(runs: pd.DataFrame) -> None:
    """One bar for a whole group, plus a line for each run that diverged or failed."""
    done = runs["status"].isin(TERMINAL)
    st.progress(
        float(runs["progress"].mean()) if len(runs) else 0.0,
        text=f"{int(done.sum())} of {len(runs)} runs done, "
        f"{int((runs['status'] == 'running').sum())} running or queued",
    )
    progress_panel(runs[runs["status"].isin(["diverged", "failed", "interrupted"])])


def settings_text(run: pd.Series) -> str:
    """``mnist1d, mlp (width 32, depth 2), 300 steps, batch 64``: what a group trained on."""
    model = run["config.model"] or "default model"
    sizes = ", ".join(
        f"{k} {int(run[f'config.{k}'])}" for k in ("width", "depth") if run[f"config.{k}"]
    )
    data = run["config.custom"] or run["config.dataset"]
    return (
        f"{data}, {model}{f' ({sizes})' if sizes else ''}, {int(run['config.steps'])} "
        f"steps, batch {int(run['config.batch_size'])}"
    )


def refresh_every(runs: pd.DataFrame, active: bool, prefix: str) -> float | None:
    """The live fragment's ``run_every`` (seconds) for a group; None once no run is live.

    ``prefix``: the page's key prefix; ``<prefix>.redraw_seconds`` (a declared session key)
    holds the measured cost of the last redraws (``timed``).
    """
    if not active or runs.empty:
        return None
    cost = redraw_cost(prefix)
    return next((i for i in INTERVALS if cost <= REDRAW_SHARE * i), INTERVALS[-1])


@contextlib.contextmanager
def timed(prefix: str) -> Iterator[None]:
    """Add a redraw's (CPU, wall) seconds to ``<prefix>.redraw_seconds`` (the last few),
    drawing at a lower priority than training (``yield_to_training``)."""
    yield_to_training()
    cpu, wall = time.thread_time(), time.perf_counter()
    yield
    key = f"{prefix}.redraw_seconds"
    took = (time.thread_time() - cpu, time.perf_counter() - wall)
    st.session_state[key] = [*st.session_state.get(key, [])[-2:], took]


def redraw_cost(prefix: str) -> float:
    """The CPU seconds a live redraw costs the server: the least of the last three, 0 before
    there are three (one slow redraw, such as a session's first with its imports, changes
    nothing). CPU, not wall time: a redraw that waited while training had every core did
    not cost more."""
    last = st.session_state.get(f"{prefix}.redraw_seconds") or []
    return min(cpu for cpu, _ in last) if len(last) == 3 else 0.0


def redraw_wait(prefix: str) -> float:
    """The wall seconds of the last live redraw beyond its CPU time: how long it waited for a
    core (training has priority)."""
    last = st.session_state.get(f"{prefix}.redraw_seconds") or []
    return max(0.0, last[-1][1] - last[-1][0]) if last else 0.0


def yield_to_training() -> None:
    """Lower this script thread's priority (nice ``REDRAW_NICE``) for good.

    Where the server, the browser and the workers share a few cores, a redraw then waits
    for a free core instead of taking it from a training run (measured: BENCHMARKS.md, "The
    app"). Linux only (a thread's nice value); elsewhere nothing changes. Worker processes
    do not inherit it: the executor starts them from a thread of its own.
    """
    tid = threading.get_native_id()
    with contextlib.suppress(AttributeError, OSError):  # no getpriority, or not Linux
        if sys.platform == "linux" and os.getpriority(os.PRIO_PROCESS, tid) < REDRAW_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, REDRAW_NICE)


def redraw_while_live(
    prefix: str,
    read: Callable[[], pd.DataFrame],
    active: bool,
    draw: Callable[[pd.DataFrame], Any],
    is_live: Callable[[pd.DataFrame], bool] = is_active,
) -> None:
    """Draw ``draw(read())`` in a fragment that redraws itself while a run is ``active``:
    every second, less often only if a redraw costs too much (``refresh_every``).

    ``read``: the runs that decide the cadence (e.g. ``lambda: group_runs(group)``); nothing
    is drawn while it is empty. ``prefix``: the page's key prefix (``<prefix>.redraw_seconds``
    is a declared session key). ``is_live``: whether the group is still live, asked at each
    redraw (default: a run is queued or training; a comparison adds "more runs are coming").
    """
    every = refresh_every(read(), active, prefix)

    @st.fragment(run_every=every)
    def panel() -> None:
        with timed(prefix):
            runs = read()
            if runs.empty:
                return
            draw(runs)
        finish_redraw(runs, every, prefix, is_live)

    panel()


def finish_redraw(
    runs: pd.DataFrame,
    every: float | None,
    prefix: str,
    is_live: Callable[[pd.DataFrame], bool] = is_active,
) -> None:
    """The last call of a live fragment: say how often it redraws, then rerun the whole page
    when that should change: the group ended (``is_live`` says no: polling off, Start back
    on), or redraws got cheaper or dearer."""
    if every is None:
        return
    cost = redraw_cost(prefix)
    slower = (
        ""
        if every == INTERVALS[0]
        else (
            f" (not every second: redraws would keep the server busy over "
            f"{REDRAW_SHARE:.0%} of the time, and training shares its CPU)"
        )
    )
    waited = redraw_wait(prefix)
    busy = (
        f" The last redraw waited {waited:.1f} s for a free core: while training uses "
        "every core it has priority, and the charts update less often."
        if waited > 0.5 * every
        else ""
    )
    st.caption(
        f"Live: redrawn every {every:g} s{slower}; a redraw takes the server "
        f"{cost:.2f} s of CPU, at a lower priority than training.{busy}"
    )
    if refresh_every(runs, is_live(runs), prefix) != every:
        st.rerun()


def start_stop(
    prefix: str, *, disabled: bool, active: bool, why: str | None = None
) -> tuple[bool, bool, st.delta_generator.DeltaGenerator]:
    """The Start and Stop buttons of a page, and the rest of their row for one more widget.

    Start is disabled (with ``why`` as its tooltip) while ``disabled``; Stop while nothing
    of the page's is ``active``.
    """
    col_start, col_stop, rest = st.columns([1, 1, 10], vertical_alignment="center")
    start = col_start.button(
        "Start",
        type="primary",
        key=f"{prefix}.start",
        disabled=disabled,
        help=why if disabled else None,
    )
    stop = col_stop.button("Stop", key=f"{prefix}.stop", disabled=not active)
    return start, stop, rest


def page_skeleton(
    prefix: str,
    kind: str,
    *,
    start: Callable[[], str],
    draw: Callable[[str, bool], None],
    empty: Callable[[], None],
    what: str = "group",
    why: str = "Stop the runs in progress first",
    place: Callable[[], object] | None = None,
    still_coming: Callable[[str], bool] = lambda group: False,
    stop: Callable[[str, pd.DataFrame | None], None] | None = None,
) -> st.delta_generator.DeltaGenerator:
    """What every page that trains does, once: watch its group (URL, session, else the newest
    running one), Start and Stop, re-attach, and draw the group while it is live.

    ``start()`` starts the page's runs and returns their group (a ValueError or TypeError is
    said as "Not started: …"); ``draw(group, active)`` draws a watched group; ``empty()``
    fills the page when nothing is watched; ``place`` a container for the buttons;
    ``still_coming(group)``: more runs are on their way (a comparison between phases);
    ``stop(group, runs)`` replaces the default Stop (the group's runs). Returns the rest of
    the buttons' row, for one more widget."""
    group = watched_group(prefix, kind)
    runs = group_runs(group) if group else None
    active = bool(group) and (still_coming(group) or (runs is not None and is_active(runs)))
    with place() if place else st.container():
        pressed, stopped, rest = start_stop(
            prefix, disabled=busy(prefix, active), active=active, why=why
        )
    if pressed:
        try:
            group = start()
        except (ValueError, TypeError) as error:
            st.error(f"Not started: {error}")
        else:
            watch(prefix, group)
            st.rerun()  # drawn again as running: Start off, Stop on, live panel
    if stopped and group:
        (stop or (lambda _, shown: stop_group(shown)))(group, runs)
    started = pressed or (bool(group) and still_coming(group))
    if attach(prefix, group, runs, started=started, what=what):
        draw(group, active)
    elif not group:
        empty()
    return rest
