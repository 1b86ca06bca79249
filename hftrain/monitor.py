"""The training monitor: catch NaN/Inf, loss spikes, gradient explosions, stalls and overfitting, then act.

Per optimizer step, in `on_pre_optimizer_step` (after backward and clipping, before `optimizer.step()`), the monitor
takes two numbers it does not compute itself through the host contract (`hftrain.host`): the step's loss and the
pre-clip gradient norm, as device tensors. With the defaults it reads them without a host sync per step: a
non-finite step is kept out of the weights on the device (the fused optimizers' `found_inf`, GradScaler's path:
weights, Adam moments and step counts stay untouched), and the values are read all at once at the next logging,
saving or evaluation step, where findings are reported. An action that must come before the update (a spike action
other than `warn`, `stop`/`rollback` on non-finite values, `skip` with a non-fused optimizer) reads both numbers
every step instead, in one sync.

Because both are known before the update, `skip`, `stop` and `rollback` keep a bad update out of the weights at any
`logging_steps`. A NaN/Inf loss always gives a NaN/Inf gradient, so it is caught here even where transformers'
`logging_nan_inf_filter` hides it from the logs. Per log, the monitor checks for a zero learning rate after warmup and
a loss that has not moved; per evaluation, for overfitting and for reward hacking (RL trainers: the training reward
rises while the task metric, measured independently of the reward, falls; or the reward saturates while the task
metric stays low). It draws no random numbers and changes nothing while nothing is wrong.

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
from collections import deque
from typing import Any, Optional

from transformers import TrainerCallback
from transformers.utils import logging

from .checkpoints import last_valid_checkpoint
from .monitor_checks import OverfitCheck, RewardHackingCheck

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


def _inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def _skips_on_device(optimizer: Any, args: Any) -> bool:
    """True when the optimizer can keep an update out on the device: torch's fused Adam/AdamW/SGD read a
    `found_inf` tensor and leave weights, moments and step counts untouched where it is set (GradScaler's path;
    not under fp16, where the scaler owns that attribute)."""
    inner = _inner_optimizer(optimizer)
    fused = all(group.get("fused") for group in getattr(inner, "param_groups", [{}]))
    return bool(getattr(inner, "_step_supports_amp_scaling", False) and fused and not getattr(args, "fp16", False))


def _as_scalar(value: Any, missing: Any) -> Any:
    import torch

    if value is None:
        return missing
    return torch.as_tensor(value).detach().float().reshape(()).to("cpu", non_blocking=True)


def _read_both(loss: Any, grad_norm: Any) -> tuple[Optional[float], Optional[float]]:
    """The step's loss and gradient norm as floats, read from the device together (one sync)."""
    values = [v for v in (loss, grad_norm) if v is not None]
    if not values:
        return None, None
    import torch

    device = values[0].device if hasattr(values[0], "device") else "cpu"
    read = torch.stack([torch.as_tensor(v, device=device).detach().float().reshape(()) for v in values]).tolist()
    if loss is None:
        return None, read[0]
    return read[0], (read[1] if grad_norm is not None else None)


class MonitorCallback(TrainerCallback):
    """Anomaly detection and actions for one trainer, configured by hftrain's `monitor_*` and `overfit_*` fields."""

    def __init__(self, host: Any, settings: Any, notifier: Any):
        self.host = host
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
        self._flagged_in_window = False
        self._active: set[str] = set()  # stall/overfit conditions already reported, re-armed when they clear
        self.overfitting = OverfitCheck(settings.overfit_gap, settings.overfit_patience)
        self.reward_hacking = RewardHackingCheck(settings)
        self._training = False
        self._pending: list[tuple] = []  # (step, loss, grad_norm) on the device, read at the next flush
        self._deferred: Optional[bool] = None  # decided at the first step (needs the optimizer)
        self._found_inf_set = False

    # -- wiring --------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        attach = getattr(self.host, "attach", None)  # the Trainer adapter starts seeing the gradient norm
        if attach is not None:
            attach()

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        self._flush(args, state)
        detach = getattr(self.host, "detach", None)
        if detach is not None:
            detach()
        last = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        checkpoint = last if os.path.isdir(last) else last_valid_checkpoint(args.output_dir)
        metrics = {k: v for k, v in (("loss", self.overfitting.last_train_loss),) if v is not None}
        evals = [h for h in state.log_history if "eval_loss" in h]
        if evals:
            metrics["eval_loss"] = evals[-1]["eval_loss"]
        if self.stopped or control.should_training_stop and state.global_step < state.max_steps:
            self.notifier.notify(
                "stop",
                "stopped",
                f"training stopped early at step {state.global_step}",
                step=state.global_step,
                metrics=metrics,
                checkpoint=checkpoint,
            )
        else:
            self.notifier.notify(
                "finish",
                "finish",
                f"training finished at step {state.global_step}",
                step=state.global_step,
                metrics=metrics,
                checkpoint=checkpoint,
                level="info",
            )

    # -- per step ------------------------------------------------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        loss, grad_norm = self.host.step_values()
        step = state.global_step + 1  # the step this update would complete
        if self._reads_deferred(args):
            self._keep_out_if_nonfinite(loss, grad_norm)
            self._pending.append((step, loss, grad_norm))
            return
        self._review(step, *_read_both(loss, grad_norm), args, state, kept_out=False)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._found_inf_set:  # the flag belongs to this step only
            self._found_inf_set = False
            del _inner_optimizer(self.host.optimizer).found_inf

    def _review(self, step: int, step_loss, grad_norm, args, state, kept_out: bool) -> None:
        """Judge one step's values and act (`kept_out`: a non-finite update was already kept out on the device)."""
        findings = self._judge(step_loss, grad_norm)
        if not findings:
            self._consecutive_skips = 0
            if grad_norm is not None:
                self.grad_norms.add(grad_norm)
            if step_loss is not None:
                self.losses.add(step_loss)
            return
        self._flagged_in_window = True
        metrics = {"loss": step_loss, "grad_norm": grad_norm, "learning_rate": _lr(self.host.optimizer)}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        for kind, action, message in findings:
            self.notifier.notify("anomaly", kind, f"{message}; action: {action}", step=step, metrics=metrics)
        action = max((a for _, a, _ in findings), key=SEVERITY.__getitem__)
        self._act(action, findings[0][0], args, state, step, metrics, kept_out=kept_out)

    # -- no host read per step -----------------------------------------------------------------------------------
    def _reads_deferred(self, args) -> bool:
        """True when every action can wait for the next logging step: spikes only warn, and a non-finite step is
        warned about or kept out on the device (a fused optimizer's `found_inf`, as GradScaler uses it). Then the
        step's values stay on the device and are read, all at once, when the trainer logs or saves."""
        if self._deferred is None:
            s = self.s
            spikes_warn = s.monitor_loss_spike_action == s.monitor_grad_explosion_action == "warn"
            nonfinite_ok = s.monitor_nonfinite_action == "warn" or (
                s.monitor_nonfinite_action == "skip" and _skips_on_device(self.host.optimizer, args)
            )
            self._deferred = spikes_warn and nonfinite_ok
        return self._deferred

    def _keep_out_if_nonfinite(self, loss, grad_norm) -> None:
        if self.s.monitor_nonfinite_action != "skip":
            return
        import torch

        values = [v.detach().float().reshape(()) for v in (loss, grad_norm) if torch.is_tensor(v)]
        if values:
            _inner_optimizer(self.host.optimizer).found_inf = (~torch.isfinite(torch.stack(values))).any().float()
            self._found_inf_set = True

    def _flush(self, args, state) -> None:
        """Read the values of the steps since the last flush (one host read) and review them in order."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        import torch

        nan = torch.tensor(float("nan"))
        rows = torch.stack(
            [torch.stack([_as_scalar(v, nan) for v in (loss, grad_norm)]) for _, loss, grad_norm in pending]
        ).tolist()
        for (step, loss, grad_norm), (loss_value, norm_value) in zip(pending, rows):
            self._review(
                step,
                None if loss is None else loss_value,
                None if grad_norm is None else norm_value,
                args,
                state,
                kept_out=self.s.monitor_nonfinite_action == "skip",
            )

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
                findings.append(
                    (
                        kind,
                        action,
                        f"{label} {value:.4g} is {z:.1f} robust sigmas above the running median {window.median():.4g}",
                    )
                )
        return findings

    def _act(self, action: str, kind: str, args, state, step: int, metrics: dict, kept_out: bool = False) -> None:
        if action == "skip":
            self._consecutive_skips += 1
            if self._consecutive_skips >= self.s.monitor_max_skips:
                action = "stop"
                reason = f"{self._consecutive_skips} consecutive steps skipped (monitor_max_skips)"
            else:
                if not kept_out:
                    self.host.drop_update()
                self.skipped_steps.append(step)
                self.notifier.notify(
                    "action", "skip", f"update of step {step} not applied ({kind})", step=step, metrics=metrics
                )
                return
        if action == "rollback":
            checkpoint = last_valid_checkpoint(args.output_dir, max_step=state.global_step)
            if self.rollbacks >= self.s.monitor_max_rollbacks or checkpoint is None:
                action = "stop"
                reason = (
                    "no complete checkpoint to roll back to"
                    if checkpoint is None
                    else f"{self.rollbacks} rollbacks already (monitor_max_rollbacks)"
                )
            else:
                self.host.drop_update()
                self._rollback(checkpoint)
                self.rollbacks += 1
                self.notifier.notify(
                    "action",
                    "rollback",
                    f"reloaded {os.path.basename(checkpoint)} after {kind}; "
                    f"learning rate x{self.s.monitor_rollback_lr_factor} "
                    f"(rollback {self.rollbacks}/{self.s.monitor_max_rollbacks})",
                    step=step,
                    metrics=metrics,
                    checkpoint=checkpoint,
                )
                return
        if action == "stop":
            self.host.drop_update()
            self._pending_stop = locals().get("reason") or kind
            self.skipped_steps.append(step)

    def _rollback(self, checkpoint: str) -> None:
        self.host.reload_checkpoint(checkpoint)  # weights and optimizer back; the schedule stays at this step
        factor = self.s.monitor_rollback_lr_factor
        scheduler = self.host.lr_scheduler
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        for group in self.host.optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor

    def on_step_end(self, args, state, control, **kwargs):
        flush = control.should_log or control.should_save or control.should_evaluate or control.should_training_stop
        if flush or state.global_step >= state.max_steps:
            self._flush(args, state)  # DefaultFlowCallback, first in the list, has decided this step's events
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
        self.reward_hacking.note_log(logs)
        if "loss" not in logs:
            return
        loss = logs["loss"]
        step = state.global_step
        if not math.isfinite(loss) and not self._flagged_in_window:
            self._report_log_anomaly(
                "nonfinite",
                f"logged loss is {loss}",
                step,
                logs,
                control,
                "stop" if self.s.monitor_nonfinite_action in ("stop", "rollback") else "warn",
            )
        self._flagged_in_window = False
        self.overfitting.note_train_loss(loss)
        if self.s.monitor_stall_logs:
            self._check_stall(loss, logs, step, args, state, control)

    def _check_stall(self, loss, logs, step, args, state, control) -> None:
        lr = logs.get("learning_rate")
        warmup = args.get_warmup_steps(state.max_steps) if hasattr(args, "get_warmup_steps") else 0
        if lr is not None and lr == 0 and step > warmup:
            self._once("lr_zero", "learning rate is 0 after warmup: the weights no longer change", step, logs, control)
        else:
            self._active.discard("lr_zero")
        self.logged_losses.append(loss)
        window = self.logged_losses
        if len(window) == window.maxlen and all(math.isfinite(v) for v in window):
            spread, scale = max(window) - min(window), max(1.0, abs(sum(window) / len(window)))
            if spread <= 1e-7 * scale:
                self._once("loss_flat", f"loss has not moved for {len(window)} logs ({loss:.6g})", step, logs, control)
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
        # Only while training, and before the last step: an evaluation after train() (a recipe's final one) can
        # advance EarlyStoppingCallback's counter, but a run that reached max_steps was not stopped early.
        training = self._training and state.global_step < state.max_steps
        if training and self._early_stopping_fired() and "early_stop" not in self._active:
            # transformers' EarlyStoppingCallback (added before this one) just decided to stop: save and report.
            self._active.add("early_stop")
            control.should_save = True
            self.notifier.notify(
                "stop",
                "early_stop",
                f"{args.metric_for_best_model} did not improve for "
                f"{self.s.early_stopping_patience} evaluations (best {state.best_metric})",
                step=step,
                metrics={k: v for k, v in metrics.items() if isinstance(v, float)},
            )
        self._check_reward_hacking(args, state, control, metrics)
        if metrics.get("eval_loss") is not None:
            self._check_overfitting(metrics["eval_loss"], control, state)

    def _check_overfitting(self, eval_loss: float, control, state) -> None:
        train_loss, found = self.overfitting.observe(eval_loss)
        if train_loss is None:
            return
        self._active.difference_update(set(OverfitCheck.KINDS) - {kind for kind, _ in found})
        for kind, message in found:
            if kind in self._active:
                continue
            self._active.add(kind)
            self.notifier.notify(
                "anomaly",
                kind,
                f"{message}; action: {self.s.overfit_action}",
                step=state.global_step,
                metrics={"eval_loss": eval_loss, "loss": train_loss},
            )
            if self.s.overfit_action == "stop" and not self.stopped:
                self._stop(control, state, kind)

    # -- reward hacking (GRPO, RLOO: a reward in the train logs, a task metric in the eval logs) -------------------
    def _check_reward_hacking(self, args, state, control, metrics: dict) -> None:
        judged = self.reward_hacking.observe(args, state.global_step, metrics)
        if judged is None:
            return
        message, values = judged
        if message is None:
            self._active.discard("reward_hacking")
            return
        if "reward_hacking" in self._active:
            return
        self._active.add("reward_hacking")
        action = self.s.monitor_reward_hacking_action
        self.notifier.notify(
            "anomaly", "reward_hacking", f"{message}; action: {action}", step=state.global_step, metrics=values
        )
        if action == "rollback":
            action = self._roll_back_reward_hacking(args, state, values)
        if action == "stop" and not self.stopped:
            self._stop(control, state, "reward_hacking")

    def _roll_back_reward_hacking(self, args, state, values: dict) -> str:
        """Reload the newest complete checkpoint from before the task metric began to fall; `stop` when there is
        none or the rollbacks are used up, else `warn` (training goes on from the reloaded weights)."""
        checkpoint = last_valid_checkpoint(args.output_dir, max_step=self.reward_hacking.window_start())
        if checkpoint is None or self.rollbacks >= self.s.monitor_max_rollbacks:
            return "stop"
        self._rollback(checkpoint)
        self.rollbacks += 1
        self.reward_hacking.restart()
        self._active.discard("reward_hacking")
        self.notifier.notify(
            "action",
            "rollback",
            f"reloaded {os.path.basename(checkpoint)} after reward_hacking; learning rate "
            f"x{self.s.monitor_rollback_lr_factor} (rollback {self.rollbacks}/{self.s.monitor_max_rollbacks})",
            step=state.global_step,
            metrics=values,
            checkpoint=checkpoint,
        )
        return "warn"

    def _early_stopping_fired(self) -> bool:
        from transformers import EarlyStoppingCallback

        for cb in self.host.callbacks:
            if isinstance(cb, EarlyStoppingCallback):
                return cb.early_stopping_patience_counter >= cb.early_stopping_patience
        return False


def monitor_callbacks(host: Any, settings: Any, notifier: Any) -> list[TrainerCallback]:
    """The monitor's callbacks for a loop, in order: early stopping, then the monitor (each when asked for)."""
    from transformers import EarlyStoppingCallback

    callbacks: list[TrainerCallback] = []
    if settings.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(settings.early_stopping_patience, settings.early_stopping_threshold))
    if settings.monitor:
        callbacks.append(MonitorCallback(host, settings, notifier))
    return callbacks


class _StepOnly:
    def __init__(self, step: int):
        self.global_step = step


def _lr(optimizer: Any) -> Optional[float]:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None
