"""Drop-in TRL trainers: `SFTTrainer` and `DPOTrainer` with `HFTrainMixin`.

Kept apart from `hftrain.trainers` because importing TRL takes seconds.
"""

from __future__ import annotations

import trl

from .trainers import HFTrainMixin

__all__ = ["SFTTrainer", "DPOTrainer"]


class SFTTrainer(HFTrainMixin, trl.SFTTrainer):
    """`trl.SFTTrainer` with hftrain's callbacks. Same constructor, same training."""


class DPOTrainer(HFTrainMixin, trl.DPOTrainer):
    """`trl.DPOTrainer` with hftrain's callbacks. Same constructor, same training."""
