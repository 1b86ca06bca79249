"""Never lose a run: complete-checkpoint detection, graceful SIGTERM/SIGINT, resume only from what is whole.

transformers writes `checkpoint-N` file by file (weights, optimizer, scheduler, RNG, then `trainer_state.json`), so
a kill during a save leaves a directory that looks like a checkpoint. `checkpoint_problem` reads each file's own
completeness evidence (safetensors header vs size, zip directory of torch files, parseable state with the right
step) plus hftrain's marker (`hftrain_checkpoint.json`, written atomically after the save with every file's size),
and `last_valid_checkpoint` skips any checkpoint that fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import sys
import threading
import weakref
import zipfile
from typing import Any, Callable, Optional

from transformers import TrainerCallback
from transformers.utils import logging

from .errors import ConfigError
from .validation import run_signature, signature_differences

logger = logging.get_logger(__name__)

__all__ = ["MARKER", "checkpoint_problem", "last_valid_checkpoint", "saved_signature", "ResilienceCallback",
           "notify_train_error", "run_train"]

MARKER = "hftrain_checkpoint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "adapter_model.safetensors", "adapter_model.bin")


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


def checkpoint_problem(path: str) -> Optional[str]:
    """Why `path` is not a complete checkpoint (one line), or None when it can be resumed from."""
    name = os.path.basename(os.path.normpath(path))
    match = _CHECKPOINT_RE.match(name)
    if not os.path.isdir(path):
        return "not a directory"
    state_path = os.path.join(path, "trainer_state.json")
    try:
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return "no trainer_state.json (the save did not finish)"
    except (OSError, ValueError):
        return "trainer_state.json is not valid JSON (cut off during the save)"
    if match and state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json says step {state.get('global_step')}, the directory says {match.group(1)}"
    files = set(os.listdir(path))
    if not any(w in files for w in _WEIGHTS) and not any(f.startswith("global_step") for f in files):
        return "no model weights"
    for file in sorted(files):
        full = os.path.join(path, file)
        if file.endswith(".safetensors"):
            problem = _safetensors_problem(full)
        elif file.endswith((".pt", ".pth", ".bin")) and os.path.isfile(full):
            problem = None if zipfile.is_zipfile(full) else f"{file}: incomplete (no zip directory)"
        else:
            problem = None
        if problem:
            return problem
    marker = _read_json(os.path.join(path, MARKER))
    if marker is not None:
        for file, size in marker.get("files", {}).items():
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
    for key, value in config.items():
        if f"model.{key}" in _config_keys():
            signature[f"model.{key}"] = value
    return signature


def _config_keys() -> set[str]:
    from .validation import _SIGNATURE_CONFIG

    return {f"model.{k}" for k in _SIGNATURE_CONFIG}


def _write_marker(checkpoint: str, signature: dict[str, Any]) -> None:
    files = {}
    for root, _dirs, names in os.walk(checkpoint):
        for name in names:
            if name.startswith(MARKER):
                continue
            full = os.path.join(root, name)
            files[os.path.relpath(full, checkpoint)] = os.path.getsize(full)
    tmp = os.path.join(checkpoint, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"files": files, "signature": signature}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, os.path.join(checkpoint, MARKER))  # atomic: the marker is whole or absent


class ResilienceCallback(TrainerCallback):
    """Marks complete checkpoints and turns SIGTERM/SIGINT into "save at the next step boundary, then stop".

    The previous handlers are kept and called once the checkpoint is saved (`run_train`), so a tracker's or the
    user's own handler still runs; a second signal goes to the previous handler at once.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, trainer: Any, notifier: Any = None):
        self._trainer = weakref.ref(trainer)
        self.notifier = notifier
        self.received: Optional[int] = None
        self.stopped_by_signal = False
        self._previous: dict[int, Any] = {}
        self.previous_handlers: dict[int, Any] = {}  # kept after on_train_end, for the deferred delivery

    # -- checkpoint marker ---------------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if args.should_save and os.path.isdir(checkpoint):
            trainer = self._trainer()
            _write_marker(checkpoint, run_signature(args, getattr(trainer, "model", None)))

    # -- signals -------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.received, self.stopped_by_signal = None, False
        trainer = self._trainer()
        settings = getattr(trainer, "hftrain_args", None)
        if settings is not None and not settings.graceful_signals:
            return
        if threading.current_thread() is not threading.main_thread():
            logger.info("graceful SIGTERM/SIGINT handling is off: train() is not running in the main thread")
            return
        for name in self.SIGNALS:
            number = getattr(signal, name)
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None:  # a second signal: the user means it
            previous = self._restore().get(signum)
            logger.warning(f"second {signal.Signals(signum).name}: not waiting for the checkpoint")
            _deliver(signum, previous, frame)
            return
        self.received = signum
        logger.warning(f"{signal.Signals(signum).name} received: saving a checkpoint at the next step boundary, "
                       "then stopping (send it again to stop at once)")

    def on_step_end(self, args, state, control, **kwargs):
        flag = self.received is not None
        if getattr(args, "world_size", 1) > 1:
            flag = _any_process(flag, args)  # every rank must stop at the same step or the next collective hangs
            if flag and self.received is None:
                self.received = signal.SIGTERM
        if flag and not self.stopped_by_signal:
            self.stopped_by_signal = True
            control.should_save = True
            control.should_training_stop = True
            if self.notifier is not None:
                name = signal.Signals(self.received).name
                self.notifier.notify("stop", "signal", f"{name}: checkpoint saved at step {state.global_step}, "
                                     "stopping", step=state.global_step,
                                     checkpoint=os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def on_train_error(self, trainer, exc: BaseException) -> None:
        """`train()` raised: put back the handlers that were installed before, so no later run chains to ours."""
        self._restore()

    def _restore(self) -> dict[int, Any]:
        previous, self._previous = self._previous, {}
        if previous:
            self.previous_handlers = previous
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)
        return previous


def _any_process(flag: bool, args: Any) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = args.device if dist.get_backend() != "gloo" else "cpu"
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def _deliver(signum: int, previous: Any, frame: Any = None) -> None:
    """Do what the handler that was there before hftrain's would have done."""
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL / Python's KeyboardInterrupt handler: end the process the conventional way
        sys.exit(128 + signum)


def _resilience(trainer: Any) -> Optional[ResilienceCallback]:
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ResilienceCallback)), None)


def resolve_resume(trainer: Any, resume_from_checkpoint: Any) -> Any:
    """`resume_from_checkpoint` made safe for `trainer` (see `checked_checkpoint`)."""
    return checked_checkpoint(trainer.args, trainer.model, resume_from_checkpoint)


def checked_checkpoint(args: Any, model: Any, resume_from_checkpoint: Any) -> Any:
    """`resume_from_checkpoint` made safe: True means the newest *complete* checkpoint, a given path must be
    complete, and a checkpoint written with other batch layout, seeds or model shape is refused (naming them).
    Takes arguments and model, not a trainer, so recipes can check before anything is built or written."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return resume_from_checkpoint
    output_dir = args.output_dir
    if resume_from_checkpoint is True:
        checkpoint = last_valid_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(f"resume_from_checkpoint=True: no complete checkpoint in output_dir {output_dir}")
    else:
        checkpoint = str(resume_from_checkpoint)
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            fallback = last_valid_checkpoint(os.path.dirname(os.path.normpath(checkpoint)))
            hint = f"; the newest complete one is {fallback}" if fallback else ""
            raise ConfigError(f"resume_from_checkpoint: {checkpoint} is incomplete ({problem}){hint}")
    differences = signature_differences(saved_signature(checkpoint), run_signature(args, model))
    if differences:
        raise ConfigError(f"resume_from_checkpoint: {checkpoint} belongs to a run with other arguments "
                          f"({'; '.join(differences)}); resume with the same arguments or use another output_dir")
    return checkpoint


def notify_train_error(trainer: Any, exc: BaseException) -> None:
    """No TrainerCallback event fires when `train()` raises: tell the callbacks that keep state across a run (the
    tracker's status, the graceful-stop signal handlers) through their `on_train_error(trainer, exc)` hook."""
    for callback in trainer.callback_handler.callbacks:
        hook = getattr(callback, "on_train_error", None)
        if hook is not None:
            hook(trainer, exc)


def run_train(trainer: Any, train: Callable[..., Any], resume_from_checkpoint: Any = None, *args, **kwargs) -> Any:
    """Run the parent's `train` with a safe resume, a failure alert, and the deferred signal once it returns."""
    resume_from_checkpoint = resolve_resume(trainer, resume_from_checkpoint)
    notifier = getattr(trainer, "hftrain_notifier", None)
    try:
        output = train(resume_from_checkpoint, *args, **kwargs)
    except BaseException as exc:
        notify_train_error(trainer, exc)
        if notifier is not None:
            notifier.notify("failure", "failure", f"training failed: {exc.__class__.__name__}: {exc}",
                            step=trainer.state.global_step, checkpoint=last_valid_checkpoint(trainer.args.output_dir),
                            level="error")
        raise
    callback = _resilience(trainer)
    if callback is not None and callback.stopped_by_signal:
        settings = trainer.hftrain_args
        if settings.signal_exit:
            if notifier is not None and notifier.sender is not None:
                notifier.sender.flush(settings.alert_timeout * (settings.alert_retries + 1))
            _deliver(callback.received, callback.previous_handlers.get(callback.received, signal.SIG_DFL))
    return output
