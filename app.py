"""Grafting Lab, the Streamlit app: the router (pages live in pages/, helpers in ui/).

    streamlit run app.py          # or ./tasks app; runs are saved in $GRAFTING_RUNS_DIR or ./runs

Give each page a ``url_path`` that differs from its file stem. On a fresh server, before
app.py has run once, Streamlit still resolves URLs against the pages/ folder (its legacy
multipage mode): a deep link to a file stem would run that page alone, with the legacy
navigation. With distinct paths the first deep link shows Streamlit's "Page not found"
notice once and then the right page under this navigation (seen in Chromium, 1.67).

Adding a page: write ``pages/<name>.py`` (it starts with ``ui.state.page_setup(DEFAULTS)``,
which draws the shared sidebar) and add one ``st.Page`` line below.
"""

import streamlit as st

st.set_page_config(page_title="Grafting Lab", page_icon=":material/science:", layout="wide")

PAGES = {
    "Train": [
        st.Page("pages/graft_lab.py", title="Graft lab", icon=":material/science:", default=True),
        st.Page("pages/grid.py", title="Grid", icon=":material/grid_on:", url_path="md-grid"),
        st.Page(
            "pages/schedule_transfer.py",
            title="Schedule transfer",
            icon=":material/swap_horiz:",
            url_path="transfer",
        ),
        st.Page(
            "pages/static_ratios.py",
            title="Static ratios",
            icon=":material/tune:",
            url_path="ratios",
        ),
    ],
    "Learn": [
        st.Page(
            "pages/grafting_2d.py",
            title="Grafting in 2-D",
            icon=":material/timeline:",
            url_path="two-d",
        ),
    ],
    "Results": [
        st.Page("pages/runs.py", title="Runs", icon=":material/table_view:", url_path="saved-runs"),
    ],
}

st.navigation(PAGES, position="sidebar").run()
