"""The tracker callback hftrain's `tracker_*` settings ask for (the settings validate themselves in
`hftrain.config.groups.TrackerArguments`)."""

from __future__ import annotations

import os
from typing import Any, Optional

__all__ = ["network_filesystem", "tracker_callback_for"]

# Filesystems where SQLite's POSIX locks are unreliable (the SQLite FAQ warns about network filesystems): a
# database there can be corrupted or stall on busy locks. `fuse.NAME` mounts are matched by NAME.
_NETWORK_FS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "ceph",
    "afs",
    "panfs",
    "wekafs",
    "orangefs",
    "pvfs2",
    "glusterfs",
    "sshfs",
    "s3fs",
    "gcsfuse",
    "juicefs",
    "rclone",
    "blobfuse2",
)


def network_filesystem(path: str, mounts: str = "/proc/mounts") -> Optional[str]:
    """The network filesystem type that holds `path` (its nearest existing folder), or None for a local disk or
    where the mount table cannot be read (not Linux)."""
    try:
        with open(mounts, encoding="utf-8") as handle:
            table = [line.split()[1:3] for line in handle if len(line.split()) >= 3]
    except OSError:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    folder = os.path.realpath(folder)
    best, kind = "", None
    for point, fstype in table:
        point = point.replace("\\040", " ")  # /proc/mounts escapes spaces
        inside = folder == point or folder.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    if kind is None:
        return None
    name = kind.removeprefix("fuse.")
    return kind if name in _NETWORK_FS else None


def tracker_callback_for(host: Any, settings: Any) -> Optional[Any]:
    """The `TrackerCallback` for a loop (`hftrain.host.TrainingHost`), or None when `tracker` is off. On world rank
    0 the database is opened here, so a bad path is an error before any training work."""
    from .callback import TrackerCallback, parse_tags

    registered = [cb for cb in host.callbacks if isinstance(cb, TrackerCallback)]
    if not settings.tracker:
        return None  # a `report_to: [hftrain]` instance, if any, stays: the user asked for it by name
    for callback in registered:  # from `report_to: [hftrain]`: replaced by the configured one, never recorded twice
        host.callbacks.remove(callback)

    callback = TrackerCallback(
        db_path=settings.tracker_db,
        experiment=settings.tracker_experiment,
        tags=parse_tags(settings.tracker_tags),
        system_interval=settings.tracker_system_interval,
        heartbeat_timeout=settings.tracker_heartbeat_timeout,
        hash_max_mb=settings.tracker_hash_max_mb,
        trainer_name=type(getattr(host, "trainer", host)).__name__,
        validate=host.args.process_index == 0,
    )
    if host.args.process_index == 0:
        _warn_if_network(callback.db_path)
    return callback


def _warn_if_network(db_path: str) -> None:
    kind = network_filesystem(db_path)
    if kind is None:
        return
    from transformers.utils import logging

    logging.get_logger(__name__).warning(
        f"tracker_db {db_path} is on a network filesystem ({kind}), where SQLite's file locking is unreliable: "
        "keep the database on a local disk of the rank-0 node (e.g. --tracker_db $TMPDIR/hftrain/runs.db) and "
        "copy it to shared storage after the job (scripts/launch.slurm does both)"
    )
