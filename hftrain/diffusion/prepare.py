"""What `DiffusionTrainer` builds from its arguments before training: model checks, accelerator, optimizer, LR
schedule, EMA and activation checkpointing. Each honours the `TrainingArguments` fields it names as
`transformers.Trainer` does (see `hftrain.diffusion.config.HONOURED`)."""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
import torch.utils.checkpoint
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.training_utils import EMAModel
from transformers import get_scheduler

from ..errors import ConfigError

__all__ = [
    "check_model",
    "enable_activation_checkpointing",
    "make_accelerator",
    "make_ema",
    "make_lr_scheduler",
    "make_optimizer",
]


def check_model(model: Any, args: Any, text_encoder: Any, tokenizer: Any) -> tuple[int, Optional[int]]:
    """The training resolution and the number of classes, after checking that model, data columns and text side
    fit together (one `ConfigError` line otherwise)."""
    if not isinstance(model, (UNet2DModel, UNet2DConditionModel)):
        raise ConfigError(
            f"model: expected a diffusers UNet2DModel or UNet2DConditionModel, got {type(model).__name__}"
        )
    config = model.config
    sample_size = config.sample_size if isinstance(config.sample_size, int) else None
    resolution = args.resolution or sample_size
    if resolution is None:
        raise ConfigError("resolution: the UNet has no integer sample_size, so set resolution (pixels per side)")
    factor = 2 ** (len(config.down_block_types) - 1)  # every down block but the last halves the image
    if resolution % factor:
        raise ConfigError(
            f"resolution: {resolution} cannot pass the UNet's {len(config.down_block_types) - 1} downsamplings; "
            f"use a multiple of {factor} (e.g. {max(factor, resolution // factor * factor)})"
        )
    num_classes = getattr(config, "num_class_embeds", None)
    if num_classes and not args.class_column:
        raise ConfigError(
            f"class_column: the UNet is class-conditional (num_class_embeds={num_classes}); "
            "name the dataset column with the integer labels"
        )
    if args.class_column and not num_classes:
        raise ConfigError(f"class_column: {args.class_column!r} is set but the UNet has no num_class_embeds")
    cross_attention = any("CrossAttn" in name for name in getattr(config, "down_block_types", ()))
    if cross_attention and (text_encoder is None or tokenizer is None or not args.caption_column):
        raise ConfigError(
            "caption_column: the UNet has cross-attention, so pass text_encoder and tokenizer and set caption_column"
        )
    if not cross_attention and (text_encoder is not None or args.caption_column):
        raise ConfigError("caption_column / text_encoder: the UNet has no cross-attention blocks to take text")
    return resolution, num_classes


def make_accelerator(args: Any) -> Accelerator:
    """An `Accelerator` with the run's mixed precision, device and DDP options (`ddp_*`; the process group's backend
    and timeout were set when the arguments were built, as in Trainer)."""
    ddp = {
        "find_unused_parameters": args.ddp_find_unused_parameters,
        "bucket_cap_mb": args.ddp_bucket_cap_mb,
        "broadcast_buffers": args.ddp_broadcast_buffers,
        "static_graph": args.ddp_static_graph,
    }
    ddp = {k: v for k, v in ddp.items() if v is not None}
    handlers = [DistributedDataParallelKwargs(**ddp)] if ddp else None
    mixed_precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=args.use_cpu, kwargs_handlers=handlers)


def make_optimizer(args: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer `args.optim` names, built by transformers' own mapping (so `adamw_torch_fused` is torch's fused
    AdamW and `optim_args` mean the same), with `weight_decay` on every parameter."""
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls(model.parameters(), weight_decay=args.weight_decay, **kwargs)


def make_lr_scheduler(args: Any, optimizer: Any, max_steps: int) -> Any:
    """`lr_scheduler_type` with warmup over `max_steps`. The loop steps it once per optimizer step (accelerate does not
    prepare it: that would step it once per process), so warmup and decay count optimizer steps, as in Trainer."""
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(max_steps),
        num_training_steps=max_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )


def make_ema(model: torch.nn.Module, args: Any) -> Optional[EMAModel]:
    """diffusers' `EMAModel` of the weights when `use_ema`, configured by the `ema_*` fields."""
    if not args.use_ema:
        return None
    return EMAModel(
        model.parameters(),
        decay=args.ema_decay,
        min_decay=args.ema_min_decay,
        update_after_step=args.ema_update_after_step,
        use_ema_warmup=args.ema_use_warmup,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        model_cls=type(model),
        model_config=model.config,
    )


def enable_activation_checkpointing(unet: Any, args: Any) -> None:
    """diffusers' gradient checkpointing on the UNet when `activation_checkpointing` (or its old name) is set;
    `activation_checkpointing_kwargs` go to `torch.utils.checkpoint.checkpoint` (non-reentrant unless they say)."""
    # transformers before 5.20 has only the old names (gradient_checkpointing and its kwargs)
    if not (getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing):
        return
    given = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
    kwargs = {"use_reentrant": False, **(given or {})}
    unet.enable_gradient_checkpointing(functools.partial(torch.utils.checkpoint.checkpoint, **kwargs))
