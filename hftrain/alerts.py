"""Alerts: the log, the tracker's event table and a webhook (JSON POST; Slack- and Discord-shaped bodies).

A webhook must never slow or break training, so requests go out from one background thread with a timeout, a
bounded number of retries and a bounded queue; at process exit the queue gets a bounded time to drain. Only the
main process sends.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import weakref
from typing import Any, Callable, Optional

from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["WebhookSender", "Notifier", "alert_body", "ENV_WEBHOOK_URL"]

ENV_WEBHOOK_URL = "HFTRAIN_ALERT_WEBHOOK_URL"
_ICONS = {
    "anomaly": ":warning:",
    "action": ":rotating_light:",
    "stop": ":octagonal_sign:",
    "finish": ":white_check_mark:",
    "failure": ":x:",
}


def _format_for(url: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if "hooks.slack.com" in url:
        return "slack"
    if "discord.com/api/webhooks" in url or "discordapp.com/api/webhooks" in url:
        return "discord"
    return "json"


def _summary(alert: dict[str, Any]) -> str:
    parts = [f"[hftrain] {alert['run_name']} | {alert['event']}: {alert['message']}", f"step {alert['step']}"]
    if alert.get("metrics"):
        parts.append(", ".join(f"{k}={_fmt(v)}" for k, v in alert["metrics"].items()))
    if alert.get("checkpoint"):
        parts.append(f"checkpoint: {alert['checkpoint']}")
    return " | ".join(parts)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _jsonable(value: Any) -> Any:
    # JSON has no NaN/Inf; strict receivers (Slack, Discord) reject them, so send them as strings.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def alert_body(alert: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The JSON body for one alert: `json` (every field plus `text`), `slack` (`text`) or `discord` (`content`)."""
    text = _summary(alert)
    if fmt == "slack":
        return {"text": f"{_ICONS.get(alert['event'], '')} {text}".strip()}
    if fmt == "discord":
        return {"content": text[:2000], "username": "hftrain"}  # Discord rejects content over 2000 characters
    return _jsonable({**alert, "text": text})


class WebhookSender:
    """Posts alert bodies to one URL from a daemon thread: `send` never blocks, a dead endpoint costs nothing."""

    def __init__(
        self,
        url: str,
        fmt: str = "auto",
        timeout: float = 5.0,
        retries: int = 2,
        max_queue: int = 100,
        backoff: float = 0.5,
    ):
        self.url, self.format = url, _format_for(url, fmt)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self_ref = weakref.ref(self)
        atexit.register(lambda: (lambda s: s and s.flush(s.timeout * (s.retries + 1)))(self_ref()))

    def send(self, alert: dict[str, Any]) -> bool:
        """Queue one alert; False (and a log line) when the queue is full."""
        try:
            self._queue.put_nowait(alert_body(alert, self.format))
        except queue.Full:
            logger.warning("hftrain alert dropped: the webhook queue is full (endpoint slow or down)")
            return False
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hftrain-alerts", daemon=True)
                self._thread.start()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait up to `timeout` seconds for queued alerts to go out; True when the queue drained."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            try:
                self._post(body)
            finally:
                self._queue.task_done()

    def _post(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                self.url,
                data=data,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "hftrain"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.sent += 1
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                error = exc
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        self.failed += 1
        # The URL may hold a secret token (Slack, Discord): log the host only.
        host = urllib.request.urlparse(self.url).netloc
        logger.warning(f"hftrain alert to {host} failed after {self.retries + 1} attempt(s): {error}")


class Notifier:
    """One place for what the monitor and the signal handler report: log line, tracker event, webhook alert."""

    def __init__(self, args: Any, settings: Any, tracker_lookup: Optional[Callable[[], list]] = None):
        self.run_name = getattr(args, "run_name", None) or os.path.basename(os.path.normpath(args.output_dir or "run"))
        self.is_main = bool(getattr(args, "process_index", 0) == 0)
        url = settings.alert_webhook_url or os.environ.get(ENV_WEBHOOK_URL) or None
        self.sender = (
            WebhookSender(url, settings.alert_format, settings.alert_timeout, settings.alert_retries)
            if url and self.is_main
            else None
        )
        self.events: list[dict[str, Any]] = []
        self._tracker_lookup = tracker_lookup or (lambda: [])

    def notify(
        self,
        event: str,
        kind: str,
        message: str,
        *,
        step: int,
        metrics: Optional[dict] = None,
        checkpoint: Optional[str] = None,
        level: str = "warning",
    ) -> dict[str, Any]:
        """Report `kind` (e.g. `nonfinite`, `rollback`, `finish`) of category `event` (anomaly, action, stop,
        finish, failure) to the log, the tracker and the webhook; returns the alert dict."""
        alert = {
            "event": event,
            "kind": kind,
            "run_name": self.run_name,
            "step": int(step),
            "message": message,
            "metrics": dict(metrics or {}),
            "checkpoint": checkpoint,
            "time": time.time(),
        }
        self.events.append(alert)
        getattr(logger, level)(_summary(alert))
        self._record(alert)
        if self.sender is not None:
            self.sender.send(alert)
        return alert

    def flush(self) -> None:
        """Wait (bounded by the timeout and retries) until queued webhook alerts are sent, e.g. before exiting."""
        if self.sender is not None:
            self.sender.flush(self.sender.timeout * (self.sender.retries + 1))

    def _record(self, alert: dict[str, Any]) -> None:
        payload = {k: alert[k] for k in ("event", "message", "metrics", "checkpoint")}
        for tracker in self._tracker_lookup():
            try:  # the tracker is optional and written in parallel: never let it break training
                tracker.log_event(kind=alert["kind"], payload=_jsonable(payload), step=alert["step"])
            except Exception as exc:  # noqa: BLE001
                logger.debug(f"tracker event not recorded: {exc}")


class AlertCallback(TrainerCallback):
    """Holds the run's `Notifier` and sends the failure alert when `train()` raises (`on_train_error`, called by
    `hftrain.signals.run_train`: no TrainerCallback event fires on an exception)."""

    def __init__(self, notifier: Notifier):
        self.notifier = notifier

    def on_train_error(self, host: Any, exc: BaseException) -> None:
        from .checkpoints import last_valid_checkpoint

        self.notifier.notify(
            "failure",
            "failure",
            f"training failed: {exc.__class__.__name__}: {exc}",
            step=host.state.global_step,
            checkpoint=last_valid_checkpoint(host.args.output_dir),
            level="error",
        )
