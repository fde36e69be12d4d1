"""Grafting Lab, the Streamlit app: the router (pages live in pages/, helpers in ui/).

    streamlit run app.py          # or ./tasks app; runs are saved in $GRAFTING_RUNS_DIR or ./runs

Adding a page: write ``pages/<name>.py`` (it starts with ``ui.state.page_setup(DEFAULTS)``,
which draws the shared sidebar) and add one ``st.Page`` line below.
"""

import streamlit as st

st.set_page_config(page_title="Grafting Lab", page_icon=":material/science:", layout="wide")

PAGES = {
    "Train": [
        st.Page("pages/graft_lab.py", title="Graft lab", icon=":material/science:",
                default=True),
    ],
    "Results": [
        st.Page("pages/runs.py", title="Runs", icon=":material/table_view:", url_path="runs"),
    ],
}

st.navigation(PAGES, position="sidebar").run()
