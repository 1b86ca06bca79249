"""Performance presets: `--optimization_level light|standard|aggressive|extreme` mapped to concrete arguments.

| setting                         | light | standard | aggressive | extreme  | needs                         |
|---------------------------------|-------|----------|------------|----------|-------------------------------|
| `bf16` mixed precision          | yes   | yes      | yes        | yes      | a GPU with bf16 (CUDA/XPU)    |
| `tf32` matmuls                  | yes   | yes      | yes        | yes      | NVIDIA Ampere or newer        |
| `activation_checkpointing`      | -     | yes      | yes        | yes      | -                             |
| `activation_offloading`         | -     | -        | -          | yes      | a CUDA GPU; SFT or DPO        |
| `optim: adamw_torch_fused`      | -     | yes      | fallback   | fallback | torch >= 2.4 (CPU or GPU)     |
| `packing` (bfd: padding-free)   | -     | yes      | yes        | yes      | an SFT config                 |
| `use_liger_kernel`              | -     | -        | yes        | yes      | liger-kernel and a CUDA GPU   |
| `torch_compile`                 | -     | -        | yes        | yes      | a CUDA GPU (GPU kernels gain) |
| `optim: adamw_bnb_8bit`         | -     | -        | yes        | yes      | bitsandbytes and a CUDA GPU   |

`aggressive` is the fastest level (compiled graphs, Liger's fused Triton kernels for RMSNorm, RoPE and SwiGLU) and
keeps AdamW's states in 8 bits; `extreme` adds TRL's activation offloading (the activations that checkpointing keeps
move to CPU memory between forward and backward) for the smallest GPU memory. Where 8-bit AdamW is refused, the
fused AdamW is used instead. `bench/throughput.py --levels` measures tokens/s and peak memory of each level against
no preset.

A value you set yourself is never changed: from YAML or the command line, any field you name (even at its default
value, e.g. `packing: false`); in Python, any field whose value differs from its default. A field the arguments class
does not have (`packing` outside SFT) or that its loop refuses (the diffusion loop's arguments list what it honours)
is not touched. `hftrain.launch.resolve_arguments` applies the changes; every choice, applied, kept or refused with
its reason, is recorded on the resolved arguments (`args.hftrain_preset_report`) and printed by the recipes at start.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Optional

from .config.groups import OPTIMIZATION_LEVELS as LEVELS
from .errors import ConfigError
from .machine import bf16_unavailable_reason, cuda_capability, cuda_usable, package_installed

__all__ = ["LEVELS", "preset_changes", "preset_plan"]


def _tf32_reason(args: Any) -> Optional[str]:
    if not cuda_usable(args):
        return "no CUDA GPU"
    major, _ = cuda_capability()
    return None if major >= 8 else f"GPU compute capability {major}.x is older than Ampere (8.0)"


def _compile_reason(args: Any) -> Optional[str]:
    return None if cuda_usable(args) else "no CUDA GPU (on CPU the compile time outweighs inductor's gains)"


def _bnb_reason(args: Any) -> Optional[str]:
    if not package_installed("bitsandbytes"):
        return "bitsandbytes is not installed"
    return None if cuda_usable(args) else "bitsandbytes' 8-bit optimizers need a CUDA GPU"


def _liger_reason(args: Any) -> Optional[str]:
    if not package_installed("liger_kernel"):
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None if cuda_usable(args) else "no CUDA GPU (Liger's kernels are Triton GPU kernels)"


def _offload_reason(args: Any) -> Optional[str]:
    return None if cuda_usable(args) else "no CUDA GPU (offloading moves activations from GPU to CPU memory)"


def _fused_reason(args: Any) -> Optional[str]:
    import torch

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return None if (major, minor) >= (2, 4) else f"torch {torch.__version__} has no fused AdamW for this device"


# (field, value, levels, hardware check, what it is) in the order they are applied and printed.
_FAST = ("aggressive", "extreme")
_PLAN: list[tuple[str, Any, tuple[str, ...], Optional[Callable[[Any], Optional[str]]], str]] = [
    ("bf16", True, LEVELS, bf16_unavailable_reason, "bf16 mixed precision"),
    ("tf32", True, LEVELS, _tf32_reason, "TF32 matmuls"),
    ("activation_checkpointing", True, ("standard", *_FAST), None, "activation checkpointing"),
    ("activation_offloading", True, ("extreme",), _offload_reason, "activation offloading (TRL)"),
    ("optim", "adamw_torch_fused", ("standard",), _fused_reason, "fused AdamW"),
    ("packing", True, ("standard", *_FAST), None, "packing (bfd, padding-free)"),
    ("use_liger_kernel", True, _FAST, _liger_reason, "Liger kernels"),
    ("torch_compile", True, _FAST, _compile_reason, "torch.compile"),
    ("optim", "adamw_bnb_8bit", _FAST, _bnb_reason, "8-bit AdamW (bitsandbytes)"),
]
_ALIASES = {
    "activation_checkpointing": {"activation_checkpointing", "gradient_checkpointing"},
    "gradient_checkpointing": {"activation_checkpointing", "gradient_checkpointing"},
    "bf16": {"bf16", "fp16"},
}


def _field(args: Any, name: str) -> str:
    """The field that holds a setting on this transformers: before `activation_checkpointing` existed (< 5.20),
    `gradient_checkpointing` was its name."""
    if name == "activation_checkpointing" and not hasattr(args, name) and hasattr(args, "gradient_checkpointing"):
        return "gradient_checkpointing"
    return name


def _loop_refuses(args: Any, name: str) -> bool:
    """The arguments class has the field but its loop refuses it: a class whose module lists what its loop honours
    (`HONOURED`, as `hftrain.diffusion.config` does) refuses everything else set away from its default."""
    honoured = getattr(sys.modules.get(type(args).__module__), "HONOURED", None)
    return honoured is not None and name not in honoured


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
    if name in ("activation_checkpointing", "gradient_checkpointing"):  # one setting, two names; None means off
        default = bool(defaults.get("activation_checkpointing") or defaults.get("gradient_checkpointing"))
        return bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing) != default
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
        name = _field(args, name)
        if level not in levels or not hasattr(args, name) or _loop_refuses(args, name) or name in changes:
            continue  # a field the level does not touch or the loop refuses, or an optimizer already chosen
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
    if level in _FAST and "optim" not in changes and not user_optim and _fused_reason(args) is None:
        # 8-bit AdamW was refused: fall back to the fused optimizer, the best one this machine has.
        changes["optim"] = "adamw_torch_fused"
        report.append("fused AdamW: optim='adamw_torch_fused' (instead of 8-bit AdamW)")
    return changes, [f"optimization_level={level}: {line}" for line in report]
