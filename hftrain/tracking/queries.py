"""Reading runs: listing and filtering runs (with the status a reader sees), resolving a run reference, and a run's
params, tags, summary, curves, history, events and artifacts. Plain SELECTs in autocommit mode, so a reader holds no
lock between calls. Used by `TrackerStore` through `QueriesMixin`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from typing import Any, Iterable, Optional

from ..errors import TrackerError
from .schema import STATUSES

# The status a reader sees: a run still marked running whose heartbeat is older than its timeout has crashed.
_STATUS_SQL = (
    "CASE WHEN r.status = 'running' AND r.heartbeat < (:now - r.heartbeat_timeout) THEN 'crashed' ELSE r.status END"
)


class QueriesMixin:
    """Every read of the store except packed curves (see `PackedCurvesMixin.curve_points`)."""

    conn: sqlite3.Connection

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
            where.append(_param_condition(i, key, op, value, args))
        for i, (key, value) in enumerate(tags):
            args[f"tk{i}"], args[f"tv{i}"] = key, value
            where.append(
                f"EXISTS (SELECT 1 FROM tags t WHERE t.run_id = r.id AND t.key = :tk{i} AND t.value = :tv{i})"
            )
        if run_ids is not None:
            ids = [int(i) for i in run_ids]
            where.append(f"r.id IN ({','.join(str(i) for i in ids) or 'NULL'})")
        sql = (
            f"SELECT r.id, r.uuid, e.name AS experiment, r.name, {_STATUS_SQL} AS status, r.start_time, r.end_time, "
            "r.heartbeat, COALESCE((SELECT MAX(s.last_step) FROM metric_summary s WHERE s.run_id = r.id), "
            "r.last_step) AS last_step, r.trainer, r.output_dir, r.error, r.git_commit, r.git_branch, r.git_dirty, "
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
            "FROM metric_summary s WHERE s.key_id = (SELECT id FROM metric_keys WHERE name = ?)"
            + where
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

    def history(self, run_id: int) -> list[dict[str, Any]]:
        """Every recorded value of a run: key, step, value, epoch, wall time."""
        return self._rows(
            "SELECT k.name AS key, m.step, m.value, m.epoch, m.wall_time FROM metrics m JOIN metric_keys k "
            "ON k.id = m.key_id WHERE m.run_id = ? ORDER BY k.name, m.step",
            (run_id,),
        )

    def events(self, run_id: int) -> list[dict[str, Any]]:
        """Events of a run in the order they were recorded; payloads decoded from JSON."""
        rows = self._rows("SELECT step, kind, payload, wall_time FROM events WHERE run_id = ? ORDER BY id", (run_id,))
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


def _param_condition(i: int, key: str, op: str, value: str, args: dict[str, Any]) -> str:
    """The WHERE condition of the `i`-th param filter of `QueriesMixin.runs`; its values are bound into `args`."""
    args[f"pk{i}"], args[f"pv{i}"] = key, value
    if op in ("=", "!="):
        args[f"pn{i}"] = _maybe_number(value)  # "1e-3" matches a learning rate stored as 0.001
        cond = f"(p.value = :pv{i} OR p.value_num = :pn{i})"
        test = "EXISTS" if op == "=" else "NOT EXISTS"
        return f"{test} (SELECT 1 FROM params p WHERE p.run_id = r.id AND p.key = :pk{i} AND {cond})"
    if op in ("<", "<=", ">", ">="):
        number = _maybe_number(value)
        if number is None:
            raise TrackerError(f"--param {key}{op}{value}: {op} needs a number, got {value!r}")
        args[f"pv{i}"] = number
        return f"EXISTS (SELECT 1 FROM params p WHERE p.run_id = r.id AND p.key = :pk{i} AND p.value_num {op} :pv{i})"
    raise TrackerError(f"param filter op: expected one of = != < <= > >=, got {op!r}")


def _maybe_number(text: Any) -> Optional[float]:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
