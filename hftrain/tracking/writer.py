"""The tracker's writer thread: the training loop hands it each write and goes on; it commits them in order.

A commit costs about 0.1 ms here (most of it the WAL write), and a database that eight jobs share can be locked for
a while; neither should ever hold up a training step. So the callback builds each write on the training thread
(cheap) and queues it; this thread runs them in the order they came, on the one long-lived connection it owns while
training runs. A log that finds the queue empty is committed alone, at once; logs that queued up behind a commit
(a flood, or a database another job held locked) are committed together as one transaction (group commit, at most
`_MAX_GROUP`), each still all-or-nothing through its own savepoint. A flush waits for everything queued before it. It also does the housekeeping off the
training thread: WAL checkpoints when the queue is idle, instead of inside whichever commit crosses SQLite's
automatic threshold.

What a kill -9 can cost is what is still queued, normally nothing (the queue drains within a millisecond of each
log). The callback waits for the queue before every checkpoint is saved, so a resume always finds every step up to
its checkpoint in the database.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional

from .store import TrackerStore

__all__ = ["TrackerWriter"]

_STOP = object()
# WAL frames (pages) after which the writer's own commits checkpoint even when the queue never idles (a flood of
# logs): 40 MB of 4 KiB pages, instead of SQLite's 4 MB, because each checkpoint ends in an fsync.
_AUTOCHECKPOINT_PAGES = 10_000
_IDLE_CHECKPOINT_WRITES = 100  # checkpoint once the queue is idle and this many writes have gone in since the last
_MAX_GROUP = 256  # writes committed together at most, so one commit never holds the lock for long


class TrackerWriter(threading.Thread):
    """Runs queued writes against `store` on one daemon thread, in order.

    Args:
        store: the connection this thread uses while it runs (nobody else may use it until `close` returns).
        report: called with `(what, step, exception)` when a write fails; the thread carries on.
    """

    def __init__(self, store: TrackerStore, report: Callable[[str, int, BaseException], None]):
        super().__init__(name="hftrain-tracker-writer", daemon=True)
        self.store = store
        self._report = report
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._writes_since_checkpoint = 0
        store.conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")

    def submit(self, what: str, step: int, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue `write(*args, **kwargs)`; `what` and `step` name it if it fails."""
        self._queue.put((what, step, write, args, kwargs))

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before this call has been written; False if that took over `timeout`."""
        if not self.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put((None, 0, done.set, (), {}))
        return done.wait(timeout)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Write what is queued, then stop; True once the thread has ended (the store is the caller's again)."""
        if self.is_alive():
            self._queue.put(_STOP)
            self.join(timeout)
        return not self.is_alive()

    def run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            while len(items) < _MAX_GROUP and items[-1] is not _STOP:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if items[-1] is _STOP:
                items.pop()
                stopping = True
            self._run_items(items)
            if self._queue.empty() and self._writes_since_checkpoint >= _IDLE_CHECKPOINT_WRITES:
                self._writes_since_checkpoint = 0
                self.store.checkpoint()  # PASSIVE, never raises: a busy database checkpoints later
        if self._writes_since_checkpoint:
            self.store.checkpoint()

    def _run_items(self, items: list) -> None:
        """Writes in order; a flush marker (`what` None) runs once every write queued before it is committed."""
        group: list = []
        for item in items:
            if item[0] is None:
                self._commit(group)
                group = []
                self._run(item)
            else:
                group.append(item)
        self._commit(group)

    def _commit(self, group: list) -> None:
        if len(group) > 1:
            try:
                with self.store.group():
                    for item in group:
                        self._run(item)
            except Exception:  # the group's own BEGIN or COMMIT failed: nothing of it was kept, so each write
                for item in group:  # is tried again alone, and one that fails again is reported as itself
                    self._run(item)
        elif group:
            self._run(group[0])
        self._writes_since_checkpoint += len(group)

    def _run(self, item: tuple) -> None:
        what, step, write, args, kwargs = item
        try:
            write(*args, **kwargs)
        except Exception as exc:  # a record is never worth stopping training for: report, go on
            self._report(what or "tracker write", step, exc)
