"""What a run records about where it ran (host, OS, Python and library versions, CPU, RAM, GPUs, git state), and
`SystemMonitor`, the `sys/` figures sampled while it trains (psutil; NVML through nvidia-ml-py on a GPU).

The static part is collected once per process with the standard library only (and torch, if the caller already
imported it).
"""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional

__all__ = ["system_info", "git_info", "SystemMonitor"]

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
        return _nvml_gpus()
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory)})
    return gpus


def _nvml_gpus() -> list[dict[str, Any]]:
    """Names and memory of the visible GPUs from NVML (no torch needed); empty without a GPU."""
    gpus = []
    for index, handle in _nvml_devices():
        try:
            import pynvml

            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        except Exception:
            continue
        gpus.append(
            {"index": index, "name": name.decode() if isinstance(name, bytes) else name, "memory_bytes": int(memory)}
        )
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


def _nvml_devices() -> list[tuple[int, Any]]:
    """`(index, NVML handle)` of the GPUs this process may use (`CUDA_VISIBLE_DEVICES` by index or UUID), numbered
    as CUDA numbers them; empty without nvidia-ml-py, a driver or a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception:  # no package, no driver (NVMLError_LibraryNotFound), no GPU: no GPU figures
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible is not None else None
    devices = []
    for cuda_index, name in enumerate(names if names is not None else [str(i) for i in range(count)]):
        try:
            if name.isdigit():
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(name))
            else:
                handle = pynvml.nvmlDeviceGetHandleByUUID(name)
        except Exception:  # CUDA stops at the first id it cannot use; so do we
            break
        devices.append((cuda_index, handle))
    return devices


def _gpu_figures(index: int, handle: Any) -> dict[str, float]:
    """Utilisation, memory in use (every process's), power and temperature of one GPU; what the GPU does not
    report is left out."""
    import pynvml

    reads = {
        f"sys/gpu{index}_utilization": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        f"sys/gpu{index}_memory_used_mb": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
        f"sys/gpu{index}_power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        f"sys/gpu{index}_temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
    }
    values = {}
    for key, read in reads.items():
        try:
            values[key] = float(read())
        except Exception:  # e.g. power on GPUs without a sensor (NVMLError_NotSupported)
            pass
    return values


class SystemMonitor:
    """The machine's figures for `sys/` series, one `sample()` at a time: CPU % (the system's, and this process's
    with its children, 100 = one core), process RSS, RAM in use, disk and network I/O rates (MB/s since the previous
    sample), and per GPU utilisation, memory, power and temperature from NVML. Counters only; it never touches the
    training state, so it can run on any thread."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the interval
        psutil.cpu_percent(None)
        self._children: dict[int, Any] = {}
        self._last = (time.monotonic(), self._disk(), self._net())
        self._gpus = _nvml_devices()

    def _disk(self) -> Optional[tuple[int, int]]:
        try:
            counters = self._psutil.disk_io_counters()
        except Exception:  # containers without /proc/diskstats
            return None
        return None if counters is None else (counters.read_bytes, counters.write_bytes)

    def _net(self) -> Optional[tuple[int, int]]:
        try:
            counters = self._psutil.net_io_counters()
        except Exception:
            return None
        return None if counters is None else (counters.bytes_sent, counters.bytes_recv)

    def _process_cpu(self) -> float:
        """This process's CPU % plus its children's (data-loader workers), each measured since its last call."""
        total = self._process.cpu_percent(None)
        try:
            children = self._process.children(recursive=True)
        except self._psutil.Error:
            children = []
        alive = {}
        for child in children:
            known = self._children.get(child.pid, child)
            try:
                total += known.cpu_percent(None)  # 0.0 the first time a child is seen
                alive[child.pid] = known
            except self._psutil.Error:
                pass
        self._children = alive
        return total

    def sample(self) -> dict[str, float]:
        """One sample of every figure this machine offers, keyed by its `sys/` name."""
        psutil = self._psutil
        now, disk, net = time.monotonic(), self._disk(), self._net()
        then, disk0, net0 = self._last
        self._last = (now, disk, net)
        elapsed = max(now - then, 1e-9)
        values = {
            "sys/cpu_percent": float(psutil.cpu_percent(None)),
            "sys/process_cpu_percent": float(self._process_cpu()),
            "sys/cpu_rss_mb": self._process.memory_info().rss / 2**20,
            "sys/memory_percent": float(psutil.virtual_memory().percent),
        }
        for name, new, old in (("disk", disk, disk0), ("net", net, net0)):
            if new is not None and old is not None:
                first, second = ("read", "write") if name == "disk" else ("sent", "recv")
                values[f"sys/{name}_{first}_mb_s"] = max(0, new[0] - old[0]) / 2**20 / elapsed
                values[f"sys/{name}_{second}_mb_s"] = max(0, new[1] - old[1]) / 2**20 / elapsed
        for index, handle in self._gpus:
            values.update(_gpu_figures(index, handle))
        return values
