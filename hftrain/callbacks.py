"""The callbacks an hftrain loop adds, chosen from hftrain's settings in `args`.

One function decides which callbacks a run gets, so every loop (transformers' Trainer family through its adapter,
the diffusion loop natively) gets the same set through the host contract (`hftrain.host`). Each feature module owns
its callback class and its state; this module only composes them. Every callback can be switched off: with
`curriculum` and `keep_best_checkpoints` unset, `eval_metrics` empty, `monitor`, `early_stopping_patience`,
`graceful_signals`, `checkpoint_marker` and `tracker` off and no alert webhook, the list is exactly the parent's.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from .config import hftrain_settings
from .tracking import integration as _tracker_integration  # noqa: F401  registers report_to "hftrain"/"sqlite"

__all__ = ["build_callbacks"]


def build_callbacks(host: Any) -> list[TrainerCallback]:
    """The hftrain callbacks `host.args` asks for, in the order they should run (the tracker last, so it records
    what the others logged)."""
    settings = hftrain_settings(host.args)
    callbacks: list[TrainerCallback] = []
    if settings.curriculum_on():
        from .curriculum import curriculum_callbacks

        callbacks += curriculum_callbacks(host, settings)
    notifier = _notifier(host, settings)
    if notifier is not None:
        from .alerts import AlertCallback
        from .monitor import monitor_callbacks

        callbacks.append(AlertCallback(notifier))
        callbacks += monitor_callbacks(host, settings, notifier)
    if settings.graceful_signals:
        from .signals import SignalCallback

        callbacks.append(SignalCallback(notifier))
    if settings.checkpoint_marker:
        from .checkpoints import CheckpointMarkerCallback

        callbacks.append(CheckpointMarkerCallback(host))
    if settings.keep_best_checkpoints:
        from .retention import BestCheckpointsCallback

        callbacks.append(BestCheckpointsCallback(settings.keep_best_checkpoints))
    from .tracking.settings import tracker_callback_for

    tracker = tracker_callback_for(host, settings)
    if tracker is not None:
        callbacks.append(tracker)
    return callbacks


def _notifier(host: Any, settings: Any) -> Any:
    """The run's notifier (log line, tracker event, webhook), when anything reports through it."""
    from .alerts import ENV_WEBHOOK_URL, Notifier

    webhook = settings.alert_webhook_url or os.environ.get(ENV_WEBHOOK_URL)
    if not (settings.monitor or settings.early_stopping_patience or settings.graceful_signals or webhook):
        return None

    def trackers() -> list:
        return [cb for cb in host.callbacks if callable(getattr(cb, "log_event", None))]

    return Notifier(host.args, settings, trackers)
