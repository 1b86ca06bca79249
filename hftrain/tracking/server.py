"""`hftrain runs serve`: the report page (report.py) served on a local port and kept current while runs train.

The page polls `POST api/update` with the last step it has of each curve and appends what came since, so new
points appear without a reload (zoom, hidden runs and the sliders stay as they are). The database is opened
read-only (SQLite `mode=ro`): the server never writes, never takes the write lock, and each read is its own short
transaction, so the training process never waits for it and its WAL checkpoints are never held back for longer than
one query. Only the standard library's `http.server`; bound to 127.0.0.1 unless told otherwise, and requests whose
`Host` is not this machine are refused (a web page elsewhere cannot read the runs through DNS rebinding).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from ..errors import TrackerError
from .report import plotly_js, render_report, report_data
from .schema import SCHEMA_VERSION
from .store import TrackerStore

__all__ = ["ReadOnlyStore", "LiveReport", "make_server"]

_MAX_BODY = 8 << 20  # bytes of a POST body: the known steps of a few thousand curves
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ReadOnlyStore(TrackerStore):
    """A `TrackerStore` on a read-only connection (`file:...?mode=ro`): every read of the store works, no write can.
    The file must already be a database of this hftrain's schema (upgrading is a write: `hftrain runs list` does
    it)."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.timeout = timeout
        self._key_ids, self._runs, self._data_version = {}, {}, None
        if not os.path.isfile(self.path):
            raise TrackerError(f"tracker database {self.path}: no such file (set --db or HFTRAIN_TRACKER_DB)")
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise TrackerError(f"tracker database {self.path}: cannot be read ({exc})") from None
        if "hftrain_meta" not in tables:
            self.close()
            raise TrackerError(f"tracker database {self.path}: not an hftrain tracker database")
        if version != SCHEMA_VERSION:
            self.close()
            hint = "upgrade hftrain" if version > SCHEMA_VERSION else "run `hftrain runs list` once to upgrade it"
            raise TrackerError(
                f"tracker database {self.path}: schema version {version}, expected {SCHEMA_VERSION}; {hint}"
            )


class LiveReport:
    """What the server serves: the page for the selected runs and the updates after what a page has.

    `select(store)` names the runs (by id) at each request, so runs that start later and match the filters join the
    page. One read-only connection, used by one request at a time."""

    def __init__(
        self,
        db_path: str,
        select: Callable[[TrackerStore], list[int]],
        *,
        metrics: Optional[list[str]] = None,
        smoothing: float = 0.6,
        interval: float = 2.0,
        title: str = "hftrain runs (live)",
    ):
        self.store = ReadOnlyStore(db_path)
        self.select, self.metrics, self.smoothing, self.interval, self.title = (
            select,
            metrics,
            smoothing,
            interval,
            title,
        )
        self.lock = threading.Lock()
        self.script = plotly_js().encode("utf-8")

    def page(self) -> bytes:
        with self.lock:
            ids = self.select(self.store)
            return render_report(
                self.store,
                ids,
                metrics=self.metrics,
                smoothing=self.smoothing,
                title=self.title,
                live={"interval": self.interval, "samples_token": self._samples_token(ids)},
            ).encode("utf-8")

    def update(self, known: dict[str, dict[str, int]], samples_token: Optional[str]) -> dict[str, Any]:
        """The runs as they are now, the curve points after `known`, and the samples tables if they changed since
        the page's `samples_token`."""
        with self.lock:
            ids = self.select(self.store)
            token = self._samples_token(ids)
            data = report_data(self.store, ids, self.metrics, known, samples=token != samples_token)
            data["samples_token"] = token
            return data

    def _samples_token(self, ids: list[int]) -> str:
        """Changes whenever a selected run records a samples table (or another log event that may name a file)."""
        marks = ",".join(str(int(i)) for i in ids) or "NULL"
        count, last = self.store.conn.execute(
            f"SELECT COUNT(*), MAX(id) FROM events WHERE run_id IN ({marks}) AND kind IN ('samples', 'log')"
        ).fetchone()
        return f"{marks}:{count}:{last}"

    def close(self) -> None:
        self.store.close()


def _known(body: Any) -> dict[str, dict[str, int]]:
    """The page's `known` steps, checked: run id -> metric -> step."""
    known = body.get("known") if isinstance(body, dict) else None
    if not isinstance(known, dict):
        return {}
    out = {}
    for run, per in known.items():
        if isinstance(per, dict):
            out[str(run)] = {str(k): int(v) for k, v in per.items() if isinstance(v, int) and not isinstance(v, bool)}
    return out


class _Handler(BaseHTTPRequestHandler):
    server_version = "hftrain-runs-serve"
    app: LiveReport  # set on the subclass `make_server` builds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the parent's signature)
        pass  # one line per poll would bury the address the user needs; errors reach the page instead

    def _send(self, status: int, kind: str, body: bytes, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _host_ok(self) -> bool:
        if self.server.server_address[0] not in ("127.0.0.1", "::1"):
            return True  # served to the network on purpose (--host)
        host = self.headers.get("Host") or ""
        name = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.split(":")[0]
        return name in _LOCAL_HOSTS

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urllib.parse.urlsplit(self.path).path
        if not self._host_ok():
            return self._send(403, "text/plain; charset=utf-8", b"forbidden: unexpected Host header")
        try:
            if path in ("/", "/index.html"):
                return self._send(200, "text/html; charset=utf-8", self.app.page())
            if path == "/plotly.min.js":
                return self._send(200, "text/javascript; charset=utf-8", self.app.script, cache="max-age=3600")
        except (TrackerError, sqlite3.Error) as exc:
            return self._send(503, "text/plain; charset=utf-8", f"tracker database: {exc}".encode())
        self._send(404, "text/plain; charset=utf-8", b"not found")

    def do_POST(self) -> None:  # noqa: N802
        if urllib.parse.urlsplit(self.path).path != "/api/update" or not self._host_ok():
            return self._send(404, "text/plain; charset=utf-8", b"not found")
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            return self._send(413, "text/plain; charset=utf-8", b"request too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            token = body.get("samples_token") if isinstance(body, dict) else None
            reply = self.app.update(_known(body), token if isinstance(token, str) else None)
        except (ValueError, TypeError) as exc:
            return self._send(400, "text/plain; charset=utf-8", f"bad request: {exc}".encode())
        except (TrackerError, sqlite3.Error) as exc:
            return self._send(503, "text/plain; charset=utf-8", f"tracker database: {exc}".encode())
        self._send(200, "application/json", json.dumps(reply, separators=(",", ":"), allow_nan=False).encode())


def make_server(app: LiveReport, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for `app` on `host:port` (0: a free port; the bound one is `server.server_address[1]`).
    Run it with `serve_forever()`, stop it with `shutdown()` and `server_close()`."""
    handler = type("Handler", (_Handler,), {"app": app})
    server_class = ThreadingHTTPServer
    if ":" in host:  # an IPv6 address such as ::1
        server_class = type("Server6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server
