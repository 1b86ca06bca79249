"""The monitor's per-evaluation checks as small pure state machines: overfitting (eval loss against the train loss)
and reward hacking (an RL trainer's training reward against a task metric measured apart from it). They see only
numbers and say what they found; `hftrain.monitor.MonitorCallback` reports, alerts and acts."""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["OverfitCheck", "RewardHackingCheck", "TASK_METRICS"]

# The generation metrics that can stand for the task when none is named, most direct first.
TASK_METRICS = ("eval_exact_match", "eval_numeric_match", "eval_chrf", "eval_rougeL", "eval_bleu")


class OverfitCheck:
    """`overfit_gap`: eval_loss above the train loss (the mean of the train logs since the previous evaluation) by
    more than the gap; `overfit_rising`: eval_loss rose for `overfit_patience` evaluations while the train loss
    fell."""

    KINDS = ("overfit_gap", "overfit_rising")

    def __init__(self, gap: Optional[float], patience: int):
        self.gap, self.patience = gap, patience
        self._evals: list[tuple[float, float]] = []  # (eval loss, train loss)
        self._since_eval: list[float] = []
        self.last_train_loss: Optional[float] = None

    def note_train_loss(self, loss: float) -> None:
        if math.isfinite(loss):
            self.last_train_loss = loss
            self._since_eval.append(loss)

    def observe(self, eval_loss: float) -> tuple[Optional[float], list[tuple[str, str]]]:
        """(the train loss compared, [(kind, message)] found); the train loss is None before any train log."""
        since, self._since_eval = self._since_eval, []
        train_loss = sum(since) / len(since) if since else self.last_train_loss
        if train_loss is None:
            return None, []
        self._evals.append((eval_loss, train_loss))
        found = []
        gap = eval_loss - train_loss
        if self.gap and gap > self.gap:
            found.append(
                ("overfit_gap", f"eval_loss {eval_loss:.4g} exceeds train loss {train_loss:.4g} by {gap:.4g} "
                 f"(overfit_gap {self.gap})")
            )  # fmt: skip
        n = self.patience
        recent = self._evals[-(n + 1) :]
        rising = len(recent) == n + 1 and all(b[0] > a[0] for a, b in zip(recent, recent[1:]))
        if n and rising and recent[-1][1] < recent[0][1]:
            found.append(
                ("overfit_rising", f"eval_loss rose for {n} evaluations ({recent[0][0]:.4g} -> {recent[-1][0]:.4g}) "
                 f"while the train loss fell ({recent[0][1]:.4g} -> {recent[-1][1]:.4g})")
            )  # fmt: skip
        return train_loss, found


class RewardHackingCheck:
    """Over the last `monitor_reward_hacking_evals` evaluations: the training reward (mean of the train logs between
    evaluations) rose while the task metric fell at each of them by at least `monitor_reward_hacking_min_drop` of
    its starting value overall; or, with `monitor_reward_saturation`, the reward stayed at or above it while the
    task metric stayed below `monitor_task_metric_floor`."""

    def __init__(self, settings: Any):
        self.s = settings
        self._rewards_since_eval: list[float] = []
        self._evals: list[tuple[int, float, float]] = []  # (step, mean train reward, task metric)

    def note_log(self, logs: dict) -> None:
        value = logs.get(self.s.monitor_reward_key)
        train_log = not any(key.startswith("eval_") for key in logs)
        if train_log and isinstance(value, (int, float)) and math.isfinite(value):
            self._rewards_since_eval.append(float(value))

    def task_metric(self, args: Any, metrics: dict) -> Optional[str]:
        """The eval key of the task metric: `monitor_task_metric`, else a higher-is-better `metric_for_best_model`
        that is not a reward, else the first of `TASK_METRICS` logged."""
        named = self.s.monitor_task_metric
        best = getattr(args, "metric_for_best_model", None)
        if not named and best and "reward" not in best and getattr(args, "greater_is_better", None) is not False:
            named = best
        if named:
            key = named if named.startswith("eval_") else f"eval_{named}"
            return key if isinstance(metrics.get(key), (int, float)) else None
        return next((k for k in TASK_METRICS if isinstance(metrics.get(k), (int, float))), None)

    def observe(self, args: Any, step: int, metrics: dict) -> Optional[tuple[Optional[str], dict]]:
        """None when this evaluation cannot be judged (no task metric, or no training reward since the previous
        one, e.g. `eval_on_start`); else (what is wrong or None, the reward and task values)."""
        key = self.task_metric(args, metrics) if self.s.monitor_reward_hacking_evals else None
        if key is None or not self._rewards_since_eval:
            return None
        reward = sum(self._rewards_since_eval) / len(self._rewards_since_eval)
        self._rewards_since_eval = []
        self._evals.append((step, reward, float(metrics[key])))
        return self._finding(key), {self.s.monitor_reward_key: reward, key: float(metrics[key])}

    def window_start(self) -> int:
        """The step of the evaluation the current window starts at (a rollback goes to before it)."""
        return self._evals[-(self.s.monitor_reward_hacking_evals + 1)][0]

    def restart(self) -> None:
        """Forget the evaluations seen (after a rollback the weights are those of an earlier one)."""
        self._evals = []

    def _finding(self, key: str) -> Optional[str]:
        s, n = self.s, self.s.monitor_reward_hacking_evals
        recent = self._evals[-(n + 1) :]
        if len(recent) < n + 1:
            return None
        (_, reward0, task0), (_, reward1, task1) = recent[0], recent[-1]
        falling = all(b[2] < a[2] for a, b in zip(recent, recent[1:]))
        if falling and reward1 > reward0 and task0 - task1 >= s.monitor_reward_hacking_min_drop * abs(task0):
            return (
                f"the training reward rose ({reward0:.4g} -> {reward1:.4g}) while {key} fell for {n} evaluations "
                f"({task0:.4g} -> {task1:.4g}): a reward function is being gamed"
            )
        if s.monitor_reward_saturation is not None and all(
            r >= s.monitor_reward_saturation and t < s.monitor_task_metric_floor for _, r, t in recent[1:]
        ):
            return (
                f"the training reward is saturated ({reward1:.4g} >= {s.monitor_reward_saturation:g}) while {key} "
                f"stayed below {s.monitor_task_metric_floor:g} for {n} evaluations ({task1:.4g}): the reward does "
                "not measure the task"
            )
        return None
