"""Persistent run store: every run of the lab in one SQLite file (WAL mode).

A run keeps its full config (JSON), status, metrics, per-layer norm trajectories and
artifacts (static ratios, recorded schedules, checkpoints); readers get pandas DataFrames.
Many processes (grid workers, the app) may write at once (the SQLite plumbing, one short
transaction per write with retries while locked, is ``sqlite_file.SQLiteFile``).
A run whose writer died (SIGKILL, crash) is found on the next open by its pid + host and
marked "interrupted". The schema is versioned (``PRAGMA user_version``); the migrations of
``store_schema`` bring older files up to date on open.

    store = RunStore()                  # $GRAFTING_RUNS_DIR or ./runs; RunStore("dir") to choose
    run_id = store.create_run({"lr": 0.1}, name="adam#sgd", group="grid-1")
    store.log_metrics(run_id, 10, {"loss": 0.52})
    store.set_status(run_id, "finished")
    store.metrics(run_id)               # long frame: run_id, step, name, value
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np  # comes with pandas
import pandas as pd

from grafting_core.lab.store.schema import MIGRATIONS
from grafting_core.lab.store.sqlite_file import SQLiteFile

STATUSES = ("running", "finished", "stopped", "diverged", "failed", "interrupted")
RUNS_DIR_ENV = "GRAFTING_RUNS_DIR"  # overrides the default ./runs
DB_FILENAME = "runs.sqlite"


def default_runs_dir() -> Path:
    """The store directory: ``$GRAFTING_RUNS_DIR`` when set, else ``./runs``."""
    env = os.environ.get(RUNS_DIR_ENV)
    return Path(env).expanduser() if env else Path.cwd() / "runs"


_RUN_SQL = (
    "SELECT run_id, name, kind, run_group, role, magnitude_arm, direction_arm, arm_variant,"
    " status, created, ended, last_step, error, pid, host, heartbeat, config FROM runs"
)
_RUN_DTYPES = {  # the columns of runs(), in _RUN_SQL order
    "run_id": "str", "name": "str", "kind": "str", "group": "str", "role": "str",
    "magnitude_arm": "str", "direction_arm": "str", "arm_variant": "str", "status": "str",
    "created": "float64", "ended": "float64", "last_step": "Int64", "error": "str",
    "pid": "Int64", "host": "str", "heartbeat": "float64", "config": "object",
}  # fmt: skip
_TIME_COLUMNS = ("created", "ended", "heartbeat")
_METRIC_DTYPES = {"run_id": "str", "step": "int64", "name": "str", "value": "float64"}


# --- helpers ----------------------------------------------------------------------------------


def _unknown(run_id: str) -> KeyError:
    return KeyError(f"unknown run id: {run_id!r}")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"Invalid status: {status!r}; allowed: {', '.join(STATUSES)}")


def _pid_alive(pid: int) -> bool:
    """True if a live (non-zombie) process with this pid exists on this machine."""
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would kill it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for us
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _to_json(value: Any, what: str) -> str:
    """JSON text of ``value`` (paths and numpy/torch scalars allowed); TypeError names ``what``."""

    def fallback(obj: Any) -> Any:
        if isinstance(obj, Path):
            return str(obj)
        if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):
            return obj.item()
        raise TypeError(f"value of type {type(obj).__name__} is not JSON-serializable: {obj!r}")

    try:
        return json.dumps(value, default=fallback)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serializable: {exc}") from exc


def _flatten(config: dict, prefix: str = "config.") -> dict[str, Any]:
    """Leaves of a nested config as dotted keys; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def _names(layouts: Iterable[tuple[int, list[str], list[str]]]) -> tuple[list[str], list[str]]:
    """Union of the layer and field names of several norm layouts, in first-seen order."""
    layers: dict[str, None] = {}
    fields: dict[str, None] = {}
    for _, lay, fie in layouts:
        layers.update(dict.fromkeys(lay))
        fields.update(dict.fromkeys(fie))
    return list(layers), list(fields)


def _frame(rows: Iterable[Sequence[Any]], dtypes: dict[str, str]) -> pd.DataFrame:
    """A DataFrame with exactly these columns and dtypes, also when ``rows`` is empty."""
    return pd.DataFrame(list(rows), columns=list(dtypes)).astype(dtypes)


def _timestamp(seconds: float | None) -> pd.Timestamp | None:
    return None if seconds is None else pd.Timestamp(seconds, unit="s", tz="UTC")


# --- the store --------------------------------------------------------------------------------


class RunStore(SQLiteFile):
    """Runs, metrics, layer norms and artifacts in ``<root>/runs.sqlite``, safe across processes.

    One SQLite connection per thread (opened anew in a forked child); every write is one short
    transaction. Build one per process and share it between threads.
    """

    def __init__(self, root: str | Path | None = None, *, readonly: bool = False) -> None:
        self.root = Path(root).expanduser() if root is not None else default_runs_dir()
        if readonly and not (self.root / DB_FILENAME).is_file():
            raise FileNotFoundError(f"no run store at {self.root}")
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname()
        super().__init__(self.root / DB_FILENAME, MIGRATIONS, readonly=readonly)
        if not readonly:  # a reader leaves runs whose writer died to the next writer
            self.mark_interrupted()

    @staticmethod
    def _require_run(conn: sqlite3.Connection, run_id: str) -> None:
        """Raise KeyError naming ``run_id`` if the store has no such run."""
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise _unknown(run_id)

    def _update_run(self, sql: str, params: Sequence[Any], run_id: str) -> None:
        """One UPDATE of a run's row; KeyError if no run has this id."""
        if self._write(lambda conn: conn.execute(sql, (*params, run_id)).rowcount) == 0:
            raise _unknown(run_id)

    # runs

    def create_run(
        self,
        config: dict,
        *,
        name: str | None = None,
        kind: str = "train",
        group: str | None = None,
        run_id: str | None = None,
        arm: tuple[str, str, str, str] | None = None,
    ) -> str:
        """Add a "running" run owned by this process; return its id (e.g. 20261124-221502-3fa9).

        ``arm`` is the run's (role, magnitude label, direction label, variant) in its
        experiment (``grafting_core.lab.runs.arms``).
        """
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        config_json, now = _to_json(config, "config"), time.time()
        role, magnitude_arm, direction_arm, variant = arm or (None, None, None, None)

        def insert(conn: sqlite3.Connection) -> str:
            for _ in range(100):  # a random suffix may collide when many runs start at once
                rid = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
                row = (
                    rid,
                    name,
                    kind,
                    group,
                    role,
                    magnitude_arm,
                    direction_arm,
                    variant,
                    "running",
                    config_json,
                    now,
                    os.getpid(),
                    self.host,
                )
                try:
                    conn.execute(
                        "INSERT INTO runs (run_id, name, kind, run_group, role, magnitude_arm,"
                        " direction_arm, arm_variant, status, config, created, pid, host,"
                        " heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*row, now),
                    )
                    return rid
                except sqlite3.IntegrityError:
                    if run_id is not None:
                        raise ValueError(f"run id {run_id!r} already exists") from None
            raise RuntimeError("could not find a free run id")

        return self._write(insert)

    def set_status(
        self, run_id: str, status: str, *, error: str | None = None, step: int | None = None
    ) -> None:
        """Set status and error text; a terminal status records the end time (and ``step``)."""
        _check_status(status)
        sql = "UPDATE runs SET status = ?, error = ?, last_step = COALESCE(?, last_step), "
        if status == "running":  # resumed: this process owns the run again
            sql += "ended = NULL, pid = ?, host = ?, heartbeat = ? WHERE run_id = ?"
            self._update_run(
                sql, (status, error, step, os.getpid(), self.host, time.time()), run_id
            )
        else:
            sql += "ended = ? WHERE run_id = ?"
            self._update_run(sql, (status, error, step, time.time()), run_id)

    def set_role(self, run_id: str, role: str) -> None:
        """Change a run's role in its experiment (a sweep point chosen as ``tuned``)."""
        self._update_run("UPDATE runs SET role = ? WHERE run_id = ?", (role,), run_id)

    def heartbeat(self, run_id: str, *, step: int) -> None:
        """Record that the run is alive at ``step``."""
        sql = "UPDATE runs SET last_step = ?, heartbeat = ? WHERE run_id = ?"
        self._update_run(sql, (int(step), time.time()), run_id)

    def run(self, run_id: str) -> dict[str, Any]:
        """One run as a dict: the runs() columns (times as UTC timestamps) and the parsed config."""
        rows = self._query(_RUN_SQL + " WHERE run_id = ?", (run_id,))
        if not rows:
            raise _unknown(run_id)
        run = dict(zip(_RUN_DTYPES, rows[0]))
        run["config"] = json.loads(run["config"])
        return run | {column: _timestamp(run[column]) for column in _TIME_COLUMNS}

    def runs(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        group: str | None = None,
        flatten_config: bool = True,
    ) -> pd.DataFrame:
        """One row per run, newest first, plus a ``config.<dotted.key>`` column per config leaf."""
        if status is not None:
            _check_status(status)
        filters = {"kind": kind, "status": status, "run_group": group}
        where = " AND ".join(f"{column} = ?" for column, v in filters.items() if v is not None)
        params = [v for v in filters.values() if v is not None]
        rows = self._query(
            f"{_RUN_SQL} {'WHERE ' + where if where else ''} ORDER BY created DESC, run_id DESC",
            params,
        )
        frame = _frame([(*row[:-1], json.loads(row[-1])) for row in rows], _RUN_DTYPES)
        for column in _TIME_COLUMNS:
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        if not flatten_config:
            return frame
        leaves = pd.DataFrame([_flatten(c) for c in frame["config"]], index=frame.index)
        return pd.concat([frame.drop(columns="config"), leaves], axis=1)

    def set_group_request(self, group: str, kind: str, request: dict) -> None:
        """Record what made ``group`` (a comparison's settings, JSON), replacing any earlier
        record: what the group's experiment would be run again with."""
        row = (group, kind, _to_json(request, "request"), time.time())
        self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO groups (run_group, kind, request, updated)"
                " VALUES (?, ?, ?, ?)",
                row,
            )
        )

    def group_request(self, group: str) -> dict | None:
        """What made ``group`` (:meth:`set_group_request`), or None if nothing was recorded."""
        rows = self._query("SELECT request FROM groups WHERE run_group = ?", (group,))
        return json.loads(rows[0][0]) if rows else None

    def delete_run(self, run_id: str) -> None:
        """Remove a run with all its metrics, layer norms and artifacts."""

        def delete(conn: sqlite3.Connection) -> None:
            self._require_run(conn, run_id)
            for table in ("metrics", "norm_rows", "norm_layouts", "artifacts", "runs"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

        self._write(delete)

    def mark_interrupted(self, *, stale_after: float | None = None) -> list[str]:
        """Mark "running" runs whose writer is gone as "interrupted"; return their ids.

        On this host a writer is gone when its pid is no longer alive. Runs written on other
        hosts are marked only when ``stale_after`` seconds have passed since their heartbeat.
        """
        now = time.time()
        running = self._query(
            "SELECT run_id, pid, host, heartbeat FROM runs WHERE status = 'running'"
        )
        gone = [
            (run_id, pid, host)
            for run_id, pid, host, beat in running
            if (host == self.host and pid is not None and not _pid_alive(pid))
            or (stale_after is not None and host != self.host and now - (beat or 0) > stale_after)
        ]

        def mark(conn: sqlite3.Connection) -> list[str]:
            sql = (
                "UPDATE runs SET status = 'interrupted', ended = ?, error = ?"
                " WHERE run_id = ? AND status = 'running' AND pid IS ? AND host IS ?"
            )
            error = "writer process {} on {} ended without finishing the run"
            return [
                run_id
                for run_id, pid, host in gone
                if conn.execute(sql, (now, error.format(pid, host), run_id, pid, host)).rowcount
            ]

        return self._write(mark) if gone else []

    # metrics

    def log_metrics(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """Record one step's scalar metrics in one transaction (NaN reads back as NaN)."""
        self.log_metrics_many(run_id, [(step, name, value) for name, value in metrics.items()])

    def log_metrics_many(self, run_id: str, rows: Sequence[tuple[int, str, float]]) -> None:
        """Record many (step, name, value) rows in one transaction; a repeated pair replaces."""
        data = [(run_id, int(step), str(name), float(value)) for step, name, value in rows]

        def insert(conn: sqlite3.Connection) -> None:
            self._require_run(conn, run_id)
            conn.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?)", data)

        self._write(insert)

    def metrics(
        self,
        run_ids: str | Sequence[str],
        names: Sequence[str] | None = None,
        *,
        since_step: int | None = None,
    ) -> pd.DataFrame:
        """Long frame run_id, step, name, value, in that order; ``since_step``: only later steps."""
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        marks = ",".join("?" * len(ids))
        known = {
            r[0] for r in self._query(f"SELECT run_id FROM runs WHERE run_id IN ({marks})", ids)
        }
        if missing := [run_id for run_id in ids if run_id not in known]:
            raise KeyError(f"unknown run id(s): {', '.join(map(repr, missing))}")
        sql, params = f"SELECT * FROM metrics WHERE run_id IN ({marks})", list(ids)
        if names is not None:
            sql += f" AND name IN ({','.join('?' * len(names))})"
            params += list(names)
        if since_step is not None:
            sql += " AND step > ?"
            params.append(int(since_step))
        return _frame(self._query(sql + " ORDER BY run_id, step, name", params), _METRIC_DTYPES)

    def metrics_wide(self, run_id: str, *, since_step: int | None = None) -> pd.DataFrame:
        """One row per step (the index), one float column per metric name."""
        wide = self.metrics(run_id, since_step=since_step).pivot(
            index="step", columns="name", values="value"
        )
        wide.columns = pd.Index([str(c) for c in wide.columns])
        return wide.set_axis(wide.index.astype("int64").rename("step")).astype("float64")

    def drop_steps(self, run_id: str, first: int) -> None:
        """Delete the metrics and layer norms of steps >= ``first``: a run resumed from a
        checkpoint at step ``first`` records them anew (rows after it were from a run that died
        before its next checkpoint)."""

        def delete(conn: sqlite3.Connection) -> None:
            self._require_run(conn, run_id)
            for table in ("metrics", "norm_rows"):
                conn.execute(
                    f"DELETE FROM {table} WHERE run_id = ? AND step >= ?", (run_id, int(first))
                )

        self._write(delete)

    # per-layer norm trajectories

    def log_layer_norms(
        self,
        run_id: str,
        steps: Sequence[int],
        layers: Sequence[str],
        fields: Sequence[str],
        values: Any,
    ) -> None:
        """Record values of shape (steps, layers, fields) in one transaction; NaN = not stepped."""
        array = np.asarray(values, dtype="<f8")
        if array.shape != (expected := (len(steps), len(layers), len(fields))):
            raise ValueError(
                f"values has shape {array.shape}, expected (steps, layers, fields) = {expected}"
            )
        layout = (run_id, json.dumps(list(layers)), json.dumps(list(fields)))

        def insert(conn: sqlite3.Connection) -> None:
            self._require_run(conn, run_id)
            conn.execute(
                "INSERT OR IGNORE INTO norm_layouts (run_id, layers, fields) VALUES (?, ?, ?)",
                layout,
            )
            (layout_id,) = conn.execute(
                "SELECT layout_id FROM norm_layouts WHERE run_id = ? AND layers = ? AND fields = ?",
                layout,
            ).fetchone()
            conn.executemany(
                "INSERT OR REPLACE INTO norm_rows (run_id, layout_id, step, data)"
                " VALUES (?, ?, ?, ?)",
                ((run_id, layout_id, int(s), array[i].tobytes()) for i, s in enumerate(steps)),
            )

        self._write(insert)

    def _layouts(self, run_id: str) -> list[tuple[int, list[str], list[str]]]:
        """The run's (layout_id, layers, fields), in the order first logged."""
        rows = self._query(
            "SELECT layout_id, layers, fields FROM norm_layouts WHERE run_id = ?"
            " ORDER BY layout_id",
            (run_id,),
        )
        if not rows and not self._query("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
            raise _unknown(run_id)
        return [(layout_id, json.loads(lay), json.loads(fie)) for layout_id, lay, fie in rows]

    def layer_norm_names(self, run_id: str) -> tuple[list[str], list[str]]:
        """The (layers, fields) a run has logged, in the order first logged."""
        return _names(self._layouts(run_id))

    def layer_norms(
        self,
        run_id: str,
        *,
        fields: Sequence[str] | None = None,
        layers: Sequence[str] | None = None,
        since_step: int | None = None,
    ) -> pd.DataFrame:
        """Long frame step, layer, field, value by step; layer and field are categoricals whose
        categories keep the logged order. ``since_step``: only later steps."""
        layouts = self._layouts(run_id)
        all_layers, all_fields = _names(layouts)
        for wanted, known, what in ((layers, all_layers, "layer"), (fields, all_fields, "field")):
            if wanted is not None and layouts and (bad := [w for w in wanted if w not in known]):
                raise KeyError(f"run {run_id!r} has no {what} {bad}; it has {known}")
        layer_code = {
            name: i for i, name in enumerate(all_layers) if layers is None or name in layers
        }
        field_code = {
            name: i for i, name in enumerate(all_fields) if fields is None or name in fields
        }
        columns: dict[str, list[np.ndarray]] = {"step": [], "layer": [], "field": [], "value": []}
        for layout_id, lay, fie in layouts:
            li = [i for i, name in enumerate(lay) if name in layer_code]
            fi = [j for j, name in enumerate(fie) if name in field_code]
            if not li or not fi:
                continue
            rows = self._query(
                "SELECT step, data FROM norm_rows WHERE run_id = ? AND layout_id = ? AND step > ?"
                " ORDER BY step",
                (run_id, layout_id, -(2**63) if since_step is None else int(since_step)),
            )
            if not rows:
                continue
            cube = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f8")
            cube = cube.reshape(len(rows), len(lay), len(fie))[:, li][:, :, fi]
            n, nl, nf = cube.shape
            columns["step"].append(np.repeat(np.array([r[0] for r in rows]), nl * nf))
            columns["layer"].append(np.tile(np.repeat([layer_code[lay[i]] for i in li], nf), n))
            columns["field"].append(np.tile([field_code[fie[j]] for j in fi], n * nl))
            columns["value"].append(cube.reshape(-1))
        flat = {k: np.concatenate(v) if v else np.empty(0, "int64") for k, v in columns.items()}
        frame = pd.DataFrame(
            {
                "step": flat["step"].astype("int64"),
                "layer": pd.Categorical.from_codes(flat["layer"], categories=all_layers),
                "field": pd.Categorical.from_codes(flat["field"], categories=all_fields),
                "value": flat["value"].astype("float64"),
            }
        )
        if len(columns["step"]) > 1:  # several layouts: interleave them by step
            frame = frame.sort_values("step", kind="stable", ignore_index=True)
        return frame

    # artifacts

    def put_artifact(
        self, run_id: str, name: str, data: bytes | str | dict, *, kind: str = "blob"
    ) -> None:
        """Store bytes, text or a JSON-able dict under ``name``, replacing any earlier one."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            encoding, payload = "bytes", bytes(data)
        elif isinstance(data, str):
            encoding, payload = "text", data.encode()
        elif isinstance(data, dict):
            encoding, payload = "json", _to_json(data, f"artifact {name!r}").encode()
        else:
            raise TypeError(f"artifact data must be bytes, str or dict, got {type(data).__name__}")

        def insert(conn: sqlite3.Connection) -> None:
            self._require_run(conn, run_id)
            conn.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, name, kind, encoding, payload, time.time()),
            )

        self._write(insert)

    def get_artifact(self, run_id: str, name: str) -> bytes | str | dict:
        """An artifact as it was stored: bytes, str or dict."""
        sql = "SELECT encoding, data FROM artifacts WHERE run_id = ? AND name = ?"
        if not (rows := self._query(sql, (run_id, name))):
            self.run(run_id)  # an unknown run is reported as such
            raise KeyError(f"run {run_id!r} has no artifact {name!r}")
        encoding, payload = rows[0]
        if encoding == "bytes":
            return bytes(payload)
        return json.loads(payload) if encoding == "json" else bytes(payload).decode()

    def artifact_names(self, run_id: str) -> list[str]:
        """Names of a run's artifacts, sorted."""
        return self.artifacts(run_id)["name"].tolist()

    def artifacts(self, run_id: str) -> pd.DataFrame:
        """A run's artifacts without their data: name, kind, encoding, size (bytes), created."""
        self.run(run_id)
        rows = self._query(
            "SELECT name, kind, encoding, length(data), created FROM artifacts"
            " WHERE run_id = ? ORDER BY name",
            (run_id,),
        )
        dtypes = {"name": "str", "kind": "str", "encoding": "str", "size": "int64"}
        frame = _frame(rows, dtypes | {"created": "float64"})
        return frame.assign(created=pd.to_datetime(frame["created"], unit="s", utc=True))

    # lifecycle

    def __getstate__(self) -> dict[str, Any]:
        # pickles as its location: connections stay behind
        return {"root": str(self.root), "readonly": self.readonly}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], readonly=state.get("readonly", False))

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"
