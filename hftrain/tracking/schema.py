"""The tracker database file: its schema and migrations, the checks before anything is written to a file, and the
journal (WAL) setup and housekeeping. Used by `TrackerStore` through `SchemaMixin`."""

from __future__ import annotations

import os
import random
import sqlite3
import time

from ..errors import TrackerError

SCHEMA_VERSION = 2
STATUSES = ("running", "finished", "failed", "killed", "crashed", "pruned")  # pruned: an HPO trial stopped early
_MARKER = "hftrain-tracker"

# Each entry takes the schema from version i to i+1. It runs under BEGIN IMMEDIATE after re-reading the version
# inside that transaction, so several processes opening a file at once apply each step exactly once (and a crash
# mid-way rolls it back); the DDL is idempotent besides.
_MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS hftrain_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS experiments(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, "
        "created_at REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE NOT NULL, "
        "experiment_id INTEGER NOT NULL REFERENCES experiments(id), name TEXT, status TEXT NOT NULL, "
        "start_time REAL NOT NULL, end_time REAL, heartbeat REAL, heartbeat_timeout REAL NOT NULL DEFAULT 300, "
        "last_step INTEGER, trainer TEXT, output_dir TEXT, error TEXT, git_commit TEXT, git_branch TEXT, "
        "git_dirty INTEGER, host TEXT, command TEXT, config_json TEXT, system_json TEXT)",
        "CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment_id, start_time)",
        "CREATE TABLE IF NOT EXISTS metric_keys(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)",
        # value NULL means NaN: SQLite stores a float NaN as NULL.
        "CREATE TABLE IF NOT EXISTS metrics(run_id INTEGER NOT NULL, key_id INTEGER NOT NULL, "
        "step INTEGER NOT NULL, value REAL, epoch REAL, wall_time REAL NOT NULL, "
        "PRIMARY KEY(run_id, key_id, step)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS metric_summary(run_id INTEGER NOT NULL, key_id INTEGER NOT NULL, "
        "last_step INTEGER, last_value REAL, min_value REAL, min_step INTEGER, max_value REAL, max_step INTEGER, "
        "PRIMARY KEY(run_id, key_id)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS params(run_id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT, "
        "value_num REAL, PRIMARY KEY(run_id, key)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS params_by_value ON params(key, value_num)",
        "CREATE TABLE IF NOT EXISTS tags(run_id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT, "
        "PRIMARY KEY(run_id, key)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS artifacts(run_id INTEGER NOT NULL, path TEXT NOT NULL, kind TEXT, "
        "step INTEGER, size INTEGER, sha256 TEXT, created_at REAL, PRIMARY KEY(run_id, path)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, step INTEGER, "
        "kind TEXT NOT NULL, payload TEXT, wall_time REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, step)",
        f"INSERT OR IGNORE INTO hftrain_meta(key, value) VALUES('schema', '{_MARKER}')",
    ],
    [
        # Metrics clustered on (run, step, key) instead of (run, key, step): the values of one log sit side by side,
        # so a commit writes one or two B-tree pages instead of one per key (measured: 44 vs 110 us per 10-key
        # step). Long curves are read from the packed chunks below, so the per-curve order is no longer needed.
        "DROP TABLE IF EXISTS metrics_by_step",
        "CREATE TABLE metrics_by_step(run_id INTEGER NOT NULL, key_id INTEGER NOT NULL, step INTEGER NOT NULL, "
        "value REAL, epoch REAL, wall_time REAL NOT NULL, PRIMARY KEY(run_id, step, key_id)) WITHOUT ROWID",
        "INSERT INTO metrics_by_step(run_id, key_id, step, value, epoch, wall_time) "
        "SELECT run_id, key_id, step, value, epoch, wall_time FROM metrics",
        "DROP TABLE metrics",
        "ALTER TABLE metrics_by_step RENAME TO metrics",
        # Packed copies of curve prefixes (little-endian int64 steps and float64 values, NaN for NaN), so a long
        # curve reads as a few blobs instead of one SQLite row and one Python tuple per point. The metrics rows
        # stay the source of truth: a chunk only ever covers steps that are also rows, and every write that
        # changes a covered step deletes that curve's chunks from that step on (see `_invalidate_chunks`).
        "CREATE TABLE IF NOT EXISTS metric_chunks(run_id INTEGER NOT NULL, key_id INTEGER NOT NULL, "
        "first_step INTEGER NOT NULL, last_step INTEGER NOT NULL, points INTEGER NOT NULL, has_nan INTEGER NOT NULL, "
        "steps BLOB NOT NULL, vals BLOB NOT NULL)",
        "CREATE UNIQUE INDEX IF NOT EXISTS metric_chunks_by_curve ON metric_chunks(run_id, key_id, first_step)",
    ],
]
assert len(_MIGRATIONS) == SCHEMA_VERSION


def default_db_path() -> str:
    """The database used when none is given: `$HFTRAIN_TRACKER_DB`, else `~/.cache/hftrain/runs.db`."""
    env = os.environ.get("HFTRAIN_TRACKER_DB")
    if env:
        return env
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "hftrain", "runs.db")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SchemaMixin:
    """Opening a database file (refusing what is not ours, migrating ours to `SCHEMA_VERSION`, WAL on) and its
    housekeeping. Migrations run in `transaction()` of `WritesMixin`."""

    path: str
    conn: sqlite3.Connection

    def _open(self, create: bool, timeout: float) -> None:
        """Connect to `self.path` and bring it to the current schema; every failure is one clear TrackerError."""
        self._check_file(create)
        try:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self.conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise TrackerError(f"tracker database {self.path}: still locked after {timeout:.0f} s ({exc})")
            kind = "not an SQLite database, or a damaged one" if "not a database" in str(exc) else "cannot be used"
            raise TrackerError(
                f"tracker database {self.path}: {kind} ({exc}); left untouched. "
                "Point --tracker_db / HFTRAIN_TRACKER_DB at a new path or an existing hftrain database."
            ) from None

    def _check_file(self, create: bool) -> None:
        if os.path.isdir(self.path):
            raise TrackerError(f"tracker database {self.path}: is a directory; expected a .db file path")
        if not os.path.exists(self.path):
            if not create:
                raise TrackerError(f"tracker database {self.path}: no such file (set --db or HFTRAIN_TRACKER_DB)")
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            return
        # The header is not read with Python's open(): closing any descriptor of a database file drops every
        # POSIX lock this process holds on it, so another connection of this process (the trainer's) would lose
        # its locks and a reader elsewhere could delete the live WAL (sqlite.org/howtocorrupt.html §2.2). SQLite
        # reads the header itself and refuses a file that is not a database, without writing to it.

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        self._check_foreign(version)
        if version == SCHEMA_VERSION:
            self._set_wal()
            return
        self._set_wal()
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
            self._check_foreign(version)
            for index in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[index]:
                    self.conn.execute(statement)
            if version < SCHEMA_VERSION:
                self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _check_foreign(self, version: int) -> None:
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version > SCHEMA_VERSION and "hftrain_meta" in tables:
            raise TrackerError(
                f"tracker database {self.path}: schema version {version} is newer than this hftrain supports "
                f"({SCHEMA_VERSION}); upgrade hftrain"
            )
        ours = "hftrain_meta" in tables and self.conn.execute(
            "SELECT value FROM hftrain_meta WHERE key = 'schema'"
        ).fetchone() == (_MARKER,)
        if tables and not ours and not (version == 0 and tables <= {"hftrain_meta"}):
            names = ", ".join(sorted(tables)[:6])
            raise TrackerError(
                f"tracker database {self.path}: an SQLite database of another application (tables: {names}); "
                "left untouched. Use a new path for --tracker_db / HFTRAIN_TRACKER_DB."
            )

    def _set_wal(self) -> None:
        for attempt in range(50):
            try:
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == 49:
                    raise
                time.sleep(0.02 + random.random() * 0.05)
        if str(mode).lower() != "wal":
            # Filesystems without shared mmap refuse WAL; the rollback journal still works, only slower.
            self.conn.execute("PRAGMA journal_mode=DELETE")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def vacuum(self) -> None:
        """Give deleted space back to the filesystem and fold the WAL into the main file."""
        self.conn.execute("VACUUM")
        self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the WAL into the database file without waiting for readers (PASSIVE)."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # a busy (or failed) database checkpoints later; nothing committed is lost
