"""Writing runs: everything a run records (the run itself, params, tags, metrics with their summary, events,
artifacts, status) and the copies of a run a writing connection keeps. Used by `TrackerStore` through `WritesMixin`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ..errors import TrackerError
from .schema import STATUSES

_SUMMARY_REPLACE = (
    "INSERT OR REPLACE INTO metric_summary(run_id, key_id, last_step, last_value, min_value, min_step, max_value, "
    "max_step) VALUES(?, ?, ?, ?, ?, ?, ?, ?)"
)
_METRIC_UPSERT = (
    "INSERT INTO metrics(run_id, key_id, step, value, epoch, wall_time) VALUES(?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(run_id, step, key_id) DO UPDATE SET value = excluded.value, epoch = excluded.epoch, "
    "wall_time = excluded.wall_time"
)


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
    # The rows of the run that no chunk covers yet, as this connection committed them (each log's row tuples, kept
    # as they were written: one append per log), so packing builds its chunks from memory instead of reading the
    # rows back (measured: a third of the per-log write cost). None when unknown (a run written elsewhere or
    # resumed, a write behind the chunks); packing then reads the rows once and starts a new tail from there.
    tail: Optional[list] = None
    tail_points: int = 0


_TAIL_MAX_POINTS = 200_000  # a store that is never packed stops keeping a tail past this (it reads rows instead)


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


class WritesMixin:
    """Every write of a run, each in one `transaction()` (see `TrackerStore`). A write that overtakes packed chunks
    drops them through `_invalidate_chunks` (see `PackedCurvesMixin`)."""

    path: str
    conn: sqlite3.Connection
    _key_ids: dict[str, int]
    _runs: dict[int, _RunCache]

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
                "INSERT INTO experiments(name, created_at) VALUES(?, ?) ON CONFLICT(name) DO NOTHING",
                (name, time.time()),
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

    def _write_group_summaries(self) -> None:
        """The summaries a group's logs moved, each written once (`TrackerStore.group`)."""
        rows = [(run_id, kid, *new) for (run_id, kid), new in self._group_summaries.items()]
        self._group_summaries = {}
        if rows:
            self.conn.executemany(_SUMMARY_REPLACE, rows)

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
                    cache.tail = None
            conn.executemany(_METRIC_UPSERT, rows)
            summaries = cache.summaries
            updated = [(kid, _fold(summaries.get(kid), step, value)) for _, kid, _, value, _, _ in rows]
            if self._in_group:  # one summary row per curve for the whole group, written before it commits
                self._group_summaries.update(((run_id, kid), new) for kid, new in updated)
            else:
                conn.executemany(_SUMMARY_REPLACE, [(run_id, kid, *new) for kid, new in updated])
            if events:
                conn.executemany(
                    "INSERT INTO events(run_id, step, kind, payload, wall_time) VALUES(?, ?, ?, ?, ?)",
                    [(run_id, step, kind, json.dumps(p, default=str), now) for kind, p in events],
                )
            beat = now - cache.heartbeat_at >= cache.heartbeat_every
            if beat:
                conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (now, run_id))
        # committed: only now does this connection's copy of the summary (and of the unpacked rows) move on
        summaries.update(updated)
        if cache.tail is not None:
            cache.tail.append(rows)
            cache.tail_points += len(rows)
            if cache.tail_points > _TAIL_MAX_POINTS:
                cache.tail = None
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
                "WHERE run_id = ?",
                (run_id,),
            ):
                cache.summaries[kid] = tuple(summary)
            cache.packed = dict(
                self.conn.execute(
                    "SELECT key_id, MAX(last_step) FROM metric_chunks WHERE run_id = ? GROUP BY key_id", (run_id,)
                )
            )
            if not cache.summaries:  # no rows yet: every row to come is this connection's
                cache.tail = []
            self._runs[run_id] = cache
        return cache

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
                "INSERT INTO artifacts(run_id, path, kind, step, size, sha256, created_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, path) DO UPDATE SET kind = excluded.kind, "
                "step = excluded.step, size = excluded.size, sha256 = excluded.sha256, "
                "created_at = excluded.created_at",
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
