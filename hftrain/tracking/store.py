"""The run store: one local SQLite file holding experiments, runs, params, metric curves and more.

Plain `sqlite3`, no transformers import, so `hftrain runs ...` starts fast. The practices come from
TRACKER_NOTES.md §6-8: WAL + `synchronous=NORMAL`, every write in a short `BEGIN IMMEDIATE` transaction with a
30 s busy timeout and a bounded retry, integer keys, a metrics table clustered on (run, key, step), and a
summary table (last/min/max and their steps) kept up to date in the same transaction.
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import sys
import time
import uuid as uuidlib
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

from ..errors import TrackerError

__all__ = ["SCHEMA_VERSION", "STATUSES", "TrackerStore", "default_db_path", "flatten"]

SCHEMA_VERSION = 2
STATUSES = ("running", "finished", "failed", "killed", "crashed", "pruned")  # pruned: an HPO trial stopped early
_MARKER = "hftrain-tracker"
_NAN = float("nan")
_BIG_ENDIAN = sys.byteorder == "big"  # chunks are little-endian on disk, so a database file moves between machines

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

# The status a reader sees: a run still marked running whose heartbeat is older than its timeout has crashed.
_STATUS_SQL = (
    "CASE WHEN r.status = 'running' AND r.heartbeat < (:now - r.heartbeat_timeout) THEN 'crashed' "
    "ELSE r.status END"
)

_SUMMARY_REPLACE = (
    "INSERT OR REPLACE INTO metric_summary(run_id, key_id, last_step, last_value, min_value, min_step, max_value, "
    "max_step) VALUES(?, ?, ?, ?, ?, ?, ?, ?)"
)
_METRIC_UPSERT = (
    "INSERT INTO metrics(run_id, key_id, step, value, epoch, wall_time) VALUES(?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(run_id, step, key_id) DO UPDATE SET value = excluded.value, epoch = excluded.epoch, "
    "wall_time = excluded.wall_time"
)


def default_db_path() -> str:
    """The database used when none is given: `$HFTRAIN_TRACKER_DB`, else `~/.cache/hftrain/runs.db`."""
    env = os.environ.get("HFTRAIN_TRACKER_DB")
    if env:
        return env
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "hftrain", "runs.db")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys; lists and other values kept whole (never dropped)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(item, dict) and item:
                out.update(flatten(item, name))
            else:
                out[name] = item
    else:
        out[prefix] = value
    return out


def _param_text(value: Any) -> tuple[Optional[str], Optional[float]]:
    if value is None:
        return None, None
    if isinstance(value, bool):
        return ("true" if value else "false"), float(value)
    if isinstance(value, (int, float)):
        number = float(value)
        return repr(value), (number if math.isfinite(number) else None)
    if isinstance(value, str):
        return value, None
    try:
        return json.dumps(value, sort_keys=True, default=str), None
    except (TypeError, ValueError):
        return str(value), None


@dataclass
class _RunCache:
    """What a writing connection keeps about one run (see `TrackerStore._run_cache`)."""

    heartbeat_every: float
    heartbeat_at: float = 0.0
    packed: dict[int, int] = field(default_factory=dict)  # key id -> the last step its chunks cover
    summaries: dict[int, tuple] = field(default_factory=dict)  # key id -> last_step, last_value, min.., max..


def _fold(summary: Optional[tuple], step: int, value: Optional[float]) -> tuple:
    """A curve's summary `(last_step, last_value, min_value, min_step, max_value, max_step)` with one more point
    (value None is NaN: it can be the last value, never the min or max)."""
    if summary is None:
        at = None if value is None else step
        return step, value, value, at, value, at
    last_step, last_value, min_value, min_step, max_value, max_step = summary
    if step >= last_step:
        last_step, last_value = step, value
    if value is not None:
        if min_value is None or value < min_value:
            min_value, min_step = value, step
        if max_value is None or value > max_value:
            max_value, max_step = value, step
    return last_step, last_value, min_value, min_step, max_value, max_step


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class TrackerStore:
    """One connection to a tracker database. Open it per process (and per thread); it is cheap.

    Writes go through `transaction()`; reads are plain SELECTs in autocommit mode, so they hold no lock between
    calls and never starve WAL checkpoints.
    """

    def __init__(self, path: Optional[str] = None, *, timeout: float = 30.0, create: bool = True):
        self.path = os.path.abspath(os.path.expanduser(path or default_db_path()))
        self.timeout = timeout
        self._key_ids: dict[str, int] = {}
        self._runs: dict[int, _RunCache] = {}
        self._data_version: Optional[int] = None
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

    # -- opening ------------------------------------------------------------------------------------------------
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

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None

    def __enter__(self) -> "TrackerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self, retries: int = 8) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE ... COMMIT`: takes the write lock up front, so it waits (busy timeout) instead of
        failing on a read-to-write upgrade; retried with jitter if the lock is still held after the timeout."""
        for attempt in range(retries + 1):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == retries:
                    raise TrackerError(f"tracker database {self.path}: {exc}") from None
                time.sleep(0.05 * (attempt + 1) * (0.5 + random.random()))
        try:
            # Another connection committed since this one last did (a resume elsewhere, `hftrain runs gc`, a second
            # writer of a run): the copies this connection keeps of runs may be stale, so they are read again.
            data_version = self.conn.execute("PRAGMA data_version").fetchone()[0]
            if data_version != self._data_version:
                self._runs.clear()
                self._data_version = data_version
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            # a write that did not commit may have moved this connection's copies ahead of the file
            self._runs.clear()
            self._key_ids.clear()
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection itself failed; the original error says why
            raise

    def _key_id(self, name: str) -> int:
        key_id = self._key_ids.get(name)
        if key_id is None:
            self.conn.execute("INSERT OR IGNORE INTO metric_keys(name) VALUES(?)", (name,))
            key_id = self.conn.execute("SELECT id FROM metric_keys WHERE name = ?", (name,)).fetchone()[0]
            self._key_ids[name] = key_id
        return key_id

    def experiment_id(self, name: str) -> int:
        """The id of experiment `name`, created atomically if it does not exist."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO experiments(name, created_at) VALUES(?, ?) ON CONFLICT(name) DO NOTHING", (name, time.time())
            )
            return conn.execute("SELECT id FROM experiments WHERE name = ?", (name,)).fetchone()[0]

    def create_run(
        self,
        experiment: str = "default",
        name: Optional[str] = None,
        *,
        run_uuid: Optional[str] = None,
        params: Optional[dict[str, Any]] = None,
        tags: Optional[dict[str, Any]] = None,
        config: Optional[dict[str, Any]] = None,
        system: Optional[dict[str, Any]] = None,
        git: Optional[dict[str, Any]] = None,
        trainer: Optional[str] = None,
        output_dir: Optional[str] = None,
        heartbeat_timeout: float = 300.0,
    ) -> int:
        """Start a run (status running) with everything known at its start; returns its integer id."""
        git = git or {}
        system = system or {}
        now = time.time()
        exp_id = self.experiment_id(experiment)
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO runs(uuid, experiment_id, name, status, start_time, heartbeat, heartbeat_timeout, "
                "trainer, output_dir, git_commit, git_branch, git_dirty, host, command, config_json, system_json) "
                "VALUES(?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_uuid or uuidlib.uuid4().hex,
                    exp_id,
                    name,
                    now,
                    now,
                    float(heartbeat_timeout),
                    trainer,
                    output_dir,
                    git.get("commit"),
                    git.get("branch"),
                    None if git.get("dirty") is None else int(bool(git.get("dirty"))),
                    system.get("host"),
                    system.get("command"),
                    json.dumps(config, sort_keys=True, default=str) if config is not None else None,
                    json.dumps({**system, "git": git}, sort_keys=True, default=str),
                ),
            )
            run_id = cursor.lastrowid
            self._runs.pop(run_id, None)  # the id of a deleted run can be given out again
            self._write_params(run_id, params or {})
            self._write_tags(run_id, tags or {})
        return run_id

    def _write_params(self, run_id: int, params: dict[str, Any]) -> None:
        rows = [(run_id, str(key), *_param_text(value)) for key, value in params.items()]
        self.conn.executemany(
            "INSERT INTO params(run_id, key, value, value_num) VALUES(?, ?, ?, ?) ON CONFLICT(run_id, key) "
            "DO UPDATE SET value = excluded.value, value_num = excluded.value_num",
            rows,
        )

    def _write_tags(self, run_id: int, tags: dict[str, Any]) -> None:
        self.conn.executemany(
            "INSERT INTO tags(run_id, key, value) VALUES(?, ?, ?) ON CONFLICT(run_id, key) DO UPDATE SET value = "
            "excluded.value",
            [(run_id, str(k), None if v is None else str(v)) for k, v in tags.items()],
        )

    def log_params(self, run_id: int, params: dict[str, Any]) -> None:
        """Add or update params (a later value replaces an earlier one; nothing is truncated)."""
        with self.transaction():
            self._write_params(run_id, params)

    def set_tags(self, run_id: int, tags: dict[str, Any]) -> None:
        """Add or update tags."""
        with self.transaction():
            self._write_tags(run_id, tags)

    def log_metrics(
        self,
        run_id: int,
        step: int,
        metrics: dict[str, Optional[float]],
        *,
        epoch: Optional[float] = None,
        wall_time: Optional[float] = None,
        events: Optional[Iterable[tuple[str, Any]]] = None,
    ) -> None:
        """Record one log event in one transaction: the values at `step` (re-logging a step replaces it), the
        summary, any `(kind, payload)` events, and the run's heartbeat.

        The summary is computed from this connection's copy of it (read once per run), so a log costs one plain
        row write per key instead of an upsert that compares in SQL; a run is written by one connection at a time
        (its trainer's), every other connection only reads it. The heartbeat is written at most every
        `heartbeat_timeout / 20` seconds (at most every second): often enough that a live run never reads as
        crashed, rarely enough that most logs touch only the metrics and summary pages."""
        now = time.time() if wall_time is None else wall_time
        with self.transaction() as conn:
            cache = self._run_cache(run_id)
            key_id = self._key_id
            rows = [(run_id, key_id(k), step, v, epoch, now) for k, v in metrics.items()]
            packed = cache.packed
            if packed:
                behind = [row[1] for row in rows if step <= packed.get(row[1], -1)]
                if behind:
                    self._invalidate_chunks(run_id, behind, step, cache)
            conn.executemany(_METRIC_UPSERT, rows)
            summaries = cache.summaries
            updated = [(kid, _fold(summaries.get(kid), step, value)) for _, kid, _, value, _, _ in rows]
            conn.executemany(_SUMMARY_REPLACE, [(run_id, kid, *new) for kid, new in updated])
            if events:
                conn.executemany(
                    "INSERT INTO events(run_id, step, kind, payload, wall_time) VALUES(?, ?, ?, ?, ?)",
                    [(run_id, step, kind, json.dumps(p, default=str), now) for kind, p in events],
                )
            beat = now - cache.heartbeat_at >= cache.heartbeat_every
            if beat:
                conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (now, run_id))
        # committed: only now does this connection's copy of the summary move on
        summaries.update(updated)
        if beat:
            cache.heartbeat_at = now

    def _run_cache(self, run_id: int) -> "_RunCache":
        """This connection's copy of what writing a run needs: its summary, heartbeat timeout and how far its
        curves are packed; read once per run (inside the caller's transaction)."""
        cache = self._runs.get(run_id)
        if cache is None:
            row = self.conn.execute("SELECT heartbeat_timeout FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise TrackerError(f"tracker database {self.path}: no run with id {run_id}")
            cache = _RunCache(heartbeat_every=min(1.0, float(row[0]) / 20))
            for kid, *summary in self.conn.execute(
                "SELECT key_id, last_step, last_value, min_value, min_step, max_value, max_step FROM metric_summary "
                "WHERE run_id = ?", (run_id,)
            ):
                cache.summaries[kid] = tuple(summary)
            cache.packed = dict(self.conn.execute(
                "SELECT key_id, MAX(last_step) FROM metric_chunks WHERE run_id = ? GROUP BY key_id", (run_id,)
            ))
            self._runs[run_id] = cache
        return cache

    def _invalidate_chunks(self, run_id: int, key_ids: list[int], step: int, cache: "_RunCache") -> None:
        """A write at `step` changes a packed stretch of these curves: drop each one's chunks that reach `step` (so
        what is left of its chunks is still a prefix, and the rows from there on are read as rows). Other curves
        keep theirs: `evaluate()` after training rewrites `epoch` at the last step, not every curve."""
        for key_id in key_ids:
            self.conn.execute(
                "DELETE FROM metric_chunks WHERE run_id = ? AND key_id = ? AND last_step >= ?", (run_id, key_id, step)
            )
            left = self.conn.execute(
                "SELECT MAX(last_step) FROM metric_chunks WHERE run_id = ? AND key_id = ?", (run_id, key_id)
            ).fetchone()[0]
            if left is None:
                cache.packed.pop(key_id, None)
            else:
                cache.packed[key_id] = left

    def pack_curves(self, run_id: int, below_step: Optional[int] = None, min_points: int = 1) -> int:
        """Copy each curve's rows that no chunk covers yet (those before `below_step`, or all) into one packed chunk
        per curve, skipping curves with fewer than `min_points` new points; returns the points packed.

        The trainer's tracker calls this at each checkpoint (below the current step, so a value still logged at
        that step later is never behind a chunk) and once at the end of training (everything)."""
        packed_points = 0
        with self.transaction() as conn:
            cache = self._run_cache(run_id)  # current: re-read if another connection wrote since
            after = {key_id: cache.packed.get(key_id, -1) for key_id in cache.summaries}  # every curve of the run
            if not after:
                return 0
            limit = (1 << 62) if below_step is None else int(below_step)
            new: dict[int, list] = {key_id: [] for key_id in after}
            for key_id, step, value in conn.execute(  # one pass over the run's rows after its least-packed curve
                "SELECT key_id, step, value FROM metrics WHERE run_id = ? AND step > ? AND step < ? ORDER BY step",
                (run_id, min(after.values()), limit),
            ):
                if step > after.get(key_id, limit):
                    new[key_id].append((step, value))
            for key_id, rows in new.items():
                if not rows or len(rows) < min_points:
                    continue
                steps = array("q", [r[0] for r in rows])
                values = array("d", [_NAN if r[1] is None else r[1] for r in rows])
                if _BIG_ENDIAN:
                    steps.byteswap()
                    values.byteswap()
                conn.execute(
                    "INSERT INTO metric_chunks(run_id, key_id, first_step, last_step, points, has_nan, steps, vals) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, key_id, rows[0][0], rows[-1][0], len(rows), int(any(r[1] is None for r in rows)),
                     steps.tobytes(), values.tobytes()),
                )
                packed_points += len(rows)
                cache.packed[key_id] = rows[-1][0]
        return packed_points

    def log_event(self, run_id: int, step: Optional[int], kind: str, payload: Any = None) -> None:
        """Record an event (an anomaly, a signal, a non-scalar log value) as JSON. Public API for other features,
        e.g. the training monitor: `store.log_event(run_id, step, "nan_loss", {"loss": "nan"})`."""
        if not isinstance(kind, str) or not kind:
            raise TrackerError(f"log_event kind: expected a non-empty string, got {kind!r}")
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO events(run_id, step, kind, payload, wall_time) VALUES(?, ?, ?, ?, ?)",
                (run_id, step, kind, json.dumps(payload, default=str), time.time()),
            )

    def log_artifacts(self, run_id: int, rows: Iterable[tuple[str, str, Optional[int], int, Optional[str]]]) -> None:
        """Record files by `(path, kind, step, size, sha256)`; the files themselves stay where they are."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO artifacts(run_id, path, kind, step, size, sha256, created_at) VALUES(?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_id, path) DO UPDATE SET kind = excluded.kind, step = excluded.step, "
                "size = excluded.size, sha256 = excluded.sha256, created_at = excluded.created_at",
                [(run_id, path, kind, step, size, sha, now) for path, kind, step, size, sha in rows],
            )

    def heartbeat(self, run_id: int) -> None:
        """Mark the run alive now."""
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    def set_status(self, run_id: int, status: str, error: Optional[str] = None, *, only_if_running: bool = False):
        """Set the final (or running) status; `only_if_running` leaves an already-final status alone."""
        if status not in STATUSES:
            raise TrackerError(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
        now = time.time()
        end = None if status == "running" else now
        where = "id = ? AND status = 'running'" if only_if_running else "id = ?"
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE runs SET status = ?, end_time = ?, heartbeat = ?, error = COALESCE(?, error) WHERE {where}",
                (status, end, now, error, run_id),
            )

    def resume_run(self, run_id: int, step: int) -> None:
        """Continue a run from a checkpoint at `step`: values logged after it are dropped (they will be logged
        again), the summary is rebuilt from what remains, and the run is running again."""
        now = time.time()
        self._runs.pop(run_id, None)
        with self.transaction() as conn:
            conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))
            conn.execute("DELETE FROM metric_chunks WHERE run_id = ? AND last_step > ?", (run_id, step))
            conn.execute("DELETE FROM events WHERE run_id = ? AND step > ?", (run_id, step))
            summaries: dict[int, tuple] = {}
            for key_id, step_, value in conn.execute(
                "SELECT key_id, step, value FROM metrics WHERE run_id = ? ORDER BY step", (run_id,)
            ):
                summaries[key_id] = _fold(summaries.get(key_id), step_, value)
            conn.execute("DELETE FROM metric_summary WHERE run_id = ?", (run_id,))
            conn.executemany(_SUMMARY_REPLACE, [(run_id, kid, *summary) for kid, summary in summaries.items()])
            conn.execute(
                "UPDATE runs SET status = 'running', end_time = NULL, heartbeat = ?, last_step = ?, error = NULL "
                "WHERE id = ?",
                (now, step, run_id),
            )
            conn.execute(
                "INSERT INTO events(run_id, step, kind, payload, wall_time) VALUES(?, ?, 'resumed', ?, ?)",
                (run_id, step, json.dumps({"from_step": step}), now),
            )

    def delete_runs(self, run_ids: Iterable[int]) -> int:
        """Delete runs and everything recorded for them; returns how many were deleted."""
        ids = [(int(i),) for i in run_ids]
        for (run_id,) in ids:
            self._runs.pop(run_id, None)
        with self.transaction() as conn:
            for table in ("metrics", "metric_chunks", "metric_summary", "params", "tags", "artifacts", "events"):
                conn.executemany(f"DELETE FROM {table} WHERE run_id = ?", ids)
            before = conn.total_changes
            conn.executemany("DELETE FROM runs WHERE id = ?", ids)
            deleted = conn.total_changes - before
            conn.execute("DELETE FROM experiments WHERE id NOT IN (SELECT experiment_id FROM runs)")
        return deleted

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

    # -- reading ------------------------------------------------------------------------------------------------
    def _rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def runs(
        self,
        *,
        experiment: Optional[str] = None,
        status: Optional[str] = None,
        params: Iterable[tuple[str, str, str]] = (),
        tags: Iterable[tuple[str, str]] = (),
        run_ids: Optional[Iterable[int]] = None,
        limit: Optional[int] = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first, with their effective status (`crashed` when the heartbeat stopped).

        `params` are `(key, op, value)` with op one of `=`, `!=`, `<`, `<=`, `>`, `>=` (numeric ops compare numbers);
        `tags` are `(key, value)` pairs; every filter must hold.
        """
        where, args = [], {"now": time.time()}
        if experiment is not None:
            where.append("e.name = :experiment")
            args["experiment"] = experiment
        if status is not None:
            if status not in STATUSES:
                raise TrackerError(f"--status: expected one of {', '.join(STATUSES)}, got {status!r}")
            where.append(f"({_STATUS_SQL}) = :status")
            args["status"] = status
        for i, (key, op, value) in enumerate(params):
            args[f"pk{i}"], args[f"pv{i}"] = key, value
            if op in ("=", "!="):
                args[f"pn{i}"] = _maybe_number(value)  # "1e-3" matches a learning rate stored as 0.001
                cond = f"(p.value = :pv{i} OR p.value_num = :pn{i})"
                test = "EXISTS" if op == "=" else "NOT EXISTS"
                where.append(f"{test} (SELECT 1 FROM params p WHERE p.run_id = r.id AND p.key = :pk{i} AND {cond})")
            elif op in ("<", "<=", ">", ">="):
                number = _maybe_number(value)
                if number is None:
                    raise TrackerError(f"--param {key}{op}{value}: {op} needs a number, got {value!r}")
                args[f"pv{i}"] = number
                where.append(
                    f"EXISTS (SELECT 1 FROM params p WHERE p.run_id = r.id AND p.key = :pk{i} AND p.value_num {op} :pv{i})"
                )
            else:
                raise TrackerError(f"param filter op: expected one of = != < <= > >=, got {op!r}")
        for i, (key, value) in enumerate(tags):
            args[f"tk{i}"], args[f"tv{i}"] = key, value
            where.append(f"EXISTS (SELECT 1 FROM tags t WHERE t.run_id = r.id AND t.key = :tk{i} AND t.value = :tv{i})")
        if run_ids is not None:
            ids = [int(i) for i in run_ids]
            where.append(f"r.id IN ({','.join(str(i) for i in ids) or 'NULL'})")
        sql = (
            f"SELECT r.id, r.uuid, e.name AS experiment, r.name, {_STATUS_SQL} AS status, r.start_time, r.end_time, "
            "r.heartbeat, COALESCE((SELECT MAX(s.last_step) FROM metric_summary s WHERE s.run_id = r.id), r.last_step) "
            "AS last_step, r.trainer, r.output_dir, r.error, r.git_commit, r.git_branch, r.git_dirty, "
            "r.host, r.command FROM runs r JOIN experiments e ON e.id = r.experiment_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY r.start_time DESC, r.id DESC"
            + (f" LIMIT {int(limit)}" if limit else "")
        )
        return self._rows(sql, args)

    def resolve(self, ref: str) -> dict[str, Any]:
        """The run named by `ref`: its integer id, a uuid (or a unique uuid prefix of 6+ characters) or a unique
        run name."""
        ref = str(ref)
        candidates: list[int] = []
        if ref.isdigit():
            candidates = [r[0] for r in self.conn.execute("SELECT id FROM runs WHERE id = ?", (int(ref),))]
        if not candidates and len(ref) >= 6:
            candidates = [
                r[0] for r in self.conn.execute("SELECT id FROM runs WHERE substr(uuid, 1, ?) = ?", (len(ref), ref))
            ]
        if not candidates:
            candidates = [r[0] for r in self.conn.execute("SELECT id FROM runs WHERE name = ?", (ref,))]
        if len(candidates) != 1:
            problem = "no run matches" if not candidates else f"{len(candidates)} runs match"
            raise TrackerError(f"run {ref!r}: {problem}; give a run id, a uuid prefix or a unique run name")
        return self.runs(run_ids=candidates)[0]

    def run_by_uuid(self, run_uuid: str) -> Optional[dict[str, Any]]:
        """The run with this uuid, or None."""
        row = self.conn.execute("SELECT id FROM runs WHERE uuid = ?", (run_uuid,)).fetchone()
        return self.runs(run_ids=[row[0]])[0] if row else None

    def params(self, run_id: int) -> dict[str, Optional[str]]:
        """All params of a run, by key."""
        return dict(self.conn.execute("SELECT key, value FROM params WHERE run_id = ? ORDER BY key", (run_id,)))

    def tags(self, run_id: int) -> dict[str, Optional[str]]:
        """All tags of a run, by key."""
        return dict(self.conn.execute("SELECT key, value FROM tags WHERE run_id = ? ORDER BY key", (run_id,)))

    def summary(self, run_id: int) -> dict[str, dict[str, Any]]:
        """Per metric: last value and step, min and max and the step of each."""
        rows = self._rows(
            "SELECT k.name AS key, s.last_step, s.last_value, s.min_value, s.min_step, s.max_value, s.max_step "
            "FROM metric_summary s JOIN metric_keys k ON k.id = s.key_id WHERE s.run_id = ? ORDER BY k.name",
            (run_id,),
        )
        return {row.pop("key"): row for row in rows}

    def leaderboard(self, key: str, run_ids: Optional[Iterable[int]] = None) -> list[dict[str, Any]]:
        """One metric across runs from the summary table (O(runs), no curve scan): per run its last value and
        step, min and max and the step of each; runs without the metric are left out."""
        where = ""
        if run_ids is not None:
            where = f" AND s.run_id IN ({','.join(str(int(i)) for i in run_ids) or 'NULL'})"
        return self._rows(
            "SELECT s.run_id, s.last_step, s.last_value, s.min_value, s.min_step, s.max_value, s.max_step "
            "FROM metric_summary s WHERE s.key_id = (SELECT id FROM metric_keys WHERE name = ?)" + where
            + " ORDER BY s.run_id",
            (key,),
        )

    def metric_keys(self, run_ids: Iterable[int]) -> list[str]:
        """Names of the metrics any of these runs recorded."""
        ids = ",".join(str(int(i)) for i in run_ids) or "NULL"
        return [
            r[0]
            for r in self.conn.execute(
                f"SELECT DISTINCT k.name FROM metric_summary s JOIN metric_keys k ON k.id = s.key_id "
                f"WHERE s.run_id IN ({ids}) ORDER BY k.name"
            )
        ]

    def curve(self, run_id: int, key: str) -> list[tuple[int, Optional[float], Optional[float], float]]:
        """The full history of one metric: `(step, value, epoch, wall_time)` by step, never downsampled."""
        return self.conn.execute(
            "SELECT m.step, m.value, m.epoch, m.wall_time FROM metrics m WHERE m.run_id = ? AND m.key_id = "
            "(SELECT id FROM metric_keys WHERE name = ?) ORDER BY m.step",
            (run_id, key),
        ).fetchall()

    def curve_points(self, run_id: int, key: str) -> list[tuple[int, Optional[float]]]:
        """The full history of one metric as `(step, value)` pairs by step (value None for NaN), never downsampled:
        what charts need. The packed chunks of the curve (see `pack_curves`) are read as a few blobs, the rest of it
        as rows, both in one read transaction so a concurrent write or pack cannot show a step twice or not at all."""
        row = self.conn.execute("SELECT id FROM metric_keys WHERE name = ?", (key,)).fetchone()
        if row is None:
            return []
        key_id = row[0]
        own = not self.conn.in_transaction
        if own:
            self.conn.execute("BEGIN")
        try:
            chunks = self.conn.execute(
                "SELECT last_step, has_nan, steps, vals FROM metric_chunks WHERE run_id = ? AND key_id = ? "
                "ORDER BY first_step",
                (run_id, key_id),
            ).fetchall()
            after = chunks[-1][0] if chunks else -(1 << 62)
            rows = self.conn.execute(
                "SELECT step, value FROM metrics WHERE run_id = ? AND key_id = ? AND step > ? ORDER BY step",
                (run_id, key_id, after),
            ).fetchall()
        finally:
            if own:
                self.conn.execute("COMMIT")
        if not chunks:
            return rows
        points: list[tuple[int, Optional[float]]] = []
        for _, has_nan, step_bytes, value_bytes in chunks:
            steps, values = array("q"), array("d")
            steps.frombytes(step_bytes)
            values.frombytes(value_bytes)
            if _BIG_ENDIAN:
                steps.byteswap()
                values.byteswap()
            points.extend(zip(steps, [None if v != v else v for v in values] if has_nan else values))
        points.extend(rows)
        return points

    def history(self, run_id: int) -> list[dict[str, Any]]:
        """Every recorded value of a run: key, step, value, epoch, wall time."""
        return self._rows(
            "SELECT k.name AS key, m.step, m.value, m.epoch, m.wall_time FROM metrics m JOIN metric_keys k "
            "ON k.id = m.key_id WHERE m.run_id = ? ORDER BY k.name, m.step",
            (run_id,),
        )

    def events(self, run_id: int) -> list[dict[str, Any]]:
        """Events of a run in the order they were recorded; payloads decoded from JSON."""
        rows = self._rows(
            "SELECT step, kind, payload, wall_time FROM events WHERE run_id = ? ORDER BY id", (run_id,)
        )
        for row in rows:
            row["payload"] = json.loads(row["payload"]) if row["payload"] is not None else None
        return rows

    def artifacts(self, run_id: int) -> list[dict[str, Any]]:
        """Recorded files of a run."""
        return self._rows(
            "SELECT path, kind, step, size, sha256 FROM artifacts WHERE run_id = ? ORDER BY step, path", (run_id,)
        )

    def run_details(self, run_id: int) -> dict[str, Any]:
        """One run with its params, tags, metric summary, system info and artifacts."""
        run = self.runs(run_ids=[run_id])[0]
        row = self.conn.execute("SELECT system_json, config_json FROM runs WHERE id = ?", (run_id,)).fetchone()
        run["system"] = json.loads(row[0]) if row[0] else {}
        run["params"] = self.params(run_id)
        run["tags"] = self.tags(run_id)
        run["summary"] = self.summary(run_id)
        run["artifacts"] = self.artifacts(run_id)
        run["n_events"] = self.conn.execute("SELECT COUNT(*) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
        return run


def _maybe_number(text: Any) -> Optional[float]:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
