"""`report_to: [hftrain]` (or `sqlite`) for any `transformers.Trainer`, hftrain's or the plain one.

Importing this module registers `ReportToTrackerCallback` in transformers' `INTEGRATION_TO_CALLBACK` under the names
in `REPORT_TO_NAMES`. transformers instantiates the class with no arguments, so it reads its settings when training
starts: from hftrain's tracker fields when `args` has them, else from `HFTRAIN_TRACKER_DB` / `HFTRAIN_EXPERIMENT`.
hftrain's trainers import this module (so the name is known before `Trainer.__init__` checks it) and replace the
registered instance with their own configured callback, so a run is never recorded twice.

Limits (transformers', see README.md, "Experiment tracker"): `report_to="all"` does not include it, and `--report_to` on the
command line takes one name (lists only from YAML).
"""

from __future__ import annotations

from typing import Any

import transformers.integrations.integration_utils as _integration_utils

from .callback import TrackerCallback, parse_tags

__all__ = ["REPORT_TO_NAMES", "ReportToTrackerCallback", "register"]

REPORT_TO_NAMES = ("hftrain", "sqlite")


class ReportToTrackerCallback(TrackerCallback):
    """The tracker as a `report_to` integration: no constructor arguments; settings are read from `args` (hftrain's
    `tracker_*` fields) or the environment at the first event that needs them."""

    def __init__(self, **kwargs):
        # transformers builds it with no arguments; `restore_callback_states_from_checkpoint` rebuilds it from the
        # arguments saved in the checkpoint, which are then its settings
        super().__init__(**kwargs)
        self._configured = bool(kwargs)

    def _configure(self, args: Any) -> None:
        if self._configured:
            return
        self._configured = True
        fresh = TrackerCallback(
            db_path=getattr(args, "tracker_db", None),
            experiment=getattr(args, "tracker_experiment", None),
            tags=parse_tags(getattr(args, "tracker_tags", None)),
            system_interval=getattr(args, "tracker_system_interval", 30.0),
            heartbeat_timeout=getattr(args, "tracker_heartbeat_timeout", 300.0),
            hash_max_mb=getattr(args, "tracker_hash_max_mb", 100.0),
        )
        self.db_path, self.experiment, self.tags = fresh.db_path, fresh.experiment, fresh.tags
        self.system_interval, self.heartbeat_timeout = fresh.system_interval, fresh.heartbeat_timeout
        self.hash_max_mb = fresh.hash_max_mb

    def on_train_begin(self, args, state, control, **kwargs):
        self._configure(args)
        return super().on_train_begin(args, state, control, **kwargs)

    def on_log(self, args, state, control, **kwargs):
        self._configure(args)
        return super().on_log(args, state, control, **kwargs)


def register() -> None:
    """Make `report_to` accept the names in `REPORT_TO_NAMES` (idempotent)."""
    for name in REPORT_TO_NAMES:
        _integration_utils.INTEGRATION_TO_CALLBACK.setdefault(name, ReportToTrackerCallback)


register()
