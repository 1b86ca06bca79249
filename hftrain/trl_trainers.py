"""Drop-in TRL trainers: TRL's six stable trainers with `HFTrainMixin`.

Kept apart from `hftrain.trainers` because importing TRL takes seconds.
"""

from __future__ import annotations

import trl

from .trainers import HFTrainMixin

__all__ = ["DPOTrainer", "GRPOTrainer", "KTOTrainer", "RLOOTrainer", "RewardTrainer", "SFTTrainer"]


class SFTTrainer(HFTrainMixin, trl.SFTTrainer):
    """`trl.SFTTrainer` with hftrain's callbacks. Same constructor, same training."""


class DPOTrainer(HFTrainMixin, trl.DPOTrainer):
    """`trl.DPOTrainer` with hftrain's callbacks. Same constructor, same training."""


class GRPOTrainer(HFTrainMixin, trl.GRPOTrainer):
    """`trl.GRPOTrainer` with hftrain's callbacks and task metrics from greedy completions. Same training."""


class RLOOTrainer(HFTrainMixin, trl.RLOOTrainer):
    """`trl.RLOOTrainer` with hftrain's callbacks and task metrics from greedy completions. Same training."""


class KTOTrainer(HFTrainMixin, trl.KTOTrainer):
    """`trl.KTOTrainer` with hftrain's callbacks. Same constructor, same training."""


class RewardTrainer(HFTrainMixin, trl.RewardTrainer):
    """`trl.RewardTrainer` with hftrain's callbacks. Same constructor, same training."""
