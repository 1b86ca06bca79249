"""hftrain's versions of TRL's configs: `SFTConfig` and `DPOConfig` plus hftrain's fields.

Kept apart from `hftrain.args` because importing TRL takes seconds; plain `Trainer` users never pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import trl

from .args import HFTrainArguments

__all__ = ["SFTConfig", "DPOConfig", "bf16_supported"]


def bf16_supported() -> bool:
    """True where bf16 mixed precision can run: a CUDA device with bf16 support (or an XPU/NPU that says so)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def _resolve_bf16(config) -> None:
    # TRL turns `bf16=None` into True, which fails on a machine without bf16 hardware ("Your setup doesn't
    # support bf16/gpu"). Keep TRL's choice where it can run; fall back to fp32 where it cannot.
    if config.bf16 is None and not config.fp16:
        config.bf16 = bf16_supported() and not config.use_cpu


@dataclass
class SFTConfig(trl.SFTConfig, HFTrainArguments):
    """`trl.SFTConfig` plus hftrain's fields. `bf16` defaults to True only where the hardware supports it."""

    def __post_init__(self):
        self.hftrain_post_init()
        _resolve_bf16(self)
        super().__post_init__()


@dataclass
class DPOConfig(trl.DPOConfig, HFTrainArguments):
    """`trl.DPOConfig` plus hftrain's fields. `bf16` defaults to True only where the hardware supports it."""

    def __post_init__(self):
        self.hftrain_post_init()
        _resolve_bf16(self)
        super().__post_init__()
