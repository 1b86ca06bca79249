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
value, e.g. `packing: false`); in Python, any field whose value differs from its default. A field the arguments class
does not have (`packing` outside SFT, anything a loop refuses) is not touched. `hftrain.launch.resolve_arguments`
applies the changes; every choice, applied, kept or refused with its reason, is recorded on the resolved arguments
(`args.hftrain_preset_report`) and printed by the recipes at start.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable, Optional

from .config.groups import OPTIMIZATION_LEVELS as LEVELS
from .errors import ConfigError
from .machine import bf16_unavailable_reason, cuda_usable

__all__ = ["LEVELS", "preset_changes", "preset_plan"]


def _tf32_reason(args: Any) -> Optional[str]:
    import torch

    if not cuda_usable(args):
        return "no CUDA GPU"
    major, _ = torch.cuda.get_device_capability()
    return None if major >= 8 else f"GPU compute capability {major}.x is older than Ampere (8.0)"


def _compile_reason(args: Any) -> Optional[str]:
    return None if cuda_usable(args) else "no CUDA GPU (on CPU the compile time outweighs inductor's gains)"


def _bnb_reason(args: Any) -> Optional[str]:
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None if cuda_usable(args) else "bitsandbytes' 8-bit optimizers need a CUDA GPU"


def _fused_reason(args: Any) -> Optional[str]:
    import torch

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return None if (major, minor) >= (2, 4) else f"torch {torch.__version__} has no fused AdamW for this device"


# (field, value, levels, hardware check, what it is) in the order they are applied and printed.
_PLAN: list[tuple[str, Any, tuple[str, ...], Optional[Callable[[Any], Optional[str]]], str]] = [
    ("bf16", True, LEVELS, bf16_unavailable_reason, "bf16 mixed precision"),
    ("tf32", True, LEVELS, _tf32_reason, "TF32 matmuls"),
    ("activation_checkpointing", True, ("standard", "aggressive"), None, "activation checkpointing"),
    ("optim", "adamw_torch_fused", ("standard",), _fused_reason, "fused AdamW"),
    ("packing", True, ("standard", "aggressive"), None, "packing (bfd, padding-free)"),
    ("torch_compile", True, ("aggressive",), _compile_reason, "torch.compile"),
    ("optim", "adamw_bnb_8bit", ("aggressive",), _bnb_reason, "8-bit AdamW (bitsandbytes)"),
]
_ALIASES = {
    "activation_checkpointing": {"activation_checkpointing", "gradient_checkpointing"},
    "bf16": {"bf16", "fp16"},
}


def _defaults(args: Any) -> dict[str, Any]:
    values = {}
    for f in dataclasses.fields(type(args)):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def _user_set(args: Any, name: str, defaults: dict[str, Any], explicit: Optional[frozenset]) -> bool:
    if explicit is not None:  # parsed from YAML/CLI: we know exactly what the user wrote
        return bool(_ALIASES.get(name, {name}) & explicit)
    # built in Python: a value different from the field's default is the user's
    if name == "activation_checkpointing":  # its deprecated alias counts as the same setting
        return bool(args.activation_checkpointing) or args.gradient_checkpointing != defaults.get(
            "gradient_checkpointing"
        )
    if name == "bf16":  # TRL's default is None ("decide for me"); transformers' is False
        return bool(args.bf16) or bool(getattr(args, "fp16", False))
    return getattr(args, name) != defaults.get(name)


def _plain(value: Any) -> Any:
    """An enum field (transformers turns `optim` into `OptimizerNames`) as the value the user wrote."""
    return getattr(value, "value", value)


def preset_plan(level: str) -> list[tuple[str, Any, str]]:
    """The (field, value, description) a level asks for, before hardware checks: the documented mapping."""
    return [(name, value, what) for name, value, levels, _, what in _PLAN if level in levels]


def preset_changes(args: Any, explicit: Optional[frozenset] = None) -> tuple[dict[str, Any], list[str]]:
    """The field values `args.optimization_level` asks for on this machine, and one line per choice (applied, kept
    or refused with its reason). `args` is not changed. `explicit`: the fields the user named (from the parser)."""
    level = getattr(args, "optimization_level", None)
    if level is None:
        return {}, []
    if level not in LEVELS:
        raise ConfigError(f"optimization_level: expected one of {', '.join(LEVELS)}, got {level!r}")
    defaults, changes, report = _defaults(args), {}, []
    for name, value, levels, check, what in _PLAN:
        if level not in levels or not hasattr(args, name) or name in changes:
            continue  # a field the level does not touch, or the optimizer an earlier line already chose
        if _user_set(args, name, defaults, explicit):
            report.append(f"{what}: kept your {name}={_plain(getattr(args, name))!r}")
            continue
        reason = check(args) if check else None
        if reason:
            report.append(f"{what}: refused ({reason})")
            continue
        changes[name] = value
        report.append(f"{what}: {name}={value!r}")
    user_optim = _user_set(args, "optim", defaults, explicit)
    if level == "aggressive" and "optim" not in changes and not user_optim and _fused_reason(args) is None:
        # 8-bit AdamW was refused: fall back to the fused optimizer, the best one this machine has.
        changes["optim"] = "adamw_torch_fused"
        report.append("fused AdamW: optim='adamw_torch_fused' (instead of 8-bit AdamW)")
    return changes, [f"optimization_level={level}: {line}" for line in report]
