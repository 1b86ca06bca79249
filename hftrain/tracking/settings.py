"""The tracker callback hftrain's `tracker_*` settings ask for (the settings validate themselves in
`hftrain.config.groups.TrackerArguments`)."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["tracker_callback_for"]


def tracker_callback_for(host: Any, settings: Any) -> Optional[Any]:
    """The `TrackerCallback` for a loop (`hftrain.host.TrainingHost`), or None when `tracker` is off. On world rank
    0 the database is opened here, so a bad path is an error before any training work."""
    from .callback import TrackerCallback, parse_tags

    registered = [cb for cb in host.callbacks if isinstance(cb, TrackerCallback)]
    if not settings.tracker:
        return None  # a `report_to: [hftrain]` instance, if any, stays: the user asked for it by name
    for callback in registered:  # from `report_to: [hftrain]`: replaced by the configured one, never recorded twice
        host.callbacks.remove(callback)

    return TrackerCallback(
        db_path=settings.tracker_db,
        experiment=settings.tracker_experiment,
        tags=parse_tags(settings.tracker_tags),
        system_interval=settings.tracker_system_interval,
        heartbeat_timeout=settings.tracker_heartbeat_timeout,
        hash_max_mb=settings.tracker_hash_max_mb,
        trainer_name=type(getattr(host, "trainer", host)).__name__,
        validate=host.args.process_index == 0,
    )
