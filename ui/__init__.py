"""Streamlit helpers shared by ``app.py`` and the pages (the engine itself knows no UI).

- ``state``: session keys (one initialiser), the shared sidebar, ``page_setup``;
- ``resources``: the run store and the worker-process executor, one per server process;
- ``forms``: optimizer and run-settings widgets that return validated ``RunConfig`` parts;
- ``live``: incremental polls of a run group and its live panels.
"""
