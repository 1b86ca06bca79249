"""Checks for the tracker's fields of `HFTrainArguments`, and the callback they ask for."""

from __future__ import annotations

import os
from typing import Any, Optional

from ..errors import ConfigError

__all__ = ["check_tracker_settings", "tracker_callback_for"]


def check_tracker_settings(settings: Any) -> None:
    """Raise `ConfigError` naming the field for a tracker setting out of range (called from `hftrain_post_init`)."""
    if not isinstance(settings.tracker, bool):
        raise ConfigError(f"tracker: expected true or false, got {settings.tracker!r}")
    if settings.tracker_db is not None and (not isinstance(settings.tracker_db, str) or not settings.tracker_db.strip()):
        raise ConfigError(f"tracker_db: expected a file path, got {settings.tracker_db!r}")
    if settings.tracker_db and os.path.isdir(os.path.expanduser(settings.tracker_db)):
        raise ConfigError(f"tracker_db: {settings.tracker_db!r} is a directory; expected a .db file path")
    if settings.tracker_system_interval < 0:
        raise ConfigError(
            f"tracker_system_interval: expected seconds >= 0 (0 turns sampling off), got {settings.tracker_system_interval}"
        )
    if settings.tracker_heartbeat_timeout <= 0:
        raise ConfigError(f"tracker_heartbeat_timeout: expected seconds > 0, got {settings.tracker_heartbeat_timeout}")
    if 0 < settings.tracker_heartbeat_timeout <= settings.tracker_system_interval:
        raise ConfigError(
            f"tracker_heartbeat_timeout: {settings.tracker_heartbeat_timeout} s must exceed tracker_system_interval "
            f"({settings.tracker_system_interval} s), or live runs would read as crashed"
        )
    if settings.tracker_hash_max_mb < 0:
        raise ConfigError(f"tracker_hash_max_mb: expected megabytes >= 0, got {settings.tracker_hash_max_mb}")
    for item in (settings.tracker_tags or "").split(","):
        if item.strip() and not item.partition("=")[0].strip():
            raise ConfigError(f"tracker_tags: expected key=value[,key=value...], got {settings.tracker_tags!r}")


def tracker_callback_for(trainer: Any, settings: Any) -> Optional[Any]:
    """The `TrackerCallback` for `trainer`, or None when `tracker` is off. On world rank 0 the database is opened
    here, so a bad path is an error before any training work."""
    from .callback import TrackerCallback, parse_tags

    registered = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrackerCallback)]
    if not settings.tracker:
        return None  # a `report_to: [hftrain]` instance, if any, stays: the user asked for it by name
    for callback in registered:  # from `report_to: [hftrain]`: replaced by the configured one, never recorded twice
        trainer.callback_handler.remove_callback(callback)

    return TrackerCallback(
        db_path=settings.tracker_db,
        experiment=settings.tracker_experiment,
        tags=parse_tags(settings.tracker_tags),
        system_interval=settings.tracker_system_interval,
        heartbeat_timeout=settings.tracker_heartbeat_timeout,
        hash_max_mb=settings.tracker_hash_max_mb,
        trainer_name=type(trainer).__name__,
        validate=trainer.args.process_index == 0,
    )
