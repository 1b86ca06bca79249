"""The callbacks an hftrain trainer adds, chosen from hftrain's settings in `args`.

One function decides which callbacks a run gets, so every trainer (and the diffusion loop) gets the same set.
Each feature module owns its callback class; this module only composes them.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .args import hftrain_settings

__all__ = ["build_callbacks"]


def build_callbacks(trainer: Any) -> list[TrainerCallback]:
    """The hftrain callbacks `trainer.args` asks for, in the order they should run."""
    settings = hftrain_settings(trainer.args)  # noqa: F841  (features read it as they are added)
    callbacks: list[TrainerCallback] = []
    # curriculum callbacks

    # evaluation-metric callbacks

    # tracker callback (last, so it records what the others logged)

    return callbacks
