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
OPTIMIZATION_LEVELS = ("light", "standard", "aggressive")
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
    optimization_level: Optional[str] = field(
        default=None,
        metadata={
            "help": "Performance preset: light (bf16, TF32), standard (+ activation checkpointing, fused "
            "AdamW, padding-free), aggressive (+ torch.compile, packing, 8-bit AdamW). Each choice is printed at "
            "start; one the hardware lacks is refused with the reason. Values you set yourself win. None: off.",
            "choices": list(OPTIMIZATION_LEVELS),
        },
    )

    def _check_run(self) -> None:
        for name in ("auto_resume", "checkpoint_marker", "graceful_signals", "signal_exit"):
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
            _number(name, getattr(self, name), strict=True, high=1.0)
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


@dataclass(kw_only=True)
class HFTrainArguments(
    RunArguments, TrackerArguments, EvalMetricsArguments, CurriculumArguments, MonitorArguments, AlertArguments
):
    """All of hftrain's settings. Each arguments class of the family is `(HFTrainArguments, upstream class)`."""

    def validate_hftrain(self) -> None:
        """Check every group (pure: no I/O, no probing, nothing changed); the first bad field raises."""
        self._check_run()
        self._check_tracker()
        self._check_eval_metrics()
        self._check_curriculum()
        self._check_monitor()
        self._check_alerts()
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
