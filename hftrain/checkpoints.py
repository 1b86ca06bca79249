"""Checkpoints: completeness per layout, run signatures, the marker, and the resume policy, in one place.

transformers writes `checkpoint-N` file by file (weights, optimizer, scheduler, RNG, then `trainer_state.json`), and
the diffusion loop writes `unet/`, `unet_ema/`, optimizer and scheduler the same way, so a kill during a save leaves
a directory that looks like a checkpoint. `checkpoint_problem` reads each file's own completeness evidence
(safetensors header vs size, zip directory of torch files, parseable state with the right step), the layout's
required parts, and hftrain's marker (`hftrain_checkpoint.json`, written atomically after the save with every
file's size, the layout and the run signature). `resume_checkpoint` is the one resume policy every path uses.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from typing import Any, Mapping, Optional

from transformers import TrainerCallback
from transformers.utils import logging

from .errors import ConfigError
from .host import DIFFUSION_FORMAT, TRAINER_FORMAT, BatchGeometry

logger = logging.get_logger(__name__)

__all__ = [
    "MARKER",
    "CheckpointMarkerCallback",
    "checkpoint_problem",
    "last_valid_checkpoint",
    "resume_checkpoint",
    "run_signature",
    "saved_signature",
    "signature_differences",
]

MARKER = "hftrain_checkpoint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
# What each layout needs besides trainer_state.json (the diffusion loop writes it last, as Trainer does).
_DIFFUSION_PARTS = ("unet", "optimizer.pt", "scheduler.pt")
# Arguments that decide which sample lands in which step, and model shapes: a checkpoint written with other values
# cannot continue this run. Learning rate, max_steps, logging and saving may change between runs. The global batch,
# not its factors: resuming on another process count with gradient accumulation adjusted to keep the same global
# batch is allowed (see `global_batch_size`).
_SIGNATURE_ARGS = ("seed", "data_seed", "train_sampling_strategy")
_SIGNATURE_CONFIG = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "d_model",
    "num_hidden_layers",
    "num_layers",
    "num_attention_heads",
    "num_heads",
    "intermediate_size",
    "d_ff",
    "sample_size",
    "in_channels",
    "block_out_channels",
)


# -- completeness ------------------------------------------------------------------------------------------------
def _safetensors_problem(path: str) -> Optional[str]:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > size:
                return f"{os.path.basename(path)}: truncated header"
            header = json.loads(handle.read(header_len))
    except (OSError, struct.error, ValueError) as exc:
        return f"{os.path.basename(path)}: unreadable ({exc.__class__.__name__})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + header_len + end:
        return f"{os.path.basename(path)}: {size} bytes, the header describes {8 + header_len + end}"
    return None


def checkpoint_layout(path: str) -> str:
    """`diffusion` for the diffusion loop's layout (a `unet/` folder), else `trainer` (transformers' layout)."""
    return DIFFUSION_FORMAT if os.path.isdir(os.path.join(path, "unet")) else TRAINER_FORMAT


def checkpoint_problem(path: str) -> Optional[str]:
    """Why `path` is not a complete checkpoint (one line), or None when it can be resumed from."""
    if not os.path.isdir(path):
        return "not a directory"
    problem = _state_problem(path) or _parts_problem(path)
    if problem:
        return problem
    for root, _dirs, names in os.walk(path):
        for name in sorted(names):
            problem = _file_problem(os.path.join(root, name))
            if problem:
                return problem
    return _marker_problem(path)


def _state_problem(path: str) -> Optional[str]:
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path)))
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return "no trainer_state.json (the save did not finish)"
    except (OSError, ValueError):
        return "trainer_state.json is not valid JSON (cut off during the save)"
    if not isinstance(state, dict):
        return "trainer_state.json does not hold a training state"
    if match and state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json says step {state.get('global_step')}, the directory says {match.group(1)}"
    return None


def _parts_problem(path: str) -> Optional[str]:
    files = set(os.listdir(path))
    if checkpoint_layout(path) == DIFFUSION_FORMAT:
        missing = [part for part in _DIFFUSION_PARTS if part not in files]
        return f"diffusion checkpoint without {', '.join(missing)}" if missing else None
    if not any(w in files for w in _WEIGHTS) and not any(f.startswith("global_step") for f in files):
        return "no model weights"
    return None


def _file_problem(full: str) -> Optional[str]:
    name = os.path.basename(full)
    if name.endswith(".safetensors"):
        return _safetensors_problem(full)
    if name.endswith((".pt", ".pth", ".bin")) and not zipfile.is_zipfile(full):
        return f"{name}: incomplete (no zip directory)"
    return None


def _marker_problem(path: str) -> Optional[str]:
    marker = _read_json(os.path.join(path, MARKER))
    for file, size in (marker or {}).get("files", {}).items():
        full = os.path.join(path, file)
        if not os.path.exists(full):
            return f"{file}: listed in {MARKER} but missing"
        if os.path.getsize(full) != size:
            return f"{file}: {os.path.getsize(full)} bytes, {MARKER} recorded {size}"
    return None


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def last_valid_checkpoint(output_dir: str, max_step: Optional[int] = None) -> Optional[str]:
    """The newest complete `checkpoint-N` in `output_dir` (with N <= max_step when given), or None.

    Incomplete checkpoints (killed during the save) are logged and skipped, never returned.
    """
    if not output_dir or not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and (max_step is None or int(match.group(1)) <= max_step):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    for _step, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"skipping incomplete checkpoint {path}: {problem}")
    return None


# -- run signatures ----------------------------------------------------------------------------------------------
def run_signature(args: Any, model: Any = None) -> dict[str, Any]:
    """The values a checkpoint must share with a run to be resumed by it (global batch, seeds, model shape)."""
    signature = {k: getattr(args, k, None) for k in _SIGNATURE_ARGS}
    signature = {
        k: (str(v) if v is not None and not isinstance(v, (int, float, bool)) else v) for k, v in signature.items()
    }
    signature["global_batch_size"] = BatchGeometry.from_args(args).global_batch
    config = getattr(model, "config", None)
    for key in _SIGNATURE_CONFIG if config is not None else ():
        value = getattr(config, key, None) if not isinstance(config, dict) else config.get(key)
        if value is not None:
            signature[f"model.{key}"] = list(value) if isinstance(value, tuple) else value
    return signature


def saved_signature(checkpoint: str) -> dict[str, Any]:
    """The run signature a checkpoint was written with: hftrain's marker, else what transformers saved."""
    marker = _read_json(os.path.join(checkpoint, MARKER))
    if marker is not None and isinstance(marker.get("signature"), dict):
        return marker["signature"]
    signature: dict[str, Any] = {}
    state = _read_json(os.path.join(checkpoint, "trainer_state.json")) or {}
    if state.get("train_batch_size") is not None:
        signature["per_device_train_batch_size"] = state["train_batch_size"]
    config = _read_json(os.path.join(checkpoint, "config.json")) or {}
    signature.update({f"model.{k}": v for k, v in config.items() if k in _SIGNATURE_CONFIG})
    return signature


def signature_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: saved -> current` for every key both signatures have and that differs."""
    return [
        f"{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now"
        for k in sorted(set(saved) & set(current))
        if saved[k] != current[k]
    ]


# -- the resume policy -------------------------------------------------------------------------------------------
def resume_checkpoint(args: Any, model: Any = None, requested: Any = None) -> Optional[str]:
    """The checkpoint a run resumes from, checked; None to start from scratch.

    `requested` is `resume_from_checkpoint`: a path (it must be complete), True (the newest complete checkpoint in
    `output_dir`; there must be one), or None/False: then, with `auto_resume` on, the newest complete checkpoint in
    `output_dir` if there is one. A checkpoint written with another global batch, seeds or model shape is refused
    with each difference named. Takes arguments and model, not a trainer, so recipes check before any work.
    """
    output_dir = args.output_dir
    if requested is True:
        checkpoint = last_valid_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(f"resume_from_checkpoint=True: no complete checkpoint in output_dir {output_dir}")
    elif requested:
        checkpoint = str(requested)
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            fallback = last_valid_checkpoint(os.path.dirname(os.path.normpath(checkpoint)))
            hint = f"; the newest complete one is {fallback}" if fallback else ""
            raise ConfigError(f"resume_from_checkpoint: {checkpoint} is incomplete ({problem}){hint}")
    elif getattr(args, "auto_resume", False):
        checkpoint = last_valid_checkpoint(output_dir)
    else:
        return None
    if checkpoint is None:
        return None
    differences = signature_differences(saved_signature(checkpoint), run_signature(args, model))
    if differences:
        raise ConfigError(
            f"resume_from_checkpoint: {checkpoint} belongs to a run with other arguments "
            f"({'; '.join(differences)}); resume with the same arguments or use another output_dir"
        )
    return checkpoint


# -- the marker --------------------------------------------------------------------------------------------------
def _write_marker(checkpoint: str, signature: dict[str, Any], layout: str) -> None:
    files = {}
    for root, _dirs, names in os.walk(checkpoint):
        for name in names:
            if name.startswith(MARKER):
                continue
            full = os.path.join(root, name)
            files[os.path.relpath(full, checkpoint)] = os.path.getsize(full)
    tmp = os.path.join(checkpoint, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"files": files, "layout": layout, "signature": signature}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, os.path.join(checkpoint, MARKER))  # atomic: the marker is whole or absent


class CheckpointMarkerCallback(TrainerCallback):
    """Writes `hftrain_checkpoint.json` into every checkpoint the loop saves (`checkpoint_marker`)."""

    def __init__(self, host: Any):
        self.host = host

    def on_save(self, args, state, control, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if args.should_save and os.path.isdir(checkpoint):
            signature = run_signature(args, self.host.model)
            _write_marker(checkpoint, signature, self.host.checkpoint_format)
