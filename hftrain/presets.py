"""Performance presets: `--optimization_level light|standard|aggressive` mapped to concrete arguments.

| setting                        | light | standard | aggressive | needs                                   |
|--------------------------------|-------|----------|------------|-----------------------------------------|
| `bf16` mixed precision         | yes   | yes      | yes        | a GPU with bf16 (CUDA/XPU)               |
| `tf32` matmuls                 | yes   | yes      | yes        | an NVIDIA Ampere or newer GPU            |
| `activation_checkpointing`     | -     | yes      | yes        | -                                       |
| `optim: adamw_torch_fused`     | -     | yes      | -          | torch >= 2.4 (CPU or GPU)                |
| `packing` (SFT, bfd: padding-free) | - | yes      | yes        | an SFT config                            |
| `torch_compile`                | -     | -        | yes        | a CUDA GPU (inductor's gains are GPU kernels) |
| `optim: adamw_bnb_8bit`        | -     | -        | yes        | bitsandbytes and a CUDA GPU              |

A value you set yourself is never changed: from YAML or the command line, any field you name (even at its default
value, e.g. `packing: false`); in Python, any field whose value differs from its default. Every choice, applied, kept or refused with its reason, is recorded on the arguments
(`args.hftrain_preset_report`) and printed by the recipes at start.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable, Optional

from transformers.utils import logging

from .args import explicitly_set_fields
from .errors import ConfigError

logger = logging.get_logger(__name__)

__all__ = ["LEVELS", "apply_optimization_level", "preset_plan"]

LEVELS = ("light", "standard", "aggressive")


def _cuda(args: Any) -> bool:
    import torch

    return torch.cuda.is_available() and not getattr(args, "use_cpu", False)


def _bf16_reason(args: Any) -> Optional[str]:
    import torch

    if getattr(args, "use_cpu", False):
        return "use_cpu is set"
    if torch.cuda.is_available():
        return None if torch.cuda.is_bf16_supported() else "the GPU does not support bf16"
    xpu = getattr(torch, "xpu", None)
    return None if xpu is not None and xpu.is_available() else "no GPU with bf16 support"


def _tf32_reason(args: Any) -> Optional[str]:
    import torch

    if not _cuda(args):
        return "no CUDA GPU"
    major, _ = torch.cuda.get_device_capability()
    return None if major >= 8 else f"GPU compute capability {major}.x is older than Ampere (8.0)"


def _compile_reason(args: Any) -> Optional[str]:
    return None if _cuda(args) else "no CUDA GPU (on CPU the compile time outweighs inductor's gains)"


def _bnb_reason(args: Any) -> Optional[str]:
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None if _cuda(args) else "bitsandbytes' 8-bit optimizers need a CUDA GPU"


def _fused_reason(args: Any) -> Optional[str]:
    import torch

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return None if (major, minor) >= (2, 4) else f"torch {torch.__version__} has no fused AdamW for this device"


# (field, value, levels, hardware check, what it is) in the order they are applied and printed.
_PLAN: list[tuple[str, Any, tuple[str, ...], Optional[Callable[[Any], Optional[str]]], str]] = [
    ("bf16", True, LEVELS, _bf16_reason, "bf16 mixed precision"),
    ("tf32", True, LEVELS, _tf32_reason, "TF32 matmuls"),
    ("activation_checkpointing", True, ("standard", "aggressive"), None, "activation checkpointing"),
    ("optim", "adamw_torch_fused", ("standard",), _fused_reason, "fused AdamW"),
    ("packing", True, ("standard", "aggressive"), None, "packing (bfd, padding-free)"),
    ("torch_compile", True, ("aggressive",), _compile_reason, "torch.compile"),
    ("optim", "adamw_bnb_8bit", ("aggressive",), _bnb_reason, "8-bit AdamW (bitsandbytes)"),
]


def _defaults(args: Any) -> dict[str, Any]:
    values = {}
    for f in dataclasses.fields(type(args)):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def _user_set(args: Any, name: str, defaults: dict[str, Any]) -> bool:
    explicit = explicitly_set_fields()
    if explicit is not None:  # parsed from YAML/CLI: we know exactly what the user wrote
        aliases = {"activation_checkpointing": {"activation_checkpointing", "gradient_checkpointing"},
                   "bf16": {"bf16", "fp16"}}
        return bool(aliases.get(name, {name}) & explicit)
    # built in Python: a value different from the field's default is the user's
    if name == "activation_checkpointing":  # its deprecated alias counts as the same setting
        return args.activation_checkpointing is not None or args.gradient_checkpointing != defaults.get("gradient_checkpointing")
    if name == "bf16":  # TRL's default is None ("decide for me"); transformers' is False
        return args.bf16 not in (None, defaults.get("bf16")) or bool(getattr(args, "fp16", False))
    return getattr(args, name) != defaults.get(name)


def preset_plan(level: str) -> list[tuple[str, Any, str]]:
    """The (field, value, description) a level asks for, before hardware checks: the documented mapping."""
    return [(name, value, what) for name, value, levels, _, what in _PLAN if level in levels]


def apply_optimization_level(args: Any) -> list[str]:
    """Apply `args.optimization_level` to `args`; returns (and stores on `args`) one line per choice."""
    level = getattr(args, "optimization_level", None)
    if level is None:
        return []
    if level not in LEVELS:
        raise ConfigError(f"optimization_level: expected one of {', '.join(LEVELS)}, got {level!r}")
    defaults = _defaults(args)
    report = []
    for name, value, levels, check, what in _PLAN:
        if level not in levels or not hasattr(args, name):
            continue
        if _user_set(args, name, defaults):
            report.append(f"{what}: kept your {name}={getattr(args, name)!r}")
            continue
        if name == "optim" and getattr(args, "_hftrain_optim_chosen", False):
            continue  # an earlier line already chose the optimizer
        reason = check(args) if check else None
        if reason:
            report.append(f"{what}: refused ({reason})")
            continue
        setattr(args, name, value)
        if name == "optim":
            args._hftrain_optim_chosen = True
        report.append(f"{what}: {name}={value!r}")
    if level == "aggressive" and not any(line.startswith("fused AdamW") for line in report) \
            and not getattr(args, "_hftrain_optim_chosen", False) and not _user_set(args, "optim", defaults):
        # 8-bit AdamW was refused: fall back to the fused optimizer, the best one this machine has.
        reason = _fused_reason(args)
        if reason is None:
            args.optim = "adamw_torch_fused"
            report.append("fused AdamW: optim='adamw_torch_fused' (instead of 8-bit AdamW)")
    args.hftrain_preset_report = [f"optimization_level={level}: {line}" for line in report]
    for line in args.hftrain_preset_report:
        logger.info(line)
    return args.hftrain_preset_report
