"""`DiffusionConfig`: hftrain's `TrainingArguments` (transformers' + hftrain's fields) plus the diffusion fields.

Every inherited field the loop honours (`HONOURED`) means what it means in `transformers.Trainer`; any other one
set to a value other than its default is refused at construction with one line naming it, so no setting is silently
ignored. The diffusion fields are keyword-only: upstream's positional order is kept.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from transformers.trainer_utils import SchedulerType

from ..config import TrainingArguments
from ..config.groups import AlertArguments, CurriculumArguments, MonitorArguments, RunArguments, TrackerArguments
from ..errors import ConfigError
from .schedules import KARRAS_SAMPLERS, NOISE_SCHEDULES, PREDICTION_TYPES, SAMPLERS

__all__ = ["DiffusionConfig", "HONOURED", "HONOURED_VALUES", "OPTIMIZERS", "UNetArguments"]


def _listed(values) -> str:
    return ", ".join(sorted(values))


# Optimizers the loop builds (through `transformers.Trainer.get_optimizer_cls_and_kwargs`, so they mean the same):
# torch AdamW, fused AdamW (upstream's default) and bitsandbytes' 8-bit AdamW (the `aggressive` preset on a GPU).
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adamw_8bit")

# Inherited fields the loop gives their `Trainer` meaning: in the loop itself, through `DefaultFlowCallback` or the
# reporting callbacks, or at construction (tf32, the process group: upstream's `__post_init__`). Script flags that
# `Trainer` ignores too (do_train, resume_from_checkpoint, ...) are read by the recipe or by no one, as upstream.
_UPSTREAM = tuple(
    """
    output_dir per_device_train_batch_size num_train_epochs max_steps gradient_accumulation_steps
    learning_rate lr_scheduler_type lr_scheduler_kwargs warmup_steps optim optim_args weight_decay adam_beta1
    adam_beta2 adam_epsilon max_grad_norm
    bf16 fp16 tf32 activation_checkpointing activation_checkpointing_kwargs gradient_checkpointing
    gradient_checkpointing_kwargs torch_compile torch_compile_backend torch_compile_mode
    logging_strategy logging_steps logging_first_step logging_nan_inf_filter log_level log_level_replica
    log_on_each_node disable_tqdm report_to run_name project trackio_space_id trackio_bucket_id trackio_static_space_id
    eval_strategy eval_steps eval_delay eval_on_start per_device_eval_batch_size metric_for_best_model greater_is_better
    save_strategy save_steps save_total_limit push_to_hub hub_token hub_private_repo hub_model_id
    resume_from_checkpoint ignore_data_skip
    seed data_seed full_determinism use_cpu local_rank dataloader_drop_last dataloader_num_workers
    dataloader_pin_memory dataloader_persistent_workers dataloader_prefetch_factor dataloader_multiprocessing_context
    ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers ddp_static_graph ddp_backend ddp_timeout
    do_train do_eval do_predict
    """.split()
)
# hftrain's features run as callbacks on the loop's contract (`hftrain.host`); the text-generation metrics and the
# language-model curriculum scorer have nothing to score here.
_HFTRAIN = tuple(
    f.name
    for group in (RunArguments, TrackerArguments, CurriculumArguments, MonitorArguments, AlertArguments)
    for f in dataclasses.fields(group)
    if f.name not in ("curriculum_loss_model", "curriculum_loss_batch_size")
)
HONOURED = _UPSTREAM + _HFTRAIN
# Honoured fields with values that need machinery the loop does not have (best-checkpoint saving, metric-driven
# schedules, other optimizers).
HONOURED_VALUES = {
    "optim": OPTIMIZERS,
    "save_strategy": ("no", "steps", "epoch"),
    "lr_scheduler_type": tuple(s.value for s in SchedulerType if s.value not in ("reduce_lr_on_plateau", "greedy")),
}


# Refused fields that upstream's `__post_init__` already acts on (it would load a DeepSpeed config or set up FSDP):
# checked before it runs, like the value restrictions. Every other field is checked after it, as it leaves them.
_ACTED_ON_AT_CONSTRUCTION = ("deepspeed", "fsdp", "fsdp_config", "parallelism_config")


@functools.lru_cache(maxsize=2)
def _constructed_defaults(use_cpu: bool) -> TrainingArguments:
    """hftrain's `TrainingArguments` at its defaults as construction leaves them (upstream's `__post_init__` turns
    e.g. `accelerator_config=None` into an `AcceleratorConfig`, `include_num_input_tokens_seen=False` into "no")."""
    return TrainingArguments(output_dir="unused", use_cpu=use_cpu)


def refuse_unsupported(args: Any, constructed: bool) -> None:
    """`ConfigError` for the first inherited field the loop does not honour that is set away from its default, or
    honoured field with a value it cannot honour. `constructed`: upstream's `__post_init__` has run (see above)."""
    defaults = _constructed_defaults(bool(args.use_cpu))
    for f in dataclasses.fields(TrainingArguments):
        if (f.name in _ACTED_ON_AT_CONSTRUCTION or f.name in HONOURED_VALUES) == constructed:
            continue
        value, allowed = getattr(args, f.name), HONOURED_VALUES.get(f.name)
        if allowed is not None and value not in allowed:
            raise ConfigError(
                f"{f.name}: DiffusionTrainer does not support {value!r}; use one of {', '.join(allowed)}"
            )
        if f.name not in HONOURED and value != getattr(defaults, f.name):
            raise ConfigError(f"{f.name}: DiffusionTrainer does not implement it; remove it (got {value!r})")


@dataclass(kw_only=True)
class DiffusionConfig(TrainingArguments):
    """Training arguments for `DiffusionTrainer`. Every field has a default and help text."""

    # --- noise and prediction ---------------------------------------------------------------------------------
    noise_schedule: str = field(
        default="cosine",
        metadata={
            "help": f"Beta schedule of the forward process: {_listed(NOISE_SCHEDULES)} (cosine = squaredcos_cap_v2)."
        },
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
    sampler: str = field(
        default="dpmsolver++", metadata={"help": f"Sampler for evaluation grids: {_listed(SAMPLERS)}."}
    )
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
            raise ConfigError(
                f"noise_schedule: unknown schedule {self.noise_schedule!r}; valid: {_listed(NOISE_SCHEDULES)}"
            )
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
        if self.curriculum == "loss":
            raise ConfigError(
                "curriculum: the `loss` scorer scores text with a language model; for diffusion use "
                "`column` (e.g. curriculum_column=label) or a callable"
            )
        refuse_unsupported(self, constructed=False)
        super().__post_init__()
        refuse_unsupported(self, constructed=True)


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
