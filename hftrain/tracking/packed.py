"""Packed curves: copies of curve prefixes as little-endian int64 steps and float64 values (NaN for NaN) in
`metric_chunks`, so a long curve reads as a few blobs instead of one row and one Python tuple per point. The metrics
rows stay the source of truth (see the v2 migration in `schema`). Used by `TrackerStore` through `PackedCurvesMixin`.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from bisect import bisect_left
from typing import Optional

from .writes import _RunCache

_NAN = float("nan")
_BIG_ENDIAN = sys.byteorder == "big"  # chunks are little-endian on disk, so a database file moves between machines


class PackedCurvesMixin:
    """Packing a run's curves into chunks, dropping the chunks a write overtakes, and reading curves through them.
    Writes run in `transaction()` (see `TrackerStore`) on the run copies of `WritesMixin._run_cache`."""

    conn: sqlite3.Connection

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
        that step later is never behind a chunk) and once at the end of training (everything). The points come from
        the rows this connection committed (`_RunCache.tail`); when those are unknown, from the table."""
        packed_points, left = 0, []
        with self.transaction():
            cache = self._run_cache(run_id)  # current: re-read if another connection wrote since
            limit = (1 << 62) if below_step is None else int(below_step)
            tail = self._read_tail(run_id, cache) if cache.tail is None else cache.tail
            for key_id, (steps, values) in _curves(tail).items():
                count = bisect_left(steps, limit)
                if count and count >= min_points:
                    self._write_chunk(run_id, key_id, steps[:count], values[:count])
                    packed_points += count
                    cache.packed[key_id] = steps[count - 1]
                else:
                    count = 0
                left.extend((run_id, key_id, step, value) for step, value in zip(steps[count:], values[count:]))
        cache.tail, cache.tail_points = [left], len(left)  # committed: the packed points leave the tail
        return packed_points

    def _read_tail(self, run_id: int, cache: "_RunCache") -> list:
        """The run's rows that no chunk covers yet, read in one pass from its least-packed curve on, in the shape of
        `_RunCache.tail`."""
        after = {key_id: cache.packed.get(key_id, -1) for key_id in cache.summaries}  # every curve of the run
        if not after:
            return []
        rows = self.conn.execute(
            "SELECT run_id, key_id, step, value FROM metrics WHERE run_id = ? AND step > ? ORDER BY step",
            (run_id, min(after.values())),
        ).fetchall()
        return [[row for row in rows if row[2] > after.get(row[1], 1 << 62)]]

    def _write_chunk(self, run_id: int, key_id: int, steps: list, values: list) -> None:
        step_array = array("q", steps)
        value_array = array("d", [_NAN if v is None else v for v in values])
        if _BIG_ENDIAN:
            step_array.byteswap()
            value_array.byteswap()
        self.conn.execute(
            "INSERT INTO metric_chunks(run_id, key_id, first_step, last_step, points, has_nan, steps, vals) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, key_id, steps[0], steps[-1], len(steps), int(None in values), step_array.tobytes(),
             value_array.tobytes()),
        )  # fmt: skip

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


def _curves(tail: list) -> dict[int, tuple[list, list]]:
    """Per curve, the steps in order and their values (NaN as None, as the rows hold them; a step written twice
    keeps its last value) of a tail's row tuples `(run_id, key_id, step, value, ...)`."""
    curves: dict[int, tuple[list, list]] = {}
    for rows in tail:
        for row in rows:
            key_id, step, value = row[1], row[2], row[3]
            if value is not None and value != value:
                value = None
            curve = curves.get(key_id)
            if curve is None:
                curves[key_id] = ([step], [value])
                continue
            steps, values = curve
            if step > steps[-1]:
                steps.append(step)
                values.append(value)
                continue
            index = bisect_left(steps, step)
            if steps[index] == step:
                values[index] = value
            else:
                steps.insert(index, step)
                values.insert(index, value)
    return curves
