"""Coming back to saved work: a page's recent groups (newest first) and which page made a run.

A page opened without ``?group=`` (a new tab, a bookmark) lists the groups it made before;
a click opens one as if its ``?group=`` link had been followed. The listing is the store's
own ``runs()`` reading, grouped here: no query of its own.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from . import live
from .resources import get_store

#: group-id prefix (the kind a page creates) -> the app's URL path of the page that shows it
PAGE_OF_KIND = {
    "lab": "",  # the Graft lab is the default page: "/"
    "grid": "md-grid",
    "compare": "md-grid",
    "transfer": "transfer",
    "ratios": "ratios",
}
PAGE_TITLES = {
    "": "Graft lab",
    "md-grid": "Grid",
    "transfer": "Schedule transfer",
    "ratios": "Static ratios",
}


def recent_groups(runs: pd.DataFrame, kinds: tuple[str, ...], limit: int = 6) -> pd.DataFrame:
    """The newest ``limit`` groups of ``kinds`` in ``runs`` (``store.runs()``): group,
    created (its newest run), runs, names (its run names, first four), status (counts)."""
    if runs.empty:
        return pd.DataFrame(columns=["group", "created", "runs", "names", "status"])
    mine = runs[runs["group"].fillna("").str.split("-").str[0].isin(kinds)]
    rows = []
    for group, part in mine.groupby("group", sort=False):  # runs() is newest first
        names = list(dict.fromkeys(part["name"].fillna("").iloc[::-1]))
        counts = part["status"].value_counts()
        rows.append(
            {
                "group": group,
                "created": part["created"].max(),
                "runs": len(part),
                "names": ", ".join(names[:4]) + (", …" if len(names) > 4 else ""),
                "status": ", ".join(f"{n} {s}" for s, n in counts.items()),
            }
        )
    table = pd.DataFrame(rows, columns=["group", "created", "runs", "names", "status"])
    return table.sort_values("created", ascending=False, kind="stable").head(limit)


def page_link(group: str) -> str:
    """The app URL (relative) that opens ``group`` on the page that made it; "" if none."""
    kind = group.split("-")[0] if isinstance(group, str) else ""
    if kind not in PAGE_OF_KIND:
        return ""
    return f"./{PAGE_OF_KIND[kind]}?group={group}"


def page_title(group: str) -> str:
    """The title of the page that made ``group`` ("command line" for other groups)."""
    if not isinstance(group, str) or not group:
        return ""
    kind = group.split("-")[0]
    return PAGE_TITLES[PAGE_OF_KIND[kind]] if kind in PAGE_OF_KIND else "command line"


def _open(prefix: str, group: str) -> None:
    live.watch(prefix, group)


def offer(prefix: str, kinds: tuple[str, ...], what: str = "group") -> None:
    """Under a page with nothing open: its recent groups, newest first, each opened by a
    click (the page then shows it as its ``?group=`` link would)."""
    table = recent_groups(get_store().runs(), kinds)
    if table.empty:
        return
    st.markdown(f"**Open a recent {what}** (newest first; all saved runs are on the **Runs** page)")
    for row in table.itertuples():
        when = row.created.tz_convert(None).strftime("%Y-%m-%d %H:%M")
        left, right = st.columns([1, 4], vertical_alignment="center")
        left.button(
            f"Open {when}",
            key=f"{prefix}.recent.{row.group}",
            on_click=_open,
            args=(prefix, row.group),
            help=f"{what} `{row.group}`",
        )
        right.caption(f"{row.names} · {row.runs} runs ({row.status}) · `{row.group}`")
