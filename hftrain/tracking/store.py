"""The run store: one local SQLite file holding experiments, runs, params, metric curves and more.

Plain `sqlite3`, no transformers import, so `hftrain runs ...` starts fast. SQLite practice for a single writer with
concurrent readers: WAL + `synchronous=NORMAL`, every write in a short `BEGIN IMMEDIATE` transaction with a
30 s busy timeout and a bounded retry, integer keys, a metrics table clustered on (run, step, key), and a
summary table (last/min/max and their steps) kept up to date in the same transaction.

`TrackerStore` is one connection composed of a mixin per concern: `schema` (opening a file, migrations, WAL,
housekeeping), `writes` (what a run records), `packed` (packed curve chunks) and `queries` (reads). This module holds
what they share: the connection's state, the write transaction, closing, and deleting runs.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional

from ..errors import TrackerError
from .packed import PackedCurvesMixin
from .queries import QueriesMixin
from .schema import _MIGRATIONS as _MIGRATIONS  # re-exported: tests build a version-1 database from it
from .schema import SCHEMA_VERSION, STATUSES, SchemaMixin, _is_busy, default_db_path
from .writes import WritesMixin, _RunCache

__all__ = ["SCHEMA_VERSION", "STATUSES", "TrackerStore", "default_db_path", "flatten"]


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


class TrackerStore(SchemaMixin, WritesMixin, PackedCurvesMixin, QueriesMixin):
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
        self._in_group = False
        self._group_summaries: dict[tuple[int, int], tuple] = {}
        self._open(create, timeout)

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

    @contextmanager
    def transaction(self, retries: int = 8) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE ... COMMIT`: takes the write lock up front, so it waits (busy timeout) instead of
        failing on a read-to-write upgrade; retried with jitter if the lock is still held after the timeout. Inside
        `group()`, a savepoint instead: the write stays all-or-nothing and commits with the group."""
        if self._in_group:
            yield from self._savepoint()
            return
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

    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("SAVEPOINT hftrain_write")
        pending = dict(self._group_summaries)  # the group's summaries before this write
        try:
            yield self.conn
            self.conn.execute("RELEASE hftrain_write")
        except BaseException:
            self.conn.execute("ROLLBACK TO hftrain_write")
            self.conn.execute("RELEASE hftrain_write")
            # The copies may hold what was just undone: write the group's summaries so far, then reread the copies
            # from the file (which now holds everything of the group but this write).
            self._group_summaries = pending
            self._write_group_summaries()
            self._runs.clear()
            self._key_ids.clear()
            raise

    @contextmanager
    def group(self) -> Iterator[sqlite3.Connection]:
        """Several writes committed as one transaction (group commit), each still all-or-nothing on its own: the
        tracker's writer uses it when logs have queued up behind a commit, so a flood costs one commit per batch
        instead of one per log, and each curve's summary row is written once per batch. Nothing waits for a group:
        it only holds what was already queued."""
        with self.transaction() as conn:
            self._in_group, self._group_summaries = True, {}
            try:
                yield conn
                self._write_group_summaries()
            finally:
                self._in_group, self._group_summaries = False, {}

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
