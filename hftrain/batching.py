"""Global batch size as a first-class setting.

`global_batch_size` is the number of samples per optimizer step over all processes. Given it, hftrain derives
`gradient_accumulation_steps` from the process count and `per_device_train_batch_size`, so the same config gives
the same optimisation on 1, 2 or 64 GPUs, and a run resumed on another process count keeps its global batch.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from transformers.utils import logging

from .errors import ConfigError

logger = logging.get_logger(__name__)

__all__ = ["apply_global_batch_size", "check_launch_environment", "effective_batch_size", "world_size_from_env"]


def world_size_from_env() -> int:
    """Processes in this run as the launcher (accelerate / torchrun) announced them; 1 when not distributed."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def effective_batch_size(args: Any, world_size: int | None = None) -> int:
    """Samples per optimizer step: per-device batch x gradient accumulation x processes."""
    world = world_size or world_size_from_env()
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world


def apply_global_batch_size(args: Any) -> None:
    """Set `gradient_accumulation_steps` from `global_batch_size` (when set); refuse sizes that do not divide.

    Runs in `hftrain_post_init`, before any process group or model exists, so a bad size fails at start.
    """
    target = getattr(args, "global_batch_size", None)
    if target is None:
        return
    world = world_size_from_env()
    per_device = int(args.per_device_train_batch_size)
    if target <= 0:
        raise ConfigError(f"global_batch_size: expected a positive number of samples, got {target}")
    step = per_device * world
    if target % step:
        options = ", ".join(str(step * k) for k in range(1, 5))
        raise ConfigError(
            f"global_batch_size: {target} is not a multiple of per_device_train_batch_size ({per_device}) x "
            f"processes ({world}) = {step}; use a multiple of {step} (e.g. {options}) or change "
            "per_device_train_batch_size"
        )
    accumulation = target // step
    if args.gradient_accumulation_steps not in (1, accumulation):
        # Both given and they disagree: the global batch is the setting that survives a change of hardware.
        logger.warning(f"gradient_accumulation_steps={args.gradient_accumulation_steps} replaced by {accumulation} "
                       f"to keep global_batch_size={target} on {world} process(es)")
    args.gradient_accumulation_steps = accumulation
    logger.info(f"global batch {target} = {per_device} per device x {accumulation} accumulation x {world} process(es)")


def check_launch_environment(args: Any) -> None:
    """Refuse a launch the machine cannot run, before any work: a DeepSpeed config on a machine without a GPU.

    `accelerate launch` announces DeepSpeed to the script through `ACCELERATE_USE_DEEPSPEED`.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    import torch

    if not torch.cuda.is_available() or getattr(args, "use_cpu", False):
        raise ConfigError("accelerate config: DeepSpeed was requested (ACCELERATE_USE_DEEPSPEED=true) but there is no "
                          "CUDA GPU; launch with --config_file accelerate_configs/cpu_ddp.yaml on CPU, or "
                          "deepspeed_zero2/zero3 on a GPU machine")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("accelerate config: DeepSpeed was requested but the deepspeed package is not installed; "
                          "pip install deepspeed, or use accelerate_configs/multi_gpu.yaml or fsdp.yaml")
