"""The run store's SQLite schema: ``MIGRATIONS[i]`` takes a file from version i to i + 1.

``SQLiteFile`` applies the missing ones when a file is opened (``PRAGMA user_version``
holds the version); a change of schema is a new function appended here, never an edit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


def _v1_initial(conn: sqlite3.Connection) -> None:
    """Version 1: runs, long metrics, per-step norm matrices, artifacts."""
    for sql in (  # one by one: executescript() would COMMIT halfway through the migration
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, name TEXT, kind TEXT NOT NULL, status TEXT NOT NULL,
            config TEXT NOT NULL,          -- JSON
            created REAL NOT NULL,         -- unix seconds, as are ended and heartbeat
            ended REAL, last_step INTEGER, error TEXT, pid INTEGER, host TEXT, heartbeat REAL)""",
        "CREATE INDEX runs_created ON runs (created)",
        """CREATE TABLE metrics (
            run_id TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
            PRIMARY KEY (run_id, step, name)) WITHOUT ROWID""",
        """CREATE TABLE norm_layouts (   -- the layer and field names of a norm matrix
            layout_id INTEGER PRIMARY KEY, run_id TEXT NOT NULL,
            layers TEXT NOT NULL, fields TEXT NOT NULL,   -- JSON lists
            UNIQUE (run_id, layers, fields))""",
        """CREATE TABLE norm_rows (      -- one step: little-endian float64, layers x fields
            run_id TEXT NOT NULL, layout_id INTEGER NOT NULL, step INTEGER NOT NULL,
            data BLOB NOT NULL, UNIQUE (run_id, layout_id, step))""",
        """CREATE TABLE artifacts (
            run_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
            encoding TEXT NOT NULL,        -- bytes | text | json
            data BLOB NOT NULL, created REAL NOT NULL, UNIQUE (run_id, name))""",
    ):
        conn.execute(sql)


def _v2_run_group(conn: sqlite3.Connection) -> None:
    """Version 2: promote the grid group from ``config["group"]`` to an indexed column."""
    conn.execute("ALTER TABLE runs ADD COLUMN run_group TEXT")
    conn.execute(
        "UPDATE runs SET run_group = json_extract(config, '$.group')"
        " WHERE json_valid(config) AND json_type(config, '$.group') = 'text'"
    )
    conn.execute("CREATE INDEX runs_group ON runs (run_group)")


def _v3_arms(conn: sqlite3.Connection) -> None:
    """Version 3: each run's arm in its experiment (``grafting_core.lab.runs.arms``) as columns."""
    for column in ("role", "magnitude_arm", "direction_arm"):
        conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
    conn.execute(  # older grids: the arms are their configs' optimizers
        "UPDATE runs SET magnitude_arm = json_extract(config, '$.magnitude'),"
        " direction_arm = json_extract(config, '$.direction'),"
        " role = CASE WHEN json_extract(config, '$.direction') = '' THEN 'plain' ELSE 'graft' END"
        " WHERE kind = 'grid' AND json_valid(config)"
    )


def _v4_arm_variant(conn: sqlite3.Connection) -> None:
    """Version 4: an arm's variant (the layers a partial graft grafts, a ratio window)."""
    conn.execute("ALTER TABLE runs ADD COLUMN arm_variant TEXT")


def _v5_groups(conn: sqlite3.Connection) -> None:
    """Version 5: what made a group (a comparison's settings), so that it can be continued."""
    conn.execute(
        """CREATE TABLE groups (
            run_group TEXT PRIMARY KEY, kind TEXT NOT NULL,
            request TEXT NOT NULL,         -- JSON
            updated REAL NOT NULL)"""
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_initial,
    _v2_run_group,
    _v3_arms,
    _v4_arm_variant,
    _v5_groups,
]
SCHEMA_VERSION = len(MIGRATIONS)
