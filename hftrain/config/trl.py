"""hftrain's versions of TRL's configs: TRL's class plus `HFTrainArguments`, TRL's positional order kept.

Kept apart from `hftrain.config.classes` because importing TRL takes seconds; plain `Trainer` users never pay it.
"""

from __future__ import annotations

from dataclasses import dataclass

import trl
from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

from ..errors import ConfigError
from .groups import HFTrainArguments

__all__ = ["DPOConfig", "GRPOConfig", "KTOConfig", "RLOOConfig", "RewardConfig", "SFTConfig"]


class _TRLConfigMixin:
    """TRL turns `bf16=None` into True, which transformers then refuses on a machine without bf16 ("Your setup
    doesn't support bf16/gpu"). hftrain keeps TRL's choice where bf16 can run and falls back to fp32 elsewhere,
    asking the very probes transformers' own validation runs next (so no probe is added)."""

    def __post_init__(self):
        self.remember_given_values()
        self.validate_hftrain()
        if self.bf16 is None and not self.fp16:
            self.bf16 = not self.use_cpu and (is_torch_bf16_gpu_available() or is_torch_xla_available())
        super().__post_init__()


class _RolloutGroupsMixin:
    """GRPO and RLOO sample prompts with their own sampler (each prompt repeated `num_generations` times in one
    batch, so the rewards of a group can be compared); a curriculum sampler would break the groups."""

    def validate_hftrain(self) -> None:
        super().validate_hftrain()
        if self.curriculum_on():
            raise ConfigError(
                f"curriculum: not available for {type(self).__name__.removesuffix('Config')} (its sampler repeats "
                "each prompt num_generations times in one batch); order the prompts in the dataset instead"
            )


@dataclass
class SFTConfig(_TRLConfigMixin, HFTrainArguments, trl.SFTConfig):
    """`trl.SFTConfig` plus hftrain's fields (keyword-only). `bf16` defaults to True only where it can run."""


@dataclass
class DPOConfig(_TRLConfigMixin, HFTrainArguments, trl.DPOConfig):
    """`trl.DPOConfig` plus hftrain's fields (keyword-only). `bf16` defaults to True only where it can run."""


@dataclass
class GRPOConfig(_RolloutGroupsMixin, _TRLConfigMixin, HFTrainArguments, trl.GRPOConfig):
    """`trl.GRPOConfig` plus hftrain's fields (keyword-only). `bf16` defaults to True only where it can run."""


@dataclass
class RLOOConfig(_RolloutGroupsMixin, _TRLConfigMixin, HFTrainArguments, trl.RLOOConfig):
    """`trl.RLOOConfig` plus hftrain's fields (keyword-only). `bf16` defaults to True only where it can run."""


@dataclass
class KTOConfig(_TRLConfigMixin, HFTrainArguments, trl.KTOConfig):
    """`trl.KTOConfig` plus hftrain's fields (keyword-only). `bf16` defaults to True only where it can run."""


@dataclass
class RewardConfig(_TRLConfigMixin, HFTrainArguments, trl.RewardConfig):
    """`trl.RewardConfig` plus hftrain's fields (keyword-only). `bf16` defaults to True only where it can run."""
