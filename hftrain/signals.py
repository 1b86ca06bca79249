"""Graceful SIGTERM/SIGINT: save a checkpoint at the next step boundary, stop, then end the process as the signal
would have; and `run_train`, the wrapper every loop's `train` goes through (safe resume, failure alert, deferred
signal delivery).

The handlers that were installed before are kept and called once the checkpoint is saved, so a tracker's or the
user's own handler still runs; a second signal goes to the previous handler at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

from transformers import TrainerCallback
from transformers.utils import logging

from .config import hftrain_settings

logger = logging.get_logger(__name__)

__all__ = ["SignalCallback", "notify_train_error", "run_train"]


class SignalCallback(TrainerCallback):
    """Turns SIGTERM/SIGINT into "save a checkpoint at the next step boundary, then stop" (`graceful_signals`).

    The previous handlers are kept and called once the checkpoint is saved (`run_train`), so a tracker's or the
    user's own handler still runs; a second signal goes to the previous handler at once.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, notifier: Any = None):
        self.notifier = notifier
        self.received: Optional[int] = None
        self.stopped_by_signal = False
        self._previous: dict[int, Any] = {}
        self.previous_handlers: dict[int, Any] = {}  # kept after on_train_end, for the deferred delivery

    # -- signals -------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.received, self.stopped_by_signal = None, False
        if threading.current_thread() is not threading.main_thread():
            logger.info("graceful SIGTERM/SIGINT handling is off: train() is not running in the main thread")
            return
        for name in self.SIGNALS:
            number = getattr(signal, name)
            if signal.getsignal(number) == signal.SIG_IGN:
                continue  # ignored on purpose (nohup, a shell's `&`): it must not stop training either
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None:  # a second signal: the user means it
            previous = self._restore().get(signum)
            logger.warning(f"second {signal.Signals(signum).name}: not waiting for the checkpoint")
            _deliver(signum, previous, frame)
            return
        self.received = signum
        logger.warning(
            f"{signal.Signals(signum).name} received: saving a checkpoint at the next step boundary, "
            "then stopping (send it again to stop at once)"
        )

    def on_step_end(self, args, state, control, **kwargs):
        flag = self.received is not None
        if getattr(args, "world_size", 1) > 1 and _agreement_step(state, control):
            flag = _any_process(flag, args)  # every rank must stop at the same step or the next collective hangs
            if flag and self.received is None:
                self.received = signal.SIGTERM
        if flag and not self.stopped_by_signal:
            self.stopped_by_signal = True
            control.should_save = True
            control.should_training_stop = True
            if self.notifier is not None:
                name = signal.Signals(self.received).name
                self.notifier.notify(
                    "stop",
                    "signal",
                    f"{name}: checkpoint saved at step {state.global_step}, stopping",
                    step=state.global_step,
                    checkpoint=os.path.join(args.output_dir, f"checkpoint-{state.global_step}"),
                )
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


# Under several processes a signal reaches one rank; the ranks agree on it with a collective, which costs a host
# sync, so they do so every SIGNAL_CHECK_STEPS optimizer steps and at every logging, saving and last step (the same
# steps on every rank: DefaultFlowCallback decides them identically), never on the other steps.
SIGNAL_CHECK_STEPS = 16


def _agreement_step(state: Any, control: Any) -> bool:
    return bool(
        state.global_step % SIGNAL_CHECK_STEPS == 0
        or control.should_log
        or control.should_save
        or control.should_training_stop
        or state.global_step >= state.max_steps
    )


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


def notify_train_error(host: Any, exc: BaseException) -> None:
    """No TrainerCallback event fires when `train()` raises: tell the callbacks that keep state across a run (the
    tracker's status, the graceful-stop signal handlers) through their `on_train_error(host, exc)` hook."""
    for callback in host.callbacks:
        hook = getattr(callback, "on_train_error", None)
        if hook is not None:
            hook(host, exc)


def run_train(host: Any, train: Callable[..., Any], resume_from_checkpoint: Any = None, *args, **kwargs) -> Any:
    """Run a loop's `train` with a safe resume, failure hooks, and the deferred signal once it returns.

    Callbacks cannot act around `train()` (no event fires when it raises or after it returns), so every loop's
    `train` goes through here: `HFTrainMixin.train` and `DiffusionTrainer.train` alike. On an exception the
    callbacks' `on_train_error(host, exc)` run (the alert, the tracker's status, the signal handlers)."""
    from .checkpoints import resume_checkpoint

    if resume_from_checkpoint:  # None/False: the caller starts from scratch, as upstream does
        resume_from_checkpoint = resume_checkpoint(host.args, host.model, resume_from_checkpoint)
    try:
        output = train(resume_from_checkpoint, *args, **kwargs)
    except BaseException as exc:
        notify_train_error(host, exc)
        raise
    callback = next((cb for cb in host.callbacks if isinstance(cb, SignalCallback)), None)
    if callback is not None and callback.stopped_by_signal and hftrain_settings(host.args).signal_exit:
        if callback.notifier is not None:
            callback.notifier.flush()
        _deliver(callback.received, callback.previous_handlers.get(callback.received, signal.SIG_DFL))
    return output
