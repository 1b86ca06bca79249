"""What a run records about where it ran: host, OS, Python and library versions, CPU, RAM, GPUs, git state.

Collected once per process with the standard library only (and torch, if the caller already imported it).
"""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional

__all__ = ["system_info", "git_info"]

_LIBRARIES = ("hftrain", "torch", "transformers", "trl", "accelerate", "peft", "datasets", "diffusers", "tokenizers")


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[dict[str, Any]]:
    torch = sys.modules.get("torch")  # never import torch just to look: the CLI must stay light
    if torch is None or not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory)})
    return gpus


@lru_cache(maxsize=1)
def _static_info() -> dict[str, Any]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "libraries": versions,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "pid": os.getpid(),
    }


def system_info() -> dict[str, Any]:
    """Host, OS, Python, library versions, CPU, RAM, GPUs (names and memory), command line and process id."""
    info = dict(_static_info())
    info["gpus"] = _gpus()
    info["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return info


def git_info(path: Optional[str] = None) -> dict[str, Any]:
    """Commit, branch and dirty flag of the git work tree holding `path` (the current directory by default);
    empty when there is none or git is not installed."""
    cwd = path or os.getcwd()

    def git(*args: str) -> Optional[str]:
        try:
            result = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": None if status is None else bool(status),
    }
