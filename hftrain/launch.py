"""The one explicit resolution step between parsed arguments and a training loop.

Arguments classes only validate their own values. Everything that depends on the machine, the launcher, a
registry or the user's intent is resolved here, once, before any work: feature checks that need an import (metric
names, curriculum scorers), QLoRA's GPU, DeepSpeed's package, the Hub token, `use_cpu` under a GPU-less multi-process
launch, the optimization preset, early stopping's metric and the global batch. Recipes call it right after parsing;
hftrain's trainers call it in their constructors (before their parent sees the arguments), so drop-in users get the
same checks. The result is the same object when nothing changes, else a new one built from the values the user's
object was constructed with plus the changes (`rebuilt`), so upstream's `__post_init__` derives from the final values.
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

__all__ = ["check_feature_settings", "check_launch_environment", "global_batch", "launch_main", "resolve_arguments"]


def global_batch(args: Any, world_size: Optional[int] = None) -> int:
    """Samples per optimizer step: per-device batch x gradient accumulation x processes."""
    world = world_size or world_size_from_env()
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world


def resolve_arguments(args: Any, explicit: Optional[frozenset] = None) -> Any:
    """`args` ready to train with on this machine (see the module docstring); `ConfigError` names what cannot run.

    `explicit`: the fields the user named in YAML, the environment or on the command line
    (`HFTrainParser.explicit_fields`), so a preset never overrides them even at their default value."""
    if not isinstance(args, HFTrainArguments) or getattr(args, "_hftrain_resolved", False):
        return args  # a parent's arguments class: behave like the parent
    check_feature_settings(args)
    check_launch_environment(args)
    from .hub import check_push_settings
    from .presets import preset_changes
    from .retention import retention_changes

    check_push_settings(args)
    changes: dict[str, Any] = {}
    if getattr(args, "use_cpu", True) is False and world_size_from_env() > 1 and not accelerator_visible():
        # Under `accelerate launch` / torchrun on a machine with no GPU, transformers only forms a gloo process
        # group when `use_cpu` is set; otherwise each process silently trains alone.
        changes["use_cpu"] = True
    view = rebuilt(args, changes) if changes else args
    preset, report = _without_packing_under_curriculum(args, *preset_changes(view, explicit))
    changes.update(preset)
    retention, retention_report = retention_changes(args, explicit)
    changes.update(retention)
    changes.update(_early_stopping_changes(args))
    changes.update(_global_batch_changes(args))
    resolved = rebuilt(args, changes) if changes else args
    resolved.hftrain_preset_report = report + retention_report
    _record_sources(args, resolved, changes, preset)
    resolved._hftrain_resolved = True
    for line in report:
        logger.info(line)
    return resolved


def _record_sources(args: Any, resolved: Any, changes: dict[str, Any], preset: dict[str, Any]) -> None:
    """Where each value came from (`HFTrainParser.config_sources`: yaml, env, flag, ...), plus the fields this step
    changed: `preset` for the optimization preset's, `resolved` for the others (use_cpu, the global batch, early
    stopping, save_total_limit), so the run's record never names the user's YAML for a value hftrain replaced."""
    sources = dict(getattr(args, "hftrain_config_sources", None) or {})
    sources.update({name: "preset" if name in preset else "resolved" for name in changes})
    if sources:
        resolved.hftrain_config_sources = sources


def _without_packing_under_curriculum(args: Any, preset: dict, report: list) -> tuple[dict, list]:
    """A preset's packing would merge the rows a curriculum orders (the curriculum refuses packing): with a
    curriculum on, the preset leaves packing off and says why, instead of making the run fail."""
    if not preset.get("packing") or not args.curriculum_on():
        return preset, report
    preset = {k: v for k, v in preset.items() if k != "packing"}
    reason = f"refused (curriculum={args.curriculum} orders rows; packing would merge them)"
    report = [line.replace("packing=True", reason) if "packing=True" in line else line for line in report]
    return preset, report


def rebuilt(args: Any, changes: dict[str, Any]) -> Any:
    """A new arguments object of the same class, constructed from the values `args` was constructed with and
    `changes` (not `dataclasses.replace`, which would hand upstream's `__post_init__` the values it derived itself:
    TRL's GRPOConfig then refuses `generation_batch_size` and `steps_per_generation` together)."""
    given = getattr(args, "_hftrain_given", None)
    if given is None:
        return dataclasses.replace(args, **changes)
    return type(args)(**{**given, **changes})


def check_feature_settings(args: Any) -> None:
    """The checks of hftrain's fields that need a feature's registry or an import (metric names, scorers,
    `report_to` integrations)."""
    from .metrics import check_metric_names, parse_sections
    from .preflight import check_report_to

    check_report_to(args)

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


# -- `python -m hftrain.launch`: accelerate launch, ending a bad input in the recipe's one line -------------------------
# `accelerate launch` checks its config (DeepSpeed's package) in its own process and reports a failed child with a
# traceback of its own (CalledProcessError, or torch elastic's ChildFailedError report) after the recipe's `error:`
# line. This entry takes the same flags, checks the config first and ends a recipe's user error (exit status 2) with
# that line alone; a child that crashed still gets the launcher's full report.
def check_accelerate_config(launch_args: Any) -> None:
    """Refuse an accelerate config this machine cannot run: DeepSpeed without its package or a GPU, or a
    GPU-only config (multi-GPU, FSDP, DeepSpeed) without a CUDA GPU."""
    from accelerate.commands.config.config_args import default_config_file, load_config_from_file
    from accelerate.utils import DistributedType

    path = launch_args.config_file
    config = None
    if path is not None or os.path.isfile(default_config_file):
        try:
            config = load_config_from_file(path)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"--config_file {path}: not an accelerate config ({_first_line(exc)})") from exc
    kind = getattr(config, "distributed_type", None)
    deepspeed = launch_args.use_deepspeed or kind == DistributedType.DEEPSPEED
    cpu = launch_args.cpu or bool(getattr(config, "use_cpu", False))
    gpu_only = deepspeed or launch_args.use_fsdp or kind in (DistributedType.FSDP, DistributedType.MULTI_GPU)
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"accelerate config {path}: DeepSpeed was requested but the deepspeed package is not installed; "
            "pip install deepspeed, or use accelerate_configs/multi_gpu.yaml or fsdp.yaml"
        )
    if gpu_only and not cpu and not cuda_usable():
        raise ConfigError(
            f"accelerate config {path}: {getattr(kind, 'value', kind) or 'a multi-GPU launch'} needs CUDA GPUs and "
            "this machine has none; use --config_file accelerate_configs/cpu_ddp.yaml (two CPU processes) or run "
            "the recipe with python for one process"
        )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _child_status(exc: BaseException) -> Optional[int]:
    """The exit status of the launched process that failed first (accelerate's CalledProcessError or torch
    elastic's ChildFailedError), or None for any other exception."""
    import subprocess

    if isinstance(exc, subprocess.CalledProcessError):
        return exc.returncode
    first = getattr(exc, "get_first_failure", None)
    return first()[1].exitcode if callable(first) else None


def _quiet_elastic_logs(std_logging) -> None:
    """torch elastic logs each worker it stops and the one that failed (each logger with its own level); after a
    user error those lines only repeat the recipe's line, and a crash still gets ChildFailedError's full report."""
    import torch.distributed.run  # noqa: F401  (creates the loggers)

    for name in list(std_logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            std_logging.getLogger(name).setLevel(std_logging.CRITICAL)


def launch_main(argv: Optional[list[str]] = None) -> int:
    """`python -m hftrain.launch [accelerate launch flags] recipe.py [recipe flags]`; returns the exit status."""
    import logging as std_logging

    from accelerate.commands.launch import launch_command, launch_command_parser

    from .errors import USER_ERROR_STATUS, HFTrainError, report_user_error

    launch_args = launch_command_parser().parse_args(argv)
    try:
        check_accelerate_config(launch_args)
    except HFTrainError as exc:
        return report_user_error(exc)
    _quiet_elastic_logs(std_logging)
    try:
        launch_command(launch_args)
    except Exception as exc:  # noqa: BLE001 - only the launcher's report of a failed child is answered here
        status = _child_status(exc)
        if status == USER_ERROR_STATUS or (status and not hasattr(exc, "get_first_failure")):
            return status  # the recipe printed its `error:` line (or its traceback) already
        raise
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(launch_main())
