"""hftrain's own settings, one dataclass per feature, each documented once and validating itself.

Every field is keyword-only and has a default, so an hftrain arguments class keeps its parent's positional order
(`TrainingArguments("out")` means what it means upstream) and a parent's arguments object reads as all defaults.
Validation here is pure: types, ranges and choices. What needs a registry, an import or the machine (metric names,
scorer import paths, a Hub token, the process count) is checked by `hftrain.launch.resolve_arguments`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ConfigError
from .checkpointing import RetentionArguments

__all__ = [
    "ACTIONS",
    "ALERT_FORMATS",
    "EXACT_MATCH_NORMALIZATIONS",
    "OPTIMIZATION_LEVELS",
    "PACINGS",
    "AlertArguments",
    "CurriculumArguments",
    "EvalMetricsArguments",
    "HFTrainArguments",
    "MonitorArguments",
    "RunArguments",
    "TrackerArguments",
    "hftrain_settings",
]

ACTIONS = ("warn", "skip", "stop", "rollback")
ALERT_FORMATS = ("auto", "json", "slack", "discord")
EXACT_MATCH_NORMALIZATIONS = ("lower", "punctuation", "whitespace", "articles")
OPTIMIZATION_LEVELS = ("light", "standard", "aggressive", "extreme")
PACINGS = ("linear", "root", "geometric", "step", "none")


# -- small checks, each raising one line that names the field ---------------------------------------------------
def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _whole(name: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}: expected a whole number >= {low}, got {value!r}")


def _number(name: str, value: Any, low: float = 0.0, *, strict: bool = False, high: Optional[float] = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        if high is not None:
            allowed = f"a number in {'(' if strict else '['}{low:g}, {high:g}]"
        elif low == 0:
            allowed = "a positive number" if strict else "a non-negative number"
        else:
            allowed = f"a number {'>' if strict else '>='} {low:g}"
        raise ConfigError(f"{name}: expected {allowed}, got {value!r}")


@dataclass(kw_only=True)
class RunArguments:
    """Run control: resume, graceful signals, the global batch and the performance preset."""

    auto_resume: bool = field(
        default=True,
        metadata={
            "help": "Recipes resume from the newest valid `checkpoint-N` in `output_dir` when one exists. "
            "Set `--auto_resume false` (or `--no_auto_resume`) to start from scratch."
        },
    )
    checkpoint_marker: bool = field(
        default=True,
        metadata={
            "help": "Write `hftrain_checkpoint.json` (every file's size and the run signature) into each checkpoint, "
            "so resume can tell a complete checkpoint from one cut off mid-save. false: no marker (and no callback)."
        },
    )
    graceful_signals: bool = field(
        default=True,
        metadata={
            "help": "On SIGTERM/SIGINT, save a checkpoint at the next step boundary and stop cleanly. A second "
            "signal acts at once."
        },
    )
    signal_exit: bool = field(
        default=True,
        metadata={
            "help": "After that checkpoint, end the process (status 128 + signal number) once `train()` "
            "returns. false: `train()` just returns."
        },
    )
    global_batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Samples per optimizer step over all processes. Set: `gradient_accumulation_steps` is derived "
            "from it, the process count and `per_device_train_batch_size`, so the global batch stays the same "
            "on any number of GPUs (also on resume). None: `gradient_accumulation_steps` as given."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Let a run start from scratch in an `output_dir` that holds a previous run's results (final "
            "weights, or checkpoints none of which can be resumed). false (default): such a run is refused before "
            "anything is written, naming the files. (transformers 5 dropped its own field of this name.)"
        },
    )
    optimization_level: Optional[str] = field(
        default=None,
        metadata={
            "help": "Performance preset: light (bf16, TF32), standard (+ activation checkpointing, fused "
            "AdamW, padding-free packing), aggressive (+ torch.compile, Liger kernels, 8-bit AdamW), extreme "
            "(+ activation offloading to CPU memory). Each choice is printed at start; one the hardware or the "
            "installed packages lack is refused with the reason. Values you set yourself win. None: off.",
            "choices": list(OPTIMIZATION_LEVELS),
        },
    )

    def _check_run(self) -> None:
        for name in ("auto_resume", "checkpoint_marker", "graceful_signals", "signal_exit", "overwrite_output_dir"):
            _flag(name, getattr(self, name))
        _whole("global_batch_size", self.global_batch_size, 1, optional=True)
        if self.optimization_level is not None:
            _choice("optimization_level", self.optimization_level, OPTIMIZATION_LEVELS)


@dataclass(kw_only=True)
class TrackerArguments:
    """The local SQLite experiment tracker (`hftrain.tracking`)."""

    tracker: bool = field(
        default=True,
        metadata={
            "help": "Record the run (params, curves, system info, status) in the local SQLite tracker; "
            "`hftrain runs list` shows it. false turns it off."
        },
    )
    tracker_db: Optional[str] = field(
        default=None,
        metadata={"help": "Tracker database file. Empty: $HFTRAIN_TRACKER_DB, else ~/.cache/hftrain/runs.db."},
    )
    tracker_experiment: Optional[str] = field(
        default=None, metadata={"help": "Experiment the run belongs to. Empty: $HFTRAIN_EXPERIMENT, else `default`."}
    )
    tracker_tags: Optional[str] = field(default=None, metadata={"help": "Tags for the run, `key=value,key2=value2`."})
    tracker_system_interval: float = field(
        default=30.0,
        metadata={
            "help": "Seconds between `sys/` samples (samples/s, tokens/s, memory, GPU use) and heartbeats; "
            "0 turns sampling off."
        },
    )
    tracker_heartbeat_timeout: float = field(
        default=300.0,
        metadata={"help": "Seconds without a heartbeat after which a run still marked running reads as crashed."},
    )
    tracker_hash_max_mb: float = field(
        default=100.0, metadata={"help": "Checkpoint files up to this size (MB) get a SHA-256 in the tracker."}
    )

    def _check_tracker(self) -> None:
        _flag("tracker", self.tracker)
        if self.tracker_db is not None and (not isinstance(self.tracker_db, str) or not self.tracker_db.strip()):
            raise ConfigError(f"tracker_db: expected a file path, got {self.tracker_db!r}")
        _number("tracker_system_interval", self.tracker_system_interval)
        _number("tracker_heartbeat_timeout", self.tracker_heartbeat_timeout, strict=True)
        if self.tracker_heartbeat_timeout <= self.tracker_system_interval:
            raise ConfigError(
                f"tracker_heartbeat_timeout: {self.tracker_heartbeat_timeout} s must exceed tracker_system_interval "
                f"({self.tracker_system_interval} s), or live runs would read as crashed"
            )
        _number("tracker_hash_max_mb", self.tracker_hash_max_mb)
        for item in (self.tracker_tags or "").split(","):
            if item.strip() and not item.partition("=")[0].strip():
                raise ConfigError(f"tracker_tags: expected key=value[,key=value...], got {self.tracker_tags!r}")


@dataclass(kw_only=True)
class EvalMetricsArguments:
    """Metrics computed at every evaluation (`hftrain.metrics`, `hftrain.generation_eval`)."""

    eval_metrics: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Metrics computed at every evaluation, by name: bleu chrf rouge1 rouge2 rougeL rougeLsum "
            "exact_match numeric_match sections perplexity dpo, an import path `module:function`, or an `evaluate` "
            "module (needs the Hub). Empty (default): evaluation is the parent's, unchanged. See the README, "
            "section Evaluation metrics."
        },
    )
    eval_generation_samples: int = field(
        default=64, metadata={"help": "Eval rows (the first N) to generate from for generation metrics; 0 = all."}
    )
    eval_generation_batch_size: Optional[int] = field(
        default=None, metadata={"help": "Prompts per generation batch. None: `per_device_eval_batch_size`."}
    )
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated per prompt at evaluation."})
    eval_num_beams: Optional[int] = field(
        default=None, metadata={"help": "Beams for evaluation generation. None: `generation_num_beams` or 1."}
    )
    eval_do_sample: bool = field(
        default=False, metadata={"help": "Sample instead of greedy decoding (seeded per batch from `seed`)."}
    )
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature with `eval_do_sample`."})
    eval_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling share with `eval_do_sample`."})
    eval_response_template: Optional[str] = field(
        default=None,
        metadata={
            "help": "For a `text` column: the string that ends the prompt (e.g. `=` or `### Answer:`); "
            "the text after it is the reference."
        },
    )
    eval_reference_column: str = field(
        default="answer",
        metadata={
            "help": "For prompt-only eval rows (GRPO, RLOO): the column holding the reference the generation metrics "
            "compare the policy's completions with (TRL drops a column named `completion` before the reward "
            "functions see it). Rows with `completion` or `chosen` use those."
        },
    )
    eval_exact_match_normalization: list[str] = field(
        default_factory=lambda: ["whitespace"],
        metadata={"help": "Normalisations before `exact_match` compares: lower punctuation whitespace articles."},
    )
    eval_sections: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Section headers the `sections` metric requires, in order; `HEADER::REGEX` also requires "
            "the section's content to match REGEX (e.g. `Ingredients:::\\d`)."
        },
    )
    eval_log_samples: int = field(
        default=4,
        metadata={
            "help": "(prompt, generation, reference) rows written per evaluation to "
            "`output_dir/eval_samples/*.jsonl` and logged as `eval_samples_file`. 0: none."
        },
    )

    def _check_eval_metrics(self) -> None:
        if not isinstance(self.eval_metrics, (list, tuple, str)):
            raise ConfigError(f"eval_metrics: expected a list of metric names, got {self.eval_metrics!r}")
        _whole("eval_generation_samples", self.eval_generation_samples, 0)
        _whole("eval_log_samples", self.eval_log_samples, 0)
        _whole("eval_max_new_tokens", self.eval_max_new_tokens, 1)
        _whole("eval_generation_batch_size", self.eval_generation_batch_size, 1, optional=True)
        _whole("eval_num_beams", self.eval_num_beams, 1, optional=True)
        _flag("eval_do_sample", self.eval_do_sample)
        _number("eval_temperature", self.eval_temperature, strict=True)
        _number("eval_top_p", self.eval_top_p, strict=True, high=1.0)
        unknown = [o for o in self.eval_exact_match_normalization if o not in EXACT_MATCH_NORMALIZATIONS]
        if unknown:
            raise ConfigError(
                f"eval_exact_match_normalization: unknown option(s) {unknown}; "
                f"allowed: {', '.join(EXACT_MATCH_NORMALIZATIONS)}"
            )
        if "sections" in metric_names(self.eval_metrics) and not self.eval_sections:
            raise ConfigError(
                "eval_sections: the `sections` metric needs section headers, e.g. "
                "--eval_sections 'Title:' 'Ingredients:::\\d' 'Steps:::^\\s*1\\.'"
            )
        if self.eval_response_template is not None and not self.eval_response_template:
            raise ConfigError("eval_response_template: expected a non-empty string or None, got ''")
        if not isinstance(self.eval_reference_column, str) or not self.eval_reference_column:
            raise ConfigError(f"eval_reference_column: expected a column name, got {self.eval_reference_column!r}")


def metric_names(value: Any) -> list:
    """`eval_metrics` as a list: a comma/space separated string (Python callers) is split, a list kept."""
    if isinstance(value, str):
        return value.replace(",", " ").split()
    return list(value or [])


@dataclass(kw_only=True)
class CurriculumArguments:
    """Curriculum learning (`hftrain.curriculum`): the order and pacing of training rows."""

    curriculum: Optional[str] = field(
        default=None,
        metadata={
            "help": "Curriculum scorer: `length` (tokens; DPO: prompt + longer answer), `column` (a numeric column, "
            "see `curriculum_column`), `loss` (loss of the initial model or `curriculum_loss_model`), a name given "
            "to `hftrain.curriculum.register_scorer`, or `module:function` (row -> float). None: random order."
        },
    )
    curriculum_column: str = field(
        default="difficulty", metadata={"help": "Numeric column scored by `curriculum: column` (lower = easier)."}
    )
    curriculum_loss_model: Optional[str] = field(
        default=None,
        metadata={"help": "For `curriculum: loss`: a model path or Hub id to score with. None: the initial model."},
    )
    curriculum_loss_batch_size: int = field(
        default=32, metadata={"help": "Batch size of the one-off scoring pass of `curriculum: loss`."}
    )
    curriculum_reverse: bool = field(default=False, metadata={"help": "Order hard to easy (for ablations)."})
    curriculum_pacing: str = field(
        default="root",
        metadata={
            "help": "Share of the data open at each step: `linear`, `root` (competence), `geometric`, `step` "
            "(stages), or `none` (fixed easy-to-hard order, no sampling).",
            "choices": list(PACINGS),
        },
    )
    curriculum_start: float = field(
        default=0.2, metadata={"help": "Share of the data (easiest first) open at the first step, in (0, 1]."}
    )
    curriculum_full_at: float = field(
        default=0.5, metadata={"help": "Share of training (of all optimizer steps) after which all data is open."}
    )
    curriculum_stages: Optional[list[float]] = field(
        default=None,
        metadata={"help": "For `curriculum_pacing: step`: the open shares, each held for an equal part of the ramp."},
    )

    def curriculum_on(self) -> bool:
        """True when a scorer is named (a string other than none/off, or a callable)."""
        value = self.curriculum
        return callable(value) or (
            isinstance(value, str) and value.strip().lower() not in ("", "none", "off", "false")
        )

    def _check_curriculum(self) -> None:
        if not self.curriculum_on():
            return
        _choice("curriculum_pacing", self.curriculum_pacing, PACINGS)
        for name in ("curriculum_start", "curriculum_full_at"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value <= 1.0:
                raise ConfigError(f"{name}: expected a share in (0, 1], got {value!r}")
        stages = self.curriculum_stages
        if stages is not None:
            if len(stages) == 0 or any(not isinstance(v, (int, float)) or not 0.0 < v <= 1.0 for v in stages):
                raise ConfigError(f"curriculum_stages: expected a list of shares in (0, 1], got {stages!r}")
            if any(b < a for a, b in zip(stages, stages[1:])):
                raise ConfigError(f"curriculum_stages: shares must not decrease, got {stages!r}")
        _whole("curriculum_loss_batch_size", self.curriculum_loss_batch_size, 1)
        if self.curriculum == "column" and not self.curriculum_column:
            raise ConfigError("curriculum_column: curriculum=column needs the name of a numeric column")
        if self.curriculum_loss_model and self.curriculum != "loss":
            raise ConfigError(
                f"curriculum_loss_model: only used with curriculum=loss, got curriculum={self.curriculum!r}"
            )


@dataclass(kw_only=True)
class MonitorArguments:
    """The training monitor (`hftrain.monitor`): anomalies, overfitting and early stopping, and what to do."""

    monitor: bool = field(
        default=True,
        metadata={
            "help": "Watch every step for NaN/Inf, loss spikes, gradient explosions, a zero learning rate and a "
            "loss that stopped moving. Changes nothing and draws no random numbers while nothing is wrong."
        },
    )
    monitor_nonfinite_action: str = field(
        default="skip",
        metadata={
            "help": "What to do on a NaN/Inf loss or gradient norm: warn, skip (the update is not applied), "
            "stop (save a checkpoint and stop) or rollback (reload the last valid checkpoint)."
        },
    )
    monitor_loss_spike_action: str = field(
        default="warn", metadata={"help": "Action on a loss spike: warn, skip, stop or rollback."}
    )
    monitor_grad_explosion_action: str = field(
        default="warn", metadata={"help": "Action on a gradient-norm explosion: warn, skip, stop or rollback."}
    )
    monitor_spike_threshold: float = field(
        default=8.0,
        metadata={
            "help": "A step's loss or gradient norm is a spike when it exceeds the running median by this many "
            "robust standard deviations (1.4826 x MAD, at least 10% of the median)."
        },
    )
    monitor_window: int = field(default=100, metadata={"help": "Steps in the running median/MAD window."})
    monitor_min_history: int = field(
        default=10, metadata={"help": "Steps seen before spikes are judged (the first steps are too noisy)."}
    )
    monitor_max_skips: int = field(
        default=5, metadata={"help": "Consecutive skipped steps after which the monitor stops the run instead."}
    )
    monitor_stall_logs: int = field(
        default=20,
        metadata={
            "help": "Warn when the logged loss has not moved for this many logs, or the learning rate is zero "
            "after warmup. 0 turns both checks off."
        },
    )
    monitor_stall_action: str = field(default="warn", metadata={"help": "Action on a stalled run: warn or stop."})
    monitor_max_rollbacks: int = field(
        default=3, metadata={"help": "Rollbacks allowed per run; the next anomaly that asks for one stops the run."}
    )
    monitor_rollback_lr_factor: float = field(
        default=0.5, metadata={"help": "Multiply the learning rate by this after each rollback (1.0 keeps it)."}
    )
    overfit_gap: float = field(
        default=0.0,
        metadata={"help": "Flag overfitting when eval_loss exceeds the train loss by more than this. 0: off."},
    )
    overfit_patience: int = field(
        default=3,
        metadata={
            "help": "Flag overfitting when eval_loss rose for this many evaluations in a row while the train "
            "loss fell. 0: off."
        },
    )
    overfit_action: str = field(default="warn", metadata={"help": "Action on overfitting: warn or stop."})
    monitor_reward_hacking_evals: int = field(
        default=3,
        metadata={
            "help": "Reward hacking (GRPO, RLOO): flag it when the task metric fell at each of this many evaluations "
            "in a row (by at least `monitor_reward_hacking_min_drop` overall) while the training reward rose. "
            "0: off. Needs a task metric in the eval logs (eval_metrics, e.g. exact_match)."
        },
    )
    monitor_reward_hacking_min_drop: float = field(
        default=0.1,
        metadata={
            "help": "Smallest fall of the task metric over those evaluations that counts, as a share of its value "
            "at the start (0.1: 0.70 -> 0.63), so evaluation noise does not look like hacking."
        },
    )
    monitor_reward_saturation: Optional[float] = field(
        default=None,
        metadata={
            "help": "Also flag reward hacking when the training reward is at or above this value (e.g. the most "
            "your reward functions can give together) for `monitor_reward_hacking_evals` evaluations while the "
            "task metric stays below `monitor_task_metric_floor`. None: that check is off."
        },
    )
    monitor_task_metric_floor: float = field(
        default=0.5, metadata={"help": "A task metric below this counts as low, for `monitor_reward_saturation`."}
    )
    monitor_reward_key: str = field(
        default="reward",
        metadata={
            "help": "The training log key of the reward (TRL's GRPO and RLOO log the summed reward as `reward`)."
        },
    )
    monitor_task_metric: Optional[str] = field(
        default=None,
        metadata={
            "help": "The eval metric that measures the task, higher is better (e.g. `eval_exact_match`). Default: "
            "`metric_for_best_model` unless it is a reward, else the first of eval_exact_match, "
            "eval_numeric_match, eval_chrf, eval_rougeL, eval_bleu that is logged."
        },
    )
    monitor_reward_hacking_action: str = field(
        default="warn",
        metadata={
            "help": "Action on reward hacking: warn, stop (save a checkpoint and stop) or rollback (reload the "
            "newest complete checkpoint from before the task metric began to fall, and go on)."
        },
    )
    early_stopping_patience: int = field(
        default=0,
        metadata={
            "help": "Stop after this many evaluations without improvement of `early_stopping_metric` "
            "(transformers' EarlyStoppingCallback). 0: off."
        },
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Smallest change of the metric that counts as an improvement."}
    )
    early_stopping_metric: Optional[str] = field(
        default=None,
        metadata={
            "help": "Eval metric early stopping watches, e.g. `eval_loss` or `bleu`. Default: "
            "`metric_for_best_model`, else `eval_loss`."
        },
    )
    early_stopping_mode: Optional[str] = field(
        default=None, metadata={"help": "`min` or `max`. Default: `max` for metrics other than losses."}
    )

    def _check_monitor(self) -> None:
        for name in ("monitor_nonfinite_action", "monitor_loss_spike_action", "monitor_grad_explosion_action"):
            _choice(name, getattr(self, name), ACTIONS)
        for name in ("monitor_stall_action", "overfit_action"):
            _choice(name, getattr(self, name), ("warn", "stop"))
        self._check_reward_hacking()
        _flag("monitor", self.monitor)
        for name, low in (("monitor_window", 3), ("monitor_min_history", 2), ("monitor_max_skips", 1),
                          ("monitor_stall_logs", 0), ("monitor_max_rollbacks", 0), ("overfit_patience", 0),
                          ("early_stopping_patience", 0)):  # fmt: skip
            _whole(name, getattr(self, name), low)
        if self.monitor_min_history > self.monitor_window:
            raise ConfigError(
                f"monitor_min_history: expected at most monitor_window ({self.monitor_window}), "
                f"got {self.monitor_min_history}"
            )
        _number("monitor_spike_threshold", self.monitor_spike_threshold, strict=True)
        _number("overfit_gap", self.overfit_gap)
        _number("early_stopping_threshold", self.early_stopping_threshold)
        _number("monitor_rollback_lr_factor", self.monitor_rollback_lr_factor, strict=True, high=1.0)
        if not self.early_stopping_patience and (self.early_stopping_metric or self.early_stopping_mode):
            raise ConfigError(
                "early_stopping_metric / early_stopping_mode: set early_stopping_patience (> 0) to turn "
                "early stopping on"
            )
        if self.early_stopping_mode is not None:
            _choice("early_stopping_mode", self.early_stopping_mode, ("min", "max"))

    def _check_reward_hacking(self) -> None:
        _choice("monitor_reward_hacking_action", self.monitor_reward_hacking_action, ("warn", "stop", "rollback"))
        _whole("monitor_reward_hacking_evals", self.monitor_reward_hacking_evals, 0)
        _number("monitor_reward_hacking_min_drop", self.monitor_reward_hacking_min_drop, high=1.0)
        _number("monitor_task_metric_floor", self.monitor_task_metric_floor, low=-math.inf)
        if self.monitor_reward_saturation is not None:
            _number("monitor_reward_saturation", self.monitor_reward_saturation, low=-math.inf)
        for name in ("monitor_reward_key", "monitor_task_metric"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name}: expected a metric name, got {value!r}")

    def rollback_requested(self) -> bool:
        """True when any anomaly action is `rollback` (it needs checkpoints to go back to)."""
        actions = (self.monitor_nonfinite_action, self.monitor_loss_spike_action, self.monitor_grad_explosion_action)
        return "rollback" in actions


@dataclass(kw_only=True)
class AlertArguments:
    """Alerts (`hftrain.alerts`): anomalies, stops, the end of a run and failures sent to a webhook."""

    alert_webhook_url: Optional[str] = field(
        default=None,
        metadata={
            "help": "POST alerts (anomalies, stop, finish, failure) as JSON to this URL. Slack and Discord "
            "webhooks get their own body shape. Prefer the HFTRAIN_ALERT_WEBHOOK_URL environment variable: "
            "arguments are saved with every checkpoint."
        },
    )
    alert_format: str = field(
        default="auto", metadata={"help": "Webhook body: auto (from the URL), json, slack or discord."}
    )
    alert_timeout: float = field(default=5.0, metadata={"help": "Seconds before one webhook request is abandoned."})
    alert_retries: int = field(default=2, metadata={"help": "Retries of a failed webhook request (with backoff)."})

    def _check_alerts(self) -> None:
        _choice("alert_format", self.alert_format, ALERT_FORMATS)
        _number("alert_timeout", self.alert_timeout, strict=True)
        _whole("alert_retries", self.alert_retries, 0)
        url = self.alert_webhook_url
        if url is not None and not str(url).startswith(("http://", "https://")):
            raise ConfigError(f"alert_webhook_url: expected an http:// or https:// URL, got {url!r}")


# -- upstream's numeric fields ----------------------------------------------------------------------------------
# transformers and TRL accept these at any value and fail (or silently train nothing) much later: a
# ZeroDivisionError in a sampler, torch's "Invalid learning rate" traceback, NaN weights. Each entry is checked when
# the combined class has the field; `when` names the strategy field that makes an interval field matter.
def _share(name: str, value: Any, *, open_high: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or value > 1 or (open_high and value == 1):
        raise ConfigError(f"{name}: expected a number in [0, 1{')' if open_high else ']'}, got {value!r}")


def _optional_whole(low: int):
    return lambda name, value: _whole(name, value, low, optional=True)


_UPSTREAM_CHECKS: tuple = (
    ("learning_rate", lambda n, v: _number(n, v)),
    ("per_device_train_batch_size", lambda n, v: _whole(n, v, 1)),
    ("per_device_eval_batch_size", lambda n, v: _whole(n, v, 1)),
    ("gradient_accumulation_steps", lambda n, v: _whole(n, v, 1)),
    ("eval_accumulation_steps", _optional_whole(1)),
    ("weight_decay", lambda n, v: _number(n, v)),
    ("adam_beta1", lambda n, v: _share(n, v, open_high=True)),
    ("adam_beta2", lambda n, v: _share(n, v, open_high=True)),
    ("adam_epsilon", lambda n, v: _number(n, v, strict=True)),
    ("max_grad_norm", lambda n, v: v is None or _number(n, v)),
    ("warmup_steps", lambda n, v: _number(n, v)),
    ("label_smoothing_factor", lambda n, v: _share(n, v, open_high=True)),
    ("eval_delay", lambda n, v: _number(n, v)),
    ("save_total_limit", _optional_whole(0)),
    ("seed", lambda n, v: _whole(n, v, 0) or _seed_range(n, v)),
    ("data_seed", lambda n, v: v is None or _whole(n, v, 0) or _seed_range(n, v)),
    ("dataloader_num_workers", lambda n, v: _whole(n, v, 0)),
    ("dataloader_prefetch_factor", _optional_whole(1)),
    ("dataset_num_proc", _optional_whole(1)),
    ("max_length", _optional_whole(1)),
    ("generation_max_length", _optional_whole(1)),
    ("generation_num_beams", _optional_whole(1)),
    ("precompute_ref_batch_size", _optional_whole(1)),
    ("beta", lambda n, v: _number(n, v)),  # 0 is GRPO's default (no KL term, no reference model)
)
# Interval fields: a positive number of steps (below 1: a share of training, as upstream reads it) when their
# strategy is `steps`; None means "as logging_steps" for eval_steps.
_INTERVALS = (("logging_steps", "logging_strategy"), ("eval_steps", "eval_strategy"), ("save_steps", "save_strategy"))


def _seed_range(name: str, value: int) -> None:
    if value > 2**32 - 1:
        raise ConfigError(f"{name}: expected a whole number from 0 to 4294967295 (numpy's seed range), got {value}")


def _strategy(value: Any) -> str:
    return str(getattr(value, "value", value))


def check_upstream_ranges(args: Any) -> None:
    """Range checks of upstream's numeric fields present on `args` (pure; the first bad field raises)."""
    for name, check in _UPSTREAM_CHECKS:
        if hasattr(args, name):
            check(name, getattr(args, name))
    max_steps = getattr(args, "max_steps", -1)
    if max_steps != -1:
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise ConfigError(
                f"max_steps: expected -1 (train num_train_epochs) or a whole number >= 1, got {max_steps!r}"
            )
    elif hasattr(args, "num_train_epochs"):
        _number("num_train_epochs", args.num_train_epochs, strict=True)
    for name, strategy in _INTERVALS:
        value = getattr(args, name, None)
        if value is not None and _strategy(getattr(args, strategy, "no")) == "steps":
            _number(name, value, strict=True)


@dataclass(kw_only=True)
class HFTrainArguments(
    RunArguments,
    TrackerArguments,
    EvalMetricsArguments,
    CurriculumArguments,
    MonitorArguments,
    AlertArguments,
    RetentionArguments,
):
    """All of hftrain's settings. Each arguments class of the family is `(HFTrainArguments, upstream class)`."""

    def remember_given_values(self) -> None:
        """Keep the values this object was constructed with, before upstream's `__post_init__` derives others from
        them (TRL's GRPO sets `generation_batch_size` from `steps_per_generation`, transformers turns `optim` into an
        enum, ...), so `hftrain.launch` can rebuild it with changed inputs exactly as a user would have built it."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        self._hftrain_given = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                               for k, v in given.items()}  # fmt: skip

    def validate_hftrain(self) -> None:
        """Check every group (pure: no I/O, no probing, nothing changed); the first bad field raises."""
        self._check_run()
        self._check_tracker()
        self._check_eval_metrics()
        self._check_curriculum()
        self._check_monitor()
        self._check_alerts()
        self._check_retention()
        check_upstream_ranges(self)
        self._check_against_upstream()

    def _check_against_upstream(self) -> None:
        # Combinations with the upstream fields of the combined class (absent in a bare HFTrainArguments).
        if self.rollback_requested() and str(getattr(self, "save_strategy", "steps")).endswith("no"):
            raise ConfigError(
                "monitor_*_action: 'rollback' reloads the last checkpoint, but save_strategy is 'no'; "
                "set save_strategy to steps or epoch, or pick warn, skip or stop"
            )
        if self.early_stopping_patience and str(getattr(self, "eval_strategy", "steps")).endswith("no"):
            raise ConfigError(
                "early_stopping_patience: early stopping needs evaluations, but eval_strategy is 'no'; "
                "set eval_strategy to steps or epoch"
            )
        best, metric = getattr(self, "metric_for_best_model", None), self.early_stopping_metric
        if self.early_stopping_patience and best and metric and _unprefixed(best) != _unprefixed(metric):
            # transformers' EarlyStoppingCallback compares against state.best_metric, which follows the best-model metric
            raise ConfigError(
                f"early_stopping_metric: {metric!r} differs from metric_for_best_model {best!r}; "
                "early stopping watches metric_for_best_model, so set them to the same metric"
            )


def _unprefixed(metric: str) -> str:
    return metric[5:] if metric.startswith("eval_") else metric


HFTRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(HFTrainArguments))


def hftrain_settings(args: Any) -> HFTrainArguments:
    """hftrain's settings as seen through any arguments object.

    Given an hftrain arguments class, its own values; given a parent's class (`transformers.TrainingArguments`,
    `trl.SFTConfig`, ...), the defaults. This is what lets callbacks work with the parent's arguments too.
    """
    if isinstance(args, HFTrainArguments):
        return args
    return HFTrainArguments(**{name: getattr(args, name) for name in HFTRAIN_FIELDS if hasattr(args, name)})
