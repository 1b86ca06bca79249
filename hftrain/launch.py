"""The one explicit resolution step between parsed arguments and a training loop.

Arguments classes only validate their own values. Everything that depends on the machine, the launcher, a
registry or the user's intent is resolved here, once, before any work: feature checks that need an import (metric
names, curriculum scorers), QLoRA's GPU, DeepSpeed's package, the Hub token, `use_cpu` under a GPU-less multi-process
launch, the optimization preset, early stopping's metric and the global batch. Recipes call it right after parsing;
hftrain's trainers call it in their constructors (before their parent sees the arguments), so drop-in users get the
same checks. The result is the same object when nothing changes, else a copy built with `dataclasses.replace`,
so upstream's `__post_init__` sees the final values.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Optional

from transformers.utils import logging

from .config.groups import HFTrainArguments, metric_names
from .errors import ConfigError
from .machine import accelerator_visible, cuda_usable, world_size_from_env

logger = logging.get_logger(__name__)

__all__ = ["check_feature_settings", "check_launch_environment", "global_batch", "resolve_arguments"]


def global_batch(args: Any, world_size: Optional[int] = None) -> int:
    """Samples per optimizer step: per-device batch x gradient accumulation x processes."""
    world = world_size or world_size_from_env()
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world


def resolve_arguments(args: Any, explicit: Optional[frozenset] = None) -> Any:
    """`args` ready to train with on this machine (see the module docstring); `ConfigError` names what cannot run.

    `explicit`: the fields the user named in YAML or on the command line (`HFTrainParser.explicit_fields`), so a
    preset never overrides them even at their default value."""
    if not isinstance(args, HFTrainArguments) or getattr(args, "_hftrain_resolved", False):
        return args  # a parent's arguments class: behave like the parent
    check_feature_settings(args)
    check_launch_environment(args)
    from .hub import check_push_settings
    from .presets import preset_changes

    check_push_settings(args)
    changes: dict[str, Any] = {}
    if getattr(args, "use_cpu", True) is False and world_size_from_env() > 1 and not accelerator_visible():
        # Under `accelerate launch` / torchrun on a machine with no GPU, transformers only forms a gloo process
        # group when `use_cpu` is set; otherwise each process silently trains alone.
        changes["use_cpu"] = True
    view = dataclasses.replace(args, **changes) if changes else args
    preset, report = preset_changes(view, explicit)
    changes.update(preset)
    changes.update(_early_stopping_changes(args))
    changes.update(_global_batch_changes(args))
    resolved = dataclasses.replace(args, **changes) if changes else args
    resolved.hftrain_preset_report = report
    resolved._hftrain_resolved = True
    for line in report:
        logger.info(line)
    return resolved


def check_feature_settings(args: Any) -> None:
    """The checks of hftrain's fields that need a feature's registry or an import (metric names, scorers)."""
    from .metrics import check_metric_names, parse_sections

    check_metric_names(metric_names(args.eval_metrics))
    if args.eval_sections:
        parse_sections(args.eval_sections)
    if args.curriculum_on():
        from .curriculum import resolve_scorer

        resolve_scorer(args.curriculum)
    if args.tracker and args.tracker_db and os.path.isdir(os.path.expanduser(args.tracker_db)):
        raise ConfigError(f"tracker_db: {args.tracker_db!r} is a directory; expected a .db file path")


def check_launch_environment(args: Any = None) -> None:
    """Refuse a launch the machine cannot run: a DeepSpeed config (announced by `accelerate launch` through
    ACCELERATE_USE_DEEPSPEED) without a GPU or without the deepspeed package. Recipes call it before parsing too:
    transformers' own arguments classes import deepspeed while they are built under such a launch."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    if not cuda_usable(args):
        raise ConfigError(
            "accelerate config: DeepSpeed was requested (ACCELERATE_USE_DEEPSPEED=true) but there is no "
            "CUDA GPU; launch with --config_file accelerate_configs/cpu_ddp.yaml on CPU, or "
            "deepspeed_zero2/zero3 on a GPU machine"
        )
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "accelerate config: DeepSpeed was requested but the deepspeed package is not installed; "
            "pip install deepspeed, or use accelerate_configs/multi_gpu.yaml or fsdp.yaml"
        )


def _early_stopping_changes(args: Any) -> dict[str, Any]:
    """Early stopping watches `metric_for_best_model` (transformers' EarlyStoppingCallback compares against
    `state.best_metric`), so `early_stopping_metric`/`_mode` become that metric and `greater_is_better`."""
    if not args.early_stopping_patience or not hasattr(args, "metric_for_best_model"):
        return {}
    metric = args.early_stopping_metric or args.metric_for_best_model or "eval_loss"
    best = args.metric_for_best_model  # the same metric as early_stopping_metric: the arguments checked that
    changes: dict[str, Any] = {"metric_for_best_model": metric} if best != metric else {}
    if args.early_stopping_mode is not None:
        greater = args.early_stopping_mode == "max"
        if args.greater_is_better is not None and best is not None and args.greater_is_better != greater:
            raise ConfigError(
                f"early_stopping_mode: {args.early_stopping_mode!r} contradicts greater_is_better="
                f"{args.greater_is_better}"
            )
        if args.greater_is_better != greater:
            changes["greater_is_better"] = greater
    return changes


def _global_batch_changes(args: Any) -> dict[str, Any]:
    """`gradient_accumulation_steps` from `global_batch_size`; sizes that do not divide are refused."""
    target = args.global_batch_size
    if target is None:
        return {}
    world, per_device = world_size_from_env(), int(args.per_device_train_batch_size)
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
        logger.warning(
            f"gradient_accumulation_steps={args.gradient_accumulation_steps} replaced by {accumulation} "
            f"to keep global_batch_size={target} on {world} process(es)"
        )
    logger.info(f"global batch {target} = {per_device} per device x {accumulation} accumulation x {world} process(es)")
    return {"gradient_accumulation_steps": accumulation} if accumulation != args.gradient_accumulation_steps else {}
