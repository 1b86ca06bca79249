"""Pre-flight: the checks that need the filesystem, the installed packages or the model, run before the first step.

`hftrain.config` checks values (pure), `hftrain.launch` resolves them for the machine; this module answers "can this
run write its results where it was told to, and would it destroy a previous run's?". Recipes call `check_run` once
the model exists (through `recipe_utils.find_resume_checkpoint`); hftrain's trainers call `check_output_dir` and
`check_report_to` in their constructors. Every check raises one `ConfigError` line and writes nothing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from typing import Any, Iterable, Optional

from .errors import ConfigError

__all__ = [
    "check_attn_implementation",
    "check_output_dir",
    "check_report_to",
    "check_run",
    "checkpoint_bytes",
    "clear_previous_checkpoints",
    "previous_results",
]

# What a finished run leaves at the top of output_dir (transformers' save_model, with or without PEFT; the
# diffusion recipe's pipeline).
FINAL_WEIGHTS = (
    "model_index.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_MARGIN = 16 * 2**20  # scheduler, RNG states, trainer_state.json, tokenizer: a few MB at most


# -- output_dir: a folder we can write, on a disk with room for a checkpoint ----------------------------------------
def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(args: Any, model: Any = None) -> None:
    """`output_dir` is a folder (or can be created), writable, on a disk with room for one checkpoint of `model`."""
    output_dir = getattr(args, "output_dir", None)
    if not output_dir:
        return
    path = os.path.abspath(os.path.expanduser(str(output_dir)))
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"output_dir: {path} {what}; expected a folder (created when missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its nearest existing parent {existing} is not)"
        raise ConfigError(
            f"output_dir: {path} is not writable{where}; check its permissions or choose another output_dir"
        )
    needed = checkpoint_bytes(model, args)
    free = shutil.disk_usage(existing).free
    if needed and free < needed:
        raise ConfigError(
            f"output_dir: {_size(free)} free on the disk of {existing}, but one checkpoint of this model needs about "
            f"{_size(needed)}; free some space or choose another output_dir"
        )


def checkpoint_bytes(model: Any, args: Any = None) -> int:
    """About how many bytes one checkpoint of `model` takes: the saved weights (the adapter only with PEFT), the
    optimizer's two moments per trainable weight, and a margin. 0 when `model` is not a torch module."""
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        return 0
    weights = trainable = 0
    for parameter in parameters():
        size = parameter.numel() * parameter.element_size()
        weights += size
        trainable += size if parameter.requires_grad else 0
    saved = trainable if getattr(model, "peft_config", None) else weights
    saves_checkpoints = str(getattr(getattr(args, "save_strategy", "steps"), "value", "steps")) != "no"
    return saved + (2 * trainable if saves_checkpoints else 0) + _MARGIN


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"


# -- a previous run's results are never replaced without being asked ------------------------------------------------
def previous_results(output_dir: str, resumable: bool) -> list[str]:
    """What a previous run left in `output_dir` that a fresh start would replace: final weights, and checkpoints
    (each with why it cannot be resumed; `resumable`: whether this run may resume a complete one)."""
    from .checkpoints import checkpoint_problem

    if not output_dir or not os.path.isdir(output_dir):
        return []
    names = sorted(os.listdir(output_dir), key=lambda n: (not n.startswith("checkpoint-"), n))
    found = [name for name in names if name in FINAL_WEIGHTS]
    checkpoints = sorted((n for n in names if _CHECKPOINT_RE.match(n)), key=lambda n: int(n.split("-")[1]))
    for name in checkpoints:
        problem = checkpoint_problem(os.path.join(output_dir, name))
        why = problem or ("complete, but --auto_resume false does not resume it" if not resumable else "complete")
        found.append(f"{name} ({why})")
    return found


def check_run(args: Any, model: Any = None, checkpoint: Optional[str] = None) -> None:
    """Everything a recipe checks once the model exists, before any work: the output folder (`check_output_dir`)
    and, when the run starts from scratch, that it would not silently replace a previous run's results."""
    check_output_dir(args, model)
    if checkpoint is not None or getattr(args, "overwrite_output_dir", False):
        return
    output_dir = os.path.abspath(str(args.output_dir))
    found = previous_results(output_dir, resumable=bool(getattr(args, "auto_resume", False)))
    if found:
        raise ConfigError(
            f"output_dir: {output_dir} holds a previous run's results that starting over would replace "
            f"({'; '.join(found)}); nothing was changed. Pass --overwrite_output_dir true to start over there, "
            "or choose another output_dir"
        )


def clear_previous_checkpoints(args: Any) -> list[str]:
    """With `overwrite_output_dir`, a fresh run removes the previous run's `checkpoint-N` folders first: left in
    place, transformers' rotation (by step number) would delete the new ones and a later resume would pick an old
    one. Final weights are simply overwritten by the new run. Returns the removed folders."""
    output_dir = str(args.output_dir)
    if not getattr(args, "overwrite_output_dir", False) or not os.path.isdir(output_dir):
        return []
    removed = [os.path.join(output_dir, n) for n in sorted(os.listdir(output_dir)) if _CHECKPOINT_RE.match(n)]
    for folder in removed:
        shutil.rmtree(folder)
    return removed


# -- report_to and attention kernels: names that must resolve on this machine ---------------------------------------
def _report_names(value: Any) -> list[str]:
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    return [str(n).strip() for n in names if str(n).strip() and str(n).strip() not in ("none", "all")]


def check_report_to(args: Any) -> None:
    """Each `report_to` name is an integration transformers knows (plus hftrain's `hftrain`/`sqlite`) whose package is
    installed; transformers itself only finds out when the trainer is built, after the data is prepared."""
    names = _report_names(getattr(args, "report_to", None))
    if not names:
        return
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from .tracking import integration  # noqa: F401  (registers "hftrain" and "sqlite")

    known = sorted(INTEGRATION_TO_CALLBACK)
    available = set(get_available_reporting_integrations()) | {"hftrain", "sqlite"}
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            close = _close(name, known)
            raise ConfigError(f"report_to: unknown integration {name!r}{close}; known: {', '.join(known)}, none, all")
        if name not in available:
            raise ConfigError(
                f"report_to: {name!r} is not available here: transformers finds no usable {name} package (not "
                f"installed, or turned off by its environment variable); pip install {name}, or use report_to none"
            )


def _close(name: str, known: Iterable[str]) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


def check_attn_implementation(value: Optional[str], cuda: bool) -> None:
    """Flash attention needs its package and a CUDA GPU; transformers would say so only while loading (in words
    that read like a missing model) or, for a model built in code, never."""
    if not value or not value.startswith("flash_attention"):
        return
    package = "flash_attn_interface" if value == "flash_attention_3" else "flash_attn"
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"attn_implementation: {value} needs the flash-attn package (pip install flash-attn), which is not "
            "installed; use sdpa or eager"
        )
    if not cuda:
        raise ConfigError(f"attn_implementation: {value} needs a CUDA GPU; use sdpa or eager on this machine")
