"""The callbacks an hftrain trainer adds, chosen from hftrain's settings in `args`.

One function decides which callbacks a run gets, so every trainer (and the diffusion loop) gets the same set.
Each feature module owns its callback class; this module only composes them.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .args import hftrain_settings
from .tracking import integration as _tracker_integration  # noqa: F401  registers report_to "hftrain"/"sqlite"

__all__ = ["build_callbacks"]


def build_callbacks(trainer: Any) -> list[TrainerCallback]:
    """The hftrain callbacks `trainer.args` asks for, in the order they should run."""
    settings = hftrain_settings(trainer.args)  # noqa: F841  (features read it as they are added)
    callbacks: list[TrainerCallback] = []
    # curriculum callbacks
    if settings.curriculum is not None:
        from .curriculum import curriculum_callbacks

        callbacks += curriculum_callbacks(trainer)

    # evaluation-metric callbacks

    # monitor callbacks: early stopping, anomalies/overfitting, checkpoint marker + graceful signals
    from .monitor import monitor_callbacks

    callbacks += monitor_callbacks(trainer, settings)

    # tracker callback (last, so it records what the others logged)
    from .tracking.settings import tracker_callback_for

    tracker = tracker_callback_for(trainer, settings)
    if tracker is not None:
        callbacks.append(tracker)

    return callbacks
