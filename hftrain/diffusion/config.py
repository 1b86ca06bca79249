"""`DiffusionConfig`: hftrain's `TrainingArguments` (transformers' + hftrain's fields) plus the diffusion fields.

`learning_rate`, `per_device_train_batch_size`, `gradient_accumulation_steps`, `max_steps`/`num_train_epochs`,
`lr_scheduler_type`, warmup, `bf16`/`fp16`, `max_grad_norm`, `logging_steps`, `eval_strategy`/`eval_steps`,
`save_steps`, `save_total_limit`, `output_dir`, `seed`, `report_to`, `push_to_hub` and `torch_compile` mean what
they mean in `transformers.Trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..args import TrainingArguments
from ..errors import ConfigError
from .schedules import KARRAS_SAMPLERS, NOISE_SCHEDULES, PREDICTION_TYPES, SAMPLERS

__all__ = ["DiffusionConfig", "UNetArguments"]


def _listed(values) -> str:
    return ", ".join(sorted(values))


@dataclass
class DiffusionConfig(TrainingArguments):
    """Training arguments for `DiffusionTrainer`. Every field has a default and help text."""

    # --- noise and prediction ---------------------------------------------------------------------------------
    noise_schedule: str = field(
        default="cosine",
        metadata={"help": f"Beta schedule of the forward process: {_listed(NOISE_SCHEDULES)} (cosine = squaredcos_cap_v2)."},
    )
    prediction_type: str = field(
        default="epsilon", metadata={"help": f"What the UNet predicts: {', '.join(PREDICTION_TYPES)}."}
    )
    num_train_timesteps: int = field(default=1000, metadata={"help": "Number of diffusion timesteps in training."})
    snr_gamma: Optional[float] = field(
        default=None,
        metadata={"help": "Min-SNR-gamma loss weighting (Hang et al. 2023); 5.0 is the usual value. None: plain MSE."},
    )
    noise_offset: float = field(
        default=0.0, metadata={"help": "Scale of per-image, per-channel offset noise added to the noise (e.g. 0.05)."}
    )
    # --- sampling for evaluation ------------------------------------------------------------------------------
    sampler: str = field(default="dpmsolver++", metadata={"help": f"Sampler for evaluation grids: {_listed(SAMPLERS)}."})
    num_inference_steps: int = field(default=25, metadata={"help": "Sampler steps per evaluation grid."})
    karras_sigmas: bool = field(
        default=False, metadata={"help": f"Karras sigma spacing at sampling time (only {', '.join(KARRAS_SAMPLERS)})."}
    )
    eval_num_samples: int = field(default=64, metadata={"help": "Images in each fixed-seed evaluation grid."})
    # --- EMA of weights (diffusers' EMAModel) -------------------------------------------------------------------
    use_ema: bool = field(default=True, metadata={"help": "Keep an EMA of the weights; it is sampled and saved."})
    ema_decay: float = field(default=0.9999, metadata={"help": "Largest EMA decay (EMAModel `decay`)."})
    ema_min_decay: float = field(default=0.0, metadata={"help": "Smallest EMA decay (EMAModel `min_decay`)."})
    ema_update_after_step: int = field(default=0, metadata={"help": "Optimizer steps before the EMA starts."})
    ema_use_warmup: bool = field(
        default=True, metadata={"help": "Warm the decay up as 1 - (1 + step/inv_gamma)^-power (EMAModel warmup)."}
    )
    ema_inv_gamma: float = field(default=1.0, metadata={"help": "EMA warmup inv_gamma."})
    ema_power: float = field(default=0.75, metadata={"help": "EMA warmup power (2/3 for long runs, 3/4 for short)."})
    # --- data -------------------------------------------------------------------------------------------------
    image_column: str = field(default="image", metadata={"help": "Dataset column holding the images."})
    class_column: Optional[str] = field(
        default=None, metadata={"help": "Column of integer class labels, for class-conditional UNets."}
    )
    caption_column: Optional[str] = field(
        default=None, metadata={"help": "Column of captions, for UNet2DConditionModel with a text encoder."}
    )
    resolution: Optional[int] = field(
        default=None, metadata={"help": "Image side in pixels. None: the UNet's `sample_size`."}
    )
    image_resize: bool = field(
        default=False,
        metadata={"help": "Resize (shorter side) and center-crop every image to `resolution`. Off: sizes must match."},
    )

    def __post_init__(self):
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ConfigError(f"noise_schedule: unknown schedule {self.noise_schedule!r}; valid: {_listed(NOISE_SCHEDULES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"prediction_type: unknown {self.prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}"
            )
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler: unknown sampler {self.sampler!r}; valid: {_listed(SAMPLERS)}")
        if self.karras_sigmas and self.sampler not in KARRAS_SAMPLERS:
            raise ConfigError(
                f"karras_sigmas: sampler {self.sampler!r} does not support Karras sigmas; "
                f"use one of {', '.join(KARRAS_SAMPLERS)} or karras_sigmas false"
            )
        if self.karras_sigmas and NOISE_SCHEDULES[self.noise_schedule] == "squaredcos_cap_v2":
            raise ConfigError(
                "karras_sigmas: not with noise_schedule cosine (its last sigma is ~2e4, so Karras spacing collapses "
                "onto the last timesteps); use linear, scaled_linear or sigmoid, or karras_sigmas false"
            )
        positive = ("num_train_timesteps", "num_inference_steps", "eval_num_samples")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.resolution is not None and self.resolution <= 0:
            raise ConfigError(f"resolution: expected a positive number of pixels, got {self.resolution}")
        if not 0.0 <= self.ema_min_decay <= self.ema_decay <= 1.0:
            raise ConfigError(
                f"ema_decay / ema_min_decay: expected 0 <= ema_min_decay <= ema_decay <= 1, "
                f"got ema_decay={self.ema_decay}, ema_min_decay={self.ema_min_decay}"
            )
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ConfigError(f"snr_gamma: expected a positive number or None, got {self.snr_gamma}")
        if self.noise_offset < 0:
            raise ConfigError(f"noise_offset: expected >= 0, got {self.noise_offset}")
        super().__post_init__()


@dataclass
class UNetArguments:
    """Shape of the embedded default UNet, used when `model_name_or_path` is empty."""

    unet_block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64, 64], metadata={"help": "Channels of each UNet level (one per resolution)."}
    )
    unet_layers_per_block: int = field(default=1, metadata={"help": "ResNet layers per UNet level."})
    unet_attention: bool = field(default=True, metadata={"help": "Self-attention at the coarsest UNet level."})
    class_conditional: bool = field(
        default=False, metadata={"help": "Condition the default UNet on the digit label (class_column: label)."}
    )

    def __post_init__(self):
        if not self.unet_block_out_channels or any(c <= 0 or c % 8 for c in self.unet_block_out_channels):
            raise ConfigError(
                f"unet_block_out_channels: expected positive multiples of 8, got {self.unet_block_out_channels}"
            )
        if self.unet_layers_per_block <= 0:
            raise ConfigError(f"unet_layers_per_block: expected a positive integer, got {self.unet_layers_per_block}")
