"""The training monitor: catch NaN/Inf, loss spikes, gradient explosions, stalls and overfitting, then act.

Per optimizer step, in `on_pre_optimizer_step` (after backward and clipping, before `optimizer.step()`), the monitor
reads two numbers it does not compute itself, in one device sync:

* the pre-clip gradient norm, as returned by `accelerator.clip_grad_norm_` (transformers calls it every step, with
  `max_norm=inf` when clipping is off; the monitor wraps that bound method on the trainer's accelerator to see the
  value the trainer already computed);
* the step's loss, as the growth of the trainer's running loss sum (`trainer._tr_loss`) since the last step.

Because both are known before the update, `skip`, `stop` and `rollback` keep a bad update out of the weights at any
`logging_steps`. A NaN/Inf loss always gives a NaN/Inf gradient, so it is caught here even where transformers'
`logging_nan_inf_filter` hides it from the logs. Per log, the monitor checks for a zero learning rate after warmup and
a loss that has not moved; per evaluation, for overfitting. It draws no random numbers and changes nothing while
nothing is wrong.

Actions: `warn`; `skip` (the step's gradients are dropped, so the optimizer leaves those weights and their Adam
moments untouched; the LR scheduler still advances, the step counts); `stop` (the bad update is not applied, a
checkpoint is saved, training stops); `rollback` (the bad update is not applied, weights and optimizer state are
reloaded from the newest complete checkpoint, the learning rate is multiplied by `monitor_rollback_lr_factor`, and
training goes on with the next batch: steps and data are not replayed). Everything is logged, recorded in the
tracker as an event and sent as an alert.
"""

from __future__ import annotations

import bisect
import math
import os
import weakref
from collections import deque
from typing import Any, Optional

from transformers import TrainerCallback
from transformers.utils import logging

from .resilience import last_valid_checkpoint

logger = logging.get_logger(__name__)

__all__ = ["MonitorCallback", "RobustWindow", "SEVERITY", "monitor_callbacks"]

SEVERITY = {"warn": 0, "skip": 1, "rollback": 2, "stop": 3}


class RobustWindow:
    """Running median and MAD over the last `size` values; `zscore` says how far a value sits above the median.

    The window is also kept sorted (bisect), so the per-step median costs no sort: the monitor runs every step.
    """

    def __init__(self, size: int, min_count: int):
        self.values: deque = deque(maxlen=size)
        self.ordered: list = []
        self.min_count = min_count

    def add(self, value: float) -> None:
        """Add a finite value to the window."""
        if len(self.values) == self.values.maxlen:
            del self.ordered[bisect.bisect_left(self.ordered, self.values[0])]
        self.values.append(value)
        bisect.insort(self.ordered, value)

    def zscore(self, value: float) -> Optional[float]:
        """(value - median) / robust sigma, or None while fewer than `min_count` values were seen."""
        if len(self.values) < self.min_count:
            return None
        median = _median(self.ordered)
        return (value - median) / self._sigma(median)

    def exceeds(self, value: float, threshold: float) -> Optional[float]:
        """The z-score of `value` when it is above `threshold`, else None: the same decision as `zscore`, cheaper.

        sigma is at least 0.1*|median|, so a value within threshold * 0.1*|median| of the median cannot exceed the
        threshold and needs no MAD (a sort).
        """
        if len(self.values) < self.min_count:
            return None
        median = _median(self.ordered)
        if value - median <= threshold * max(0.1 * abs(median), 1e-12):
            return None
        z = (value - median) / self._sigma(median)
        return z if z > threshold else None

    def _sigma(self, median: float) -> float:
        mad = _median(sorted(abs(v - median) for v in self.ordered))
        # 1.4826 * MAD estimates sigma for normal noise; the floor keeps a flat history from flagging tiny wiggles.
        return max(1.4826 * mad, 0.1 * abs(median), 1e-12)

    def median(self) -> Optional[float]:
        """The median of the window, None when empty."""
        return _median(self.ordered) if self.values else None


def _median(ordered: list) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def _item(value: Any) -> Optional[float]:
    return None if value is None else float(value)


class MonitorCallback(TrainerCallback):
    """Anomaly detection and actions for one trainer, configured by hftrain's `monitor_*` and `overfit_*` fields."""

    def __init__(self, trainer: Any, settings: Any, notifier: Any):
        self._trainer = weakref.ref(trainer)
        self.s = settings
        self.notifier = notifier
        self.losses = RobustWindow(settings.monitor_window, settings.monitor_min_history)
        self.grad_norms = RobustWindow(settings.monitor_window, settings.monitor_min_history)
        self.logged_losses: deque = deque(maxlen=max(settings.monitor_stall_logs, 1))
        self.skipped_steps: list[int] = []
        self.rollbacks = 0
        self.stopped = False
        self._consecutive_skips = 0
        self._pending_stop: Optional[str] = None
        self._grad_norm: Any = None
        self._loss_seen = 0.0
        self._flagged_in_window = False
        self._active: set[str] = set()  # stall/overfit conditions already reported, re-armed when they clear
        self._train_losses_since_eval: list[float] = []
        self._last_train_loss: Optional[float] = None
        self._evals: list[tuple[float, float]] = []
        self._accelerator = None
        self._original_clip = None

    # -- wiring --------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self._trainer()
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None and self._original_clip is None:
            self._accelerator, self._original_clip = accelerator, accelerator.clip_grad_norm_
            original = self._original_clip

            def clip_grad_norm_(*a, **kw):
                norm = original(*a, **kw)
                self._grad_norm = norm  # the value transformers already computed; kept, not recomputed
                return norm

            accelerator.clip_grad_norm_ = clip_grad_norm_
        self._loss_seen = self._running_loss(trainer) or 0.0

    def on_train_end(self, args, state, control, **kwargs):
        if self._original_clip is not None:
            # The wrapper is an instance attribute: removing it brings back the class's method.
            self._accelerator.__dict__.pop("clip_grad_norm_", None)
            self._original_clip = self._accelerator = None
        last = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        checkpoint = last if os.path.isdir(last) else last_valid_checkpoint(args.output_dir)
        metrics = {k: v for k, v in (("loss", self._last_train_loss),) if v is not None}
        evals = [h for h in state.log_history if "eval_loss" in h]
        if evals:
            metrics["eval_loss"] = evals[-1]["eval_loss"]
        if self.stopped or control.should_training_stop and state.global_step < state.max_steps:
            self.notifier.notify("stop", "stopped", f"training stopped early at step {state.global_step}",
                                 step=state.global_step, metrics=metrics, checkpoint=checkpoint)
        else:
            self.notifier.notify("finish", "finish", f"training finished at step {state.global_step}",
                                 step=state.global_step, metrics=metrics, checkpoint=checkpoint, level="info")

    @staticmethod
    def _running_loss(trainer: Any) -> Optional[float]:
        tr_loss = getattr(trainer, "_tr_loss", None)
        return None if tr_loss is None else float(tr_loss)

    # -- per step ------------------------------------------------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        trainer = self._trainer()
        grad_norm, self._grad_norm = self._grad_norm, None
        loss, step_loss = getattr(trainer, "_tr_loss", None), None
        if (grad_norm is not None and loss is not None and hasattr(grad_norm, "device")
                and grad_norm.device.type != "cpu"):
            import torch

            values = torch.stack([grad_norm.detach().float().reshape(()).to(loss.device),
                                  loss.detach().float().reshape(())]).tolist()  # one device sync for both numbers
            grad_norm, running = values
        else:
            grad_norm, running = _item(grad_norm), _item(loss)
        if running is not None:
            step_loss, self._loss_seen = running - self._loss_seen, running
        step = state.global_step + 1  # the step this update would complete
        findings = self._judge(step_loss, grad_norm)
        if not findings:
            self._consecutive_skips = 0
            if grad_norm is not None:
                self.grad_norms.add(grad_norm)
            if step_loss is not None:
                self.losses.add(step_loss)
            return
        self._flagged_in_window = True
        metrics = {"loss": step_loss, "grad_norm": grad_norm, "learning_rate": _lr(optimizer)}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        for kind, action, message in findings:
            self.notifier.notify("anomaly", kind, f"{message}; action: {action}", step=step, metrics=metrics)
        action = max((a for _, a, _ in findings), key=SEVERITY.__getitem__)
        self._act(action, findings[0][0], optimizer, args, state, step, metrics)

    def _judge(self, step_loss: Optional[float], grad_norm: Optional[float]) -> list[tuple[str, str, str]]:
        s = self.s
        bad = [n for n, v in (("loss", step_loss), ("grad_norm", grad_norm)) if v is not None and not math.isfinite(v)]
        if bad:
            return [("nonfinite", s.monitor_nonfinite_action, f"non-finite {' and '.join(bad)}")]
        findings = []
        for kind, action, label, value, window in (
            ("grad_explosion", s.monitor_grad_explosion_action, "gradient norm", grad_norm, self.grad_norms),
            ("loss_spike", s.monitor_loss_spike_action, "loss", step_loss, self.losses),
        ):
            z = None if value is None else window.exceeds(value, s.monitor_spike_threshold)
            if z is not None:
                findings.append((kind, action, f"{label} {value:.4g} is {z:.1f} robust sigmas above the running "
                                               f"median {window.median():.4g}"))
        return findings

    def _act(self, action: str, kind: str, optimizer: Any, args, state, step: int, metrics: dict) -> None:
        if action == "skip":
            self._consecutive_skips += 1
            if self._consecutive_skips >= self.s.monitor_max_skips:
                action = "stop"
                reason = f"{self._consecutive_skips} consecutive steps skipped (monitor_max_skips)"
            else:
                _drop_gradients(optimizer)
                self.skipped_steps.append(step)
                self.notifier.notify("action", "skip", f"update of step {step} not applied ({kind})", step=step,
                                     metrics=metrics)
                return
        if action == "rollback":
            checkpoint = last_valid_checkpoint(args.output_dir, max_step=state.global_step)
            if self.rollbacks >= self.s.monitor_max_rollbacks or checkpoint is None:
                action = "stop"
                reason = ("no complete checkpoint to roll back to" if checkpoint is None
                          else f"{self.rollbacks} rollbacks already (monitor_max_rollbacks)")
            else:
                _drop_gradients(optimizer)
                self._rollback(checkpoint)
                self.rollbacks += 1
                self.notifier.notify("action", "rollback", f"reloaded {os.path.basename(checkpoint)} after {kind}; "
                                     f"learning rate x{self.s.monitor_rollback_lr_factor} "
                                     f"(rollback {self.rollbacks}/{self.s.monitor_max_rollbacks})",
                                     step=step, metrics=metrics, checkpoint=checkpoint)
                return
        if action == "stop":
            _drop_gradients(optimizer)
            self._pending_stop = locals().get("reason") or kind
            self.skipped_steps.append(step)

    def _rollback(self, checkpoint: str) -> None:
        trainer = self._trainer()
        scheduler = trainer.lr_scheduler
        schedule_state = scheduler.state_dict()  # keep the schedule at this step; only weights/moments go back
        trainer._load_from_checkpoint(checkpoint)
        trainer._load_optimizer_and_scheduler(checkpoint)
        scheduler.load_state_dict(schedule_state)
        factor = self.s.monitor_rollback_lr_factor
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        for group in trainer.optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor

    def on_step_end(self, args, state, control, **kwargs):
        if self._pending_stop is not None:
            self._stop(control, state, self._pending_stop)
            self._pending_stop = None
        return control

    def _stop(self, control, state, reason: str) -> None:
        self.stopped = True
        control.should_save = True
        control.should_training_stop = True
        self.notifier.notify("action", "stop", f"saving a checkpoint and stopping ({reason})", step=state.global_step)

    # -- per log -------------------------------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        self._loss_seen = 0.0  # transformers zeroed its running loss sum just before logging it
        loss = logs["loss"]
        step = state.global_step
        if not math.isfinite(loss) and not self._flagged_in_window:
            self._report_log_anomaly("nonfinite", f"logged loss is {loss}", step, logs, control,
                                     "stop" if self.s.monitor_nonfinite_action in ("stop", "rollback") else "warn")
        self._flagged_in_window = False
        if math.isfinite(loss):
            self._last_train_loss = loss
            self._train_losses_since_eval.append(loss)
        if self.s.monitor_stall_logs:
            self._check_stall(loss, logs, step, args, state, control)

    def _check_stall(self, loss, logs, step, args, state, control) -> None:
        lr = logs.get("learning_rate")
        warmup = args.get_warmup_steps(state.max_steps) if hasattr(args, "get_warmup_steps") else 0
        if lr is not None and lr == 0 and step > warmup:
            self._once("lr_zero", "learning rate is 0 after warmup: the weights no longer change", step, logs,
                       control)
        else:
            self._active.discard("lr_zero")
        self.logged_losses.append(loss)
        window = self.logged_losses
        if len(window) == window.maxlen and all(math.isfinite(v) for v in window):
            spread, scale = max(window) - min(window), max(1.0, abs(sum(window) / len(window)))
            if spread <= 1e-7 * scale:
                self._once("loss_flat", f"loss has not moved for {len(window)} logs ({loss:.6g})", step, logs,
                           control)
                return
        self._active.discard("loss_flat")

    def _once(self, kind: str, message: str, step: int, logs: dict, control) -> None:
        if kind in self._active:
            return
        self._active.add(kind)
        self._report_log_anomaly(kind, message, step, logs, control, self.s.monitor_stall_action)

    def _report_log_anomaly(self, kind, message, step, logs, control, action) -> None:
        metrics = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        self.notifier.notify("anomaly", kind, f"{message}; action: {action}", step=step, metrics=metrics)
        if action == "stop":
            self._stop(control, _StepOnly(step), kind)

    # -- per evaluation ------------------------------------------------------------------------------------------
    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        step = state.global_step
        if self._early_stopping_fired() and "early_stop" not in self._active:
            # transformers' EarlyStoppingCallback (added before this one) just decided to stop: save and report.
            self._active.add("early_stop")
            control.should_save = True
            self.notifier.notify("stop", "early_stop", f"{args.metric_for_best_model} did not improve for "
                                 f"{self.s.early_stopping_patience} evaluations (best {state.best_metric})",
                                 step=step, metrics={k: v for k, v in metrics.items() if isinstance(v, float)})
        eval_loss = metrics.get("eval_loss")
        if eval_loss is None:
            return
        train_loss = (sum(self._train_losses_since_eval) / len(self._train_losses_since_eval)
                      if self._train_losses_since_eval else self._last_train_loss)
        self._train_losses_since_eval = []
        if train_loss is None:
            return
        self._evals.append((eval_loss, train_loss))
        found = []
        gap = eval_loss - train_loss
        if self.s.overfit_gap and gap > self.s.overfit_gap:
            found.append(("overfit_gap", f"eval_loss {eval_loss:.4g} exceeds train loss {train_loss:.4g} by "
                          f"{gap:.4g} (overfit_gap {self.s.overfit_gap})"))
        else:
            self._active.discard("overfit_gap")
        n = self.s.overfit_patience
        recent = self._evals[-(n + 1):]
        if n and len(recent) == n + 1 and all(b[0] > a[0] for a, b in zip(recent, recent[1:])) \
                and recent[-1][1] < recent[0][1]:
            found.append(("overfit_rising", f"eval_loss rose for {n} evaluations ({recent[0][0]:.4g} -> "
                          f"{recent[-1][0]:.4g}) while the train loss fell ({recent[0][1]:.4g} -> "
                          f"{recent[-1][1]:.4g})"))
        else:
            self._active.discard("overfit_rising")
        for kind, message in found:
            if kind in self._active:
                continue
            self._active.add(kind)
            self.notifier.notify("anomaly", kind, f"{message}; action: {self.s.overfit_action}", step=step,
                                 metrics={"eval_loss": eval_loss, "loss": train_loss})
            if self.s.overfit_action == "stop" and not self.stopped:
                self._stop(control, state, kind)


    def _early_stopping_fired(self) -> bool:
        from transformers import EarlyStoppingCallback

        trainer = self._trainer()
        for cb in getattr(getattr(trainer, "callback_handler", None), "callbacks", []):
            if isinstance(cb, EarlyStoppingCallback):
                return cb.early_stopping_patience_counter >= cb.early_stopping_patience
        return False


def monitor_callbacks(trainer: Any, settings: Any) -> list[TrainerCallback]:
    """The monitor's callbacks for `trainer`, in order: early stopping, monitor, resilience (checkpoint marker and
    signals). Also gives the trainer its `hftrain_notifier`, which `run_train` uses for failure alerts."""
    from transformers import EarlyStoppingCallback

    from .alerts import Notifier
    from .resilience import ResilienceCallback

    ref = weakref.ref(trainer)

    def trackers() -> list:
        t = ref()
        callbacks = getattr(getattr(t, "callback_handler", None), "callbacks", [])
        return [cb for cb in callbacks if callable(getattr(cb, "log_event", None))]

    notifier = Notifier(trainer.args, settings, trackers)
    trainer.hftrain_notifier = notifier
    callbacks: list[TrainerCallback] = []
    if settings.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(settings.early_stopping_patience, settings.early_stopping_threshold))
    if settings.monitor:
        callbacks.append(MonitorCallback(trainer, settings, notifier))
    callbacks.append(ResilienceCallback(trainer, notifier))
    return callbacks


class _StepOnly:
    def __init__(self, step: int):
        self.global_step = step


def _lr(optimizer: Any) -> Optional[float]:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


def _drop_gradients(optimizer: Any) -> None:
    """Set every gradient the optimizer would use to None: torch optimizers then skip those parameters entirely
    (no weight change, no weight decay, Adam moments and step counts untouched)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None
