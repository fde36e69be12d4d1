"""One SQLite file shared by threads and processes: the run store's plumbing.

Each thread gets its own connection (opened anew in a forked child, which never touches its
parent's); every write is one short ``BEGIN IMMEDIATE`` transaction; SQLite waits out a
busy lock for ``BUSY_TIMEOUT_S`` and we retry on top of that. WAL mode: readers never block
the writer. The schema is versioned with ``PRAGMA user_version`` and a list of migrations.

    class MyStore(SQLiteFile):
        def __init__(self, path):
            super().__init__(path, [create_tables])   # migrations[i]: version i -> i + 1
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

BUSY_TIMEOUT_S = 10.0  # SQLite waits this long for another writer's lock
LOCK_RETRIES = 5  # further attempts, with backoff, when a lock outlives that wait

T = TypeVar("T")


class DamagedStore(RuntimeError):
    """A database file that cannot be read as what it should be (damaged, or changed by
    something else)."""


class _Connection(sqlite3.Connection):
    """A sqlite3 connection that remembers its process and can be weakly referenced."""

    pid: int


_OPEN: weakref.WeakSet[_Connection] = weakref.WeakSet()  # every connection of this process
_INHERITED: list[_Connection] = []  # after fork(): the parent's, kept alive but never used


def _keep_parent_connections() -> None:
    """In a forked child, keep the parent's connections unused and unclosed: SQLite does not
    support carrying one across fork() (https://sqlite.org/howtocorrupt.html, section 2.6)."""
    _INHERITED.extend(_OPEN)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_keep_parent_connections)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    """True for SQLite's transient 'database is locked' / 'busy' errors."""
    return "locked" in str(exc).lower() or "busy" in str(exc).lower()


class SQLiteFile:
    """The database at ``path`` brought up to date with ``migrations``; share one per process
    between threads."""

    def __init__(
        self,
        path: Path,
        migrations: Sequence[Callable[[sqlite3.Connection], None]],
        *,
        readonly: bool = False,
    ):
        self.path = path
        self.readonly = readonly  # for a file or folder we may not write: reads only
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        if Path(path).exists():  # before any connection of ours changes it (WAL mode)
            self._check_ours(migrations)
        if not readonly:
            self._create_whole(migrations)
        self._migrate(migrations)

    #: the tables every version of ours has (more come with later versions)
    OWN_TABLES = frozenset({"runs", "metrics", "artifacts"})

    def _check_ours(self, migrations: Sequence[Callable[[sqlite3.Connection], None]]) -> None:
        """Refuse, without touching it, a file that is not one of ours: not SQLite, damaged,
        another program's database, or of a newer schema than this code knows.

        Read through a connection of its own, read-only, so that nothing (not even the
        journal mode) is written into a file that is refused."""
        path, latest = Path(self.path), len(migrations)
        if path.stat().st_size == 0:
            return  # an empty file: _create_whole says what it is
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error:
            return  # cannot even be opened read-only (permissions): the open says why
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if 0 < version < latest:  # an upgrade: tried first on a copy in memory
                self._try_upgrade(conn, migrations, version)
        except sqlite3.OperationalError as error:
            if _is_locked(error) or "unable to open" in str(error):
                return  # busy, or its WAL files cannot be made here: the open decides
            raise DamagedStore(f"{path} cannot be read as a run store ({error})") from None
        except sqlite3.DatabaseError as error:  # "file is not a database", "malformed"
            raise DamagedStore(
                f"{path} is damaged or not an SQLite file ({error}): restore it from a copy, "
                "or move it away to start a new store here"
            ) from None
        finally:
            conn.close()
        if version > latest:
            raise RuntimeError(
                f"{path} has schema version {version}, newer than this code "
                f"supports ({latest}); upgrade grafting_core (the file was left as it is)"
            )
        tables = {name for name in tables if not name.startswith("sqlite_")}
        if tables and not self.OWN_TABLES <= tables:
            shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
            raise RuntimeError(
                f"{path} is another program's SQLite database (tables: {shown}), not a run "
                "store; choose another folder (the file was left as it is)"
            )

    def _create_whole(self, migrations: Sequence[Callable[[sqlite3.Connection], None]]) -> None:
        """A new file appears whole: built aside with every migration, then linked into place
        (``os.link`` fails if another process got there first, and that one is used). So a file
        of ours is never empty, and an empty one (a failed copy, a truncation) is refused
        instead of silently becoming a new, empty store."""
        path = Path(self.path)
        if path.exists():
            if path.stat().st_size == 0 and not Path(f"{path}-wal").exists():
                raise RuntimeError(
                    f"{path} is an empty file (0 bytes), not a store: move it "
                    "away to start a new store here, or restore it from a copy"
                )
            return
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
        conn = sqlite3.connect(aside, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for migration in migrations:
                migration(conn)
            conn.execute(f"PRAGMA user_version = {len(migrations)}")
            conn.execute("COMMIT")
        finally:
            conn.close()
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError:  # a file system without hard links: rename (the last one wins)
            if not path.exists():
                os.replace(aside, path)
        finally:
            aside.unlink(missing_ok=True)

    def _try_upgrade(
        self,
        conn: sqlite3.Connection,
        migrations: Sequence[Callable[[sqlite3.Connection], None]],
        version: int,
    ) -> None:
        """Apply the missing migrations to an in-memory copy: a file whose tables do not
        match its version (a rolled-back ``user_version``) is refused before it is touched."""
        copy = sqlite3.connect(":memory:", isolation_level=None)
        try:
            conn.backup(copy)
            copy.execute("BEGIN")
            for migration in migrations[version:]:
                migration(copy)
        except sqlite3.OperationalError as error:
            raise DamagedStore(
                f"{self.path} says it has schema version {version}, but its tables do not "
                f"match that version ({error}): it was changed by something else; restore it "
                "from a copy (the file was left as it is)"
            ) from None
        finally:
            copy.close()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} at {self.path} is closed")
        if getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(
                self._uri(),
                uri=True,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # autocommit: we issue BEGIN / COMMIT ourselves
                check_same_thread=False,  # one thread uses it, but close() may come from another
                factory=_Connection,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not self.readonly:
                self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))  # readers go on
                conn.execute("PRAGMA synchronous = NORMAL")  # in WAL mode: survives crashes
            conn.pid = self._local.pid = os.getpid()
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
                _OPEN.add(conn)
        return self._local.conn

    def _uri(self) -> str:
        """The file's URI: read-only when asked; immutable when no write-ahead log is pending,
        since WAL mode needs to create files beside the database that we may not write."""
        uri = Path(self.path).resolve().as_uri()
        if not self.readonly:
            return uri
        wal = Path(f"{self.path}-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        return f"{uri}?mode=ro" if pending else f"{uri}?immutable=1"

    def _retry(self, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying with backoff while the database stays locked."""
        for attempt in range(LOCK_RETRIES):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc):
                    raise
                time.sleep(0.05 * 2**attempt + secrets.randbelow(50) / 1000)
        return fn()

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one BEGIN IMMEDIATE transaction, retried while locked."""

        def attempt() -> T:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return self._retry(attempt)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """All rows of one read-only statement (one consistent snapshot in WAL mode)."""
        return self._retry(lambda: self._conn().execute(sql, params).fetchall())

    def _migrate(self, migrations: Sequence[Callable[[sqlite3.Connection], None]]) -> None:
        """Bring the file to version ``len(migrations)`` (``PRAGMA user_version``), applying
        ``migrations[i]`` (version i to i + 1) in order, in one transaction."""
        latest = len(migrations)

        def upgrade(conn: sqlite3.Connection) -> None:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > latest:
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this code "
                    f"supports ({latest}); upgrade grafting_core"
                )
            for migration in migrations[version:]:
                migration(conn)
            conn.execute(f"PRAGMA user_version = {latest}")

        version = self._query("PRAGMA user_version")[0][0]
        if version != latest and self.readonly:
            raise RuntimeError(
                f"{self.path} has schema version {version}, this code reads "
                f"version {latest}: open it once where it can be written"
            )
        if version != latest:
            try:
                self._write(upgrade)  # re-reads the version under the write lock
            except sqlite3.OperationalError as error:  # rolled back: the file is as it was
                if _is_locked(error):
                    raise
                raise DamagedStore(
                    f"{self.path} says it has schema version {version}, but its tables do "
                    f"not match that version ({error}): it was changed by something else; "
                    "restore it from a copy (the file was left as it is)"
                ) from None

    def close(self) -> None:
        """Close every connection this store opened in this process; later calls raise."""
        self._closed = True
        with self._lock:
            for conn in list(self._conns):
                if conn.pid == os.getpid():
                    conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
