"""What this machine and launch offer: one place for the CUDA/bf16 probes and the launcher's process count.

Only `hftrain.launch` (and the presets it applies) call these, once per run; arguments classes never probe.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional

__all__ = [
    "accelerator_visible",
    "bf16_unavailable_reason",
    "cuda_capability",
    "cuda_usable",
    "package_installed",
    "world_size_from_env",
]


def world_size_from_env() -> int:
    """Processes in this run as the launcher (accelerate / torchrun) announced them; 1 when not distributed."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def cuda_usable(args: Any = None) -> bool:
    """A CUDA GPU is visible and the arguments do not ask for the CPU."""
    import torch

    return torch.cuda.is_available() and not getattr(args, "use_cpu", False)


def cuda_capability() -> Optional[tuple[int, int]]:
    """The first visible CUDA GPU's compute capability, or None without one."""
    import torch

    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None


def package_installed(name: str) -> bool:
    """`name` can be imported (found without importing it, so a heavy package costs nothing here)."""
    return importlib.util.find_spec(name) is not None


def accelerator_visible() -> bool:
    """Any accelerator torch can train on (CUDA, XPU, NPU, MLU, MUSA)."""
    import torch

    if torch.cuda.is_available():
        return True
    backends = (getattr(torch, name, None) for name in ("xpu", "npu", "mlu", "musa"))
    return any(backend is not None and backend.is_available() for backend in backends)


def bf16_unavailable_reason(args: Any = None) -> Optional[str]:
    """Why bf16 mixed precision cannot run here (one phrase), or None when it can."""
    import torch

    if getattr(args, "use_cpu", False):
        return "use_cpu is set"
    if torch.cuda.is_available():
        return None if torch.cuda.is_bf16_supported() else "the GPU does not support bf16"
    xpu = getattr(torch, "xpu", None)
    return None if xpu is not None and xpu.is_available() else "no GPU with bf16 support"
