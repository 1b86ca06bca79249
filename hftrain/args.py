"""One arguments family for every hftrain trainer.

`HFTrainArguments` holds hftrain's own fields only; each of hftrain's argument classes inherits upstream's class
*and* `HFTrainArguments`, so callbacks read their settings from `args` in every trainer. `HFTrainParser` reads a
YAML file and lets command-line flags override it; an unknown key or a value of the wrong type is a `ConfigError`
that names the key.

TRL's `SFTConfig` / `DPOConfig` live in `hftrain.trl_args` so that plain `Trainer` users never pay TRL's import.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import transformers
import yaml
from transformers import HfArgumentParser

from .errors import ConfigError

__all__ = [
    "HFTrainArguments",
    "ModelArguments",
    "ScriptArguments",
    "TrainingArguments",
    "Seq2SeqTrainingArguments",
    "HFTrainParser",
    "hftrain_settings",
]


@dataclass
class HFTrainArguments:
    """hftrain's own settings. Every field has a default, so a parent's arguments class behaves like this one."""

    # --- run control ---------------------------------------------------------------------------------------
    auto_resume: bool = field(
        default=True,
        metadata={
            "help": "Recipes resume from the newest valid `checkpoint-N` in `output_dir` when one exists. "
            "Set `--auto_resume false` (or `--no_auto_resume`) to start from scratch."
        },
    )

    # --- tracker (hftrain.tracking) ---------------------------------------------------------------------------
    tracker: bool = field(
        default=True,
        metadata={"help": "Record the run (params, curves, system info, status) in the local SQLite tracker; "
                  "`hftrain runs list` shows it. false turns it off."},
    )
    tracker_db: Optional[str] = field(
        default=None,
        metadata={"help": "Tracker database file. Empty: $HFTRAIN_TRACKER_DB, else ~/.cache/hftrain/runs.db."},
    )
    tracker_experiment: Optional[str] = field(
        default=None, metadata={"help": "Experiment the run belongs to. Empty: $HFTRAIN_EXPERIMENT, else `default`."}
    )
    tracker_tags: Optional[str] = field(
        default=None, metadata={"help": "Tags for the run, `key=value,key2=value2`."}
    )
    tracker_system_interval: float = field(
        default=30.0,
        metadata={"help": "Seconds between `sys/` samples (samples/s, tokens/s, memory, GPU use) and heartbeats; "
                  "0 turns sampling off."},
    )
    tracker_heartbeat_timeout: float = field(
        default=300.0,
        metadata={"help": "Seconds without a heartbeat after which a run still marked running reads as crashed."},
    )
    tracker_hash_max_mb: float = field(
        default=100.0, metadata={"help": "Checkpoint files up to this size (MB) get a SHA-256 in the tracker."}
    )

    # --- evaluation metrics (hftrain.metrics) ------------------------------------------------------------------
    eval_metrics: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Metrics computed at every evaluation, by name: bleu chrf rouge1 rouge2 rougeL rougeLsum "
            "exact_match numeric_match sections perplexity dpo, an import path `module:function`, or an `evaluate` "
            "module (needs the Hub). Empty (default): evaluation is the parent's, unchanged. See the README, section Evaluation metrics."
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
        metadata={"help": "For a `text` column: the string that ends the prompt (e.g. `=` or `### Answer:`); "
                  "the text after it is the reference."},
    )
    eval_exact_match_normalization: list[str] = field(
        default_factory=lambda: ["whitespace"],
        metadata={"help": "Normalisations before `exact_match` compares: lower punctuation whitespace articles."},
    )
    eval_sections: list[str] = field(
        default_factory=list,
        metadata={"help": "Section headers the `sections` metric requires, in order; `HEADER::REGEX` also requires "
                  "the section's content to match REGEX (e.g. `Ingredients:::\\d`)."},
    )
    eval_log_samples: int = field(
        default=4,
        metadata={"help": "(prompt, generation, reference) rows written per evaluation to "
                  "`output_dir/eval_samples/*.jsonl` and logged as `eval_samples_file`. 0: none."},
    )

    # --- curriculum (hftrain.curriculum) -----------------------------------------------------------------------
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
    curriculum_reverse: bool = field(
        default=False, metadata={"help": "Order hard to easy (for ablations)."}
    )
    curriculum_pacing: str = field(
        default="root",
        metadata={
            "help": "Share of the data open at each step: `linear`, `root` (competence), `geometric`, `step` "
            "(stages), or `none` (fixed easy-to-hard order, no sampling).",
            "choices": ["linear", "root", "geometric", "step", "none"],
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


    # --- monitor, alerts, resilience (hftrain.monitor, hftrain.alerts, hftrain.resilience) ----------------------
    monitor: bool = field(
        default=True,
        metadata={"help": "Watch every step for NaN/Inf, loss spikes, gradient explosions, a zero learning rate and a "
                  "loss that stopped moving. Changes nothing and draws no random numbers while nothing is wrong."},
    )
    monitor_nonfinite_action: str = field(
        default="skip",
        metadata={"help": "What to do on a NaN/Inf loss or gradient norm: warn, skip (the update is not applied), "
                  "stop (save a checkpoint and stop) or rollback (reload the last valid checkpoint)."},
    )
    monitor_loss_spike_action: str = field(
        default="warn", metadata={"help": "Action on a loss spike: warn, skip, stop or rollback."}
    )
    monitor_grad_explosion_action: str = field(
        default="warn", metadata={"help": "Action on a gradient-norm explosion: warn, skip, stop or rollback."}
    )
    monitor_spike_threshold: float = field(
        default=8.0,
        metadata={"help": "A step's loss or gradient norm is a spike when it exceeds the running median by this many "
                  "robust standard deviations (1.4826 x MAD, at least 10% of the median)."},
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
        metadata={"help": "Warn when the logged loss has not moved for this many logs, or the learning rate is zero "
                  "after warmup. 0 turns both checks off."},
    )
    monitor_stall_action: str = field(default="warn", metadata={"help": "Action on a stalled run: warn or stop."})
    monitor_max_rollbacks: int = field(
        default=3, metadata={"help": "Rollbacks allowed per run; the next anomaly that asks for one stops the run."}
    )
    monitor_rollback_lr_factor: float = field(
        default=0.5, metadata={"help": "Multiply the learning rate by this after each rollback (1.0 keeps it)."}
    )
    overfit_gap: float = field(
        default=0.0, metadata={"help": "Flag overfitting when eval_loss exceeds the train loss by more than this. 0: off."}
    )
    overfit_patience: int = field(
        default=3,
        metadata={"help": "Flag overfitting when eval_loss rose for this many evaluations in a row while the train "
                  "loss fell. 0: off."},
    )
    overfit_action: str = field(default="warn", metadata={"help": "Action on overfitting: warn or stop."})
    early_stopping_patience: int = field(
        default=0,
        metadata={"help": "Stop after this many evaluations without improvement of `early_stopping_metric` "
                  "(transformers' EarlyStoppingCallback). 0: off."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Smallest change of the metric that counts as an improvement."}
    )
    early_stopping_metric: Optional[str] = field(
        default=None,
        metadata={"help": "Eval metric early stopping watches, e.g. `eval_loss` or `bleu`. Default: "
                  "`metric_for_best_model`, else `eval_loss`."},
    )
    early_stopping_mode: Optional[str] = field(
        default=None, metadata={"help": "`min` or `max`. Default: `max` for metrics other than losses."}
    )
    alert_webhook_url: Optional[str] = field(
        default=None,
        metadata={"help": "POST alerts (anomalies, stop, finish, failure) as JSON to this URL. Slack and Discord "
                  "webhooks get their own body shape. Prefer the HFTRAIN_ALERT_WEBHOOK_URL environment variable: "
                  "arguments are saved with every checkpoint."},
    )
    alert_format: str = field(
        default="auto", metadata={"help": "Webhook body: auto (from the URL), json, slack or discord."}
    )
    alert_timeout: float = field(default=5.0, metadata={"help": "Seconds before one webhook request is abandoned."})
    alert_retries: int = field(default=2, metadata={"help": "Retries of a failed webhook request (with backoff)."})
    graceful_signals: bool = field(
        default=True,
        metadata={"help": "On SIGTERM/SIGINT, save a checkpoint at the next step boundary and stop cleanly. A second "
                  "signal acts at once."},
    )
    signal_exit: bool = field(
        default=True,
        metadata={"help": "After that checkpoint, end the process (status 128 + signal number) once `train()` "
                  "returns. false: `train()` just returns."},
    )

    # --- recipes: global batch, presets, push (hftrain.batching, hftrain.presets, hftrain.hub) ---------------------
    global_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Samples per optimizer step over all processes. Set: `gradient_accumulation_steps` is derived "
                  "from it, the process count and `per_device_train_batch_size`, so the global batch stays the same "
                  "on any number of GPUs (also on resume). None: `gradient_accumulation_steps` as given."},
    )
    optimization_level: Optional[str] = field(
        default=None,
        metadata={"help": "Performance preset: light (bf16, TF32), standard (+ activation checkpointing, fused "
                  "AdamW, padding-free), aggressive (+ torch.compile, packing, 8-bit AdamW). Each choice is printed at "
                  "start; one the hardware lacks is refused with the reason. Values you set yourself win. None: off.",
                  "choices": ["light", "standard", "aggressive"]},
    )

    def hftrain_post_init(self) -> None:
        """Validate hftrain's fields; called by each combined class before upstream's `__post_init__`."""
        if not isinstance(self.auto_resume, bool):
            raise ConfigError(f"auto_resume: expected true or false, got {self.auto_resume!r}")
        if hasattr(self, "use_cpu") and not self.use_cpu and _launched_without_accelerator():
            # Under `accelerate launch` / torchrun on a machine with no GPU, transformers only forms a gloo
            # process group when `use_cpu` is set; otherwise each process silently trains alone.
            self.use_cpu = True
        # tracker checks
        from .tracking.settings import check_tracker_settings

        check_tracker_settings(self)

        # evaluation-metric checks
        from .metrics import check_metric_settings

        check_metric_settings(self)

        # curriculum checks
        from .curriculum import validate_curriculum_settings

        validate_curriculum_settings(self)

        # monitor checks (hftrain.validation keeps the rules next to the rest of the bad-input catalogue)
        from .validation import check_monitor_args

        check_monitor_args(self)

        # recipes: presets, then the global batch (a preset never changes batch sizes), then the push settings
        from .batching import apply_global_batch_size, check_launch_environment
        from .hub import check_push_settings
        from .presets import apply_optimization_level

        check_launch_environment(self)
        apply_optimization_level(self)
        apply_global_batch_size(self)
        check_push_settings(self)


# The fields the user named in the YAML file or on the command line, visible while HFTrainParser builds the
# dataclasses, so `__post_init__` logic (optimization presets) can tell "set to the default value" from "not set".
_EXPLICIT_FIELDS: contextvars.ContextVar[Optional[frozenset]] = contextvars.ContextVar("hftrain_explicit", default=None)


def explicitly_set_fields() -> Optional[frozenset]:
    """Names given in the YAML or on the command line while `HFTrainParser` builds arguments; None otherwise."""
    return _EXPLICIT_FIELDS.get()


def _launched_without_accelerator() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch

    accelerators = [torch.cuda.is_available()]
    for name in ("xpu", "npu", "mlu", "musa"):
        backend = getattr(torch, name, None)
        accelerators.append(bool(backend is not None and backend.is_available()))
    return not any(accelerators)


def hftrain_settings(args: Any) -> HFTrainArguments:
    """hftrain's settings as seen through any arguments object.

    Given an hftrain arguments class, its own values; given a parent's class (`transformers.TrainingArguments`,
    `trl.SFTConfig`, ...), the defaults. This is what lets callbacks work with the parent's arguments too.
    """
    if isinstance(args, HFTrainArguments):
        return args
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(HFTrainArguments) if hasattr(args, f.name)}
    return HFTrainArguments(**values)


@dataclass
class ModelArguments:
    """Which model to train and how to load it."""

    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "A Hub model id (e.g. `Qwen/Qwen2.5-0.5B`) or a local directory. Empty: the recipe's embedded "
            "tiny default, built in code with no download."
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the Hub model."})
    dtype: Optional[str] = field(
        default=None,
        metadata={
            "help": "Weights dtype when loading: `auto`, `float32`, `bfloat16` or `float16`. None keeps the "
            "checkpoint's float32 default.",
            "choices": ["auto", "float32", "bfloat16", "float16"],
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    attn_implementation: Optional[str] = field(
        default=None, metadata={"help": "Attention kernel, e.g. `sdpa`, `eager`, `flash_attention_2`."}
    )
    tiny_hidden_size: int = field(
        default=128, metadata={"help": "Hidden size of the embedded default model (used when no model is named)."}
    )
    tiny_num_layers: int = field(
        default=2, metadata={"help": "Layers of the embedded default model (used when no model is named)."}
    )
    # LoRA / QLoRA (hftrain.peft_utils: peft's LoraConfig, transformers' BitsAndBytesConfig)
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path (0 to 1)."})
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={"help": "Module names that get adapters, e.g. q_proj v_proj. Empty: all linear layers (peft's "
                  "`all-linear`). A name the model lacks is an error that lists the names it has."},
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the base weights in 4 bit (bitsandbytes, GPU)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base weights in 8 bit (bitsandbytes, GPU)."})
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantisation type.", "choices": ["nf4", "fp4"]}
    )
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16",
        metadata={"help": "Compute dtype of 4-bit layers.", "choices": ["bfloat16", "float16", "float32"]},
    )
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "Double quantisation of 4-bit weights."})
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "After training, merge the LoRA adapter into the base weights (`merge_and_unload`) and "
                  "save the full model to `output_dir/merged`."},
    )

    def __post_init__(self):
        from .peft_utils import check_model_arguments

        check_model_arguments(self)
        for name in ("tiny_hidden_size", "tiny_num_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.tiny_hidden_size % 8:
            raise ConfigError(f"tiny_hidden_size: expected a multiple of 8 (heads of size 8+), got {self.tiny_hidden_size}")


@dataclass
class ScriptArguments:
    """Which data a recipe trains on."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "A Hub dataset id, a local directory saved with `save_to_disk`, or a data file (.json, .jsonl, "
            ".csv, .parquet). Empty: the recipe's bundled dataset, generated in code."
        },
    )
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Dataset configuration name on the Hub."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate on. If missing, a share of train is held out."}
    )
    eval_holdout: float = field(
        default=0.05,
        metadata={"help": "Share of train held out for evaluation when the dataset has no test split (0 to 0.5)."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep only the first N training rows (quick experiments)."}
    )
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first N eval rows."})
    bundled_train_size: int = field(
        default=4000, metadata={"help": "Rows of the bundled dataset to generate when `dataset_name` is empty."}
    )
    bundled_eval_size: int = field(
        default=200, metadata={"help": "Held-out rows of the bundled dataset (generated with a different seed)."}
    )

    def __post_init__(self):
        if not 0.0 <= self.eval_holdout <= 0.5:
            raise ConfigError(f"eval_holdout: expected a share between 0 and 0.5, got {self.eval_holdout}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: expected a positive number of rows, got {value}")
        for name in ("bundled_train_size", "bundled_eval_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected a positive number of rows, got {getattr(self, name)}")


@dataclass
class TrainingArguments(transformers.TrainingArguments, HFTrainArguments):
    """`transformers.TrainingArguments` plus hftrain's fields."""

    def __post_init__(self):
        self.hftrain_post_init()
        super().__post_init__()


@dataclass
class Seq2SeqTrainingArguments(transformers.Seq2SeqTrainingArguments, HFTrainArguments):
    """`transformers.Seq2SeqTrainingArguments` plus hftrain's fields."""

    def __post_init__(self):
        self.hftrain_post_init()
        super().__post_init__()


class HFTrainParser(HfArgumentParser):
    """`HfArgumentParser` that reads `--config FILE.yaml` first and lets command-line flags override it.

    YAML values are turned into the same tokens a user would type, placed before the real command line, so
    argparse checks their types and the command line wins. Errors raise `ConfigError` (one line, naming the key)
    instead of printing usage and exiting.
    """

    def __init__(self, dataclass_types, **kwargs):
        types = list(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        # HfArgumentParser narrows `field.type` in place (`str | list[str]` becomes `str`) on Field objects that
        # subclasses share, so read the declared types from the class annotations: they say which keys may hold
        # a list or a mapping in YAML.
        self._declared_types = {f.name: _declared_type(t, f.name) for t in types for f in dataclasses.fields(t)}
        super().__init__(types, **kwargs)

    def error(self, message: str):  # argparse calls this for every parse error
        raise ConfigError(message)

    def _parse_dataclass_field(self, parser, field):
        # A field several dataclasses share (e.g. `trust_remote_code` in ModelArguments and SFTConfig) gets one
        # flag; every dataclass that has the field receives its value.
        if f"--{field.name}" in self._option_string_actions:
            return
        super()._parse_dataclass_field(parser, field)

    def parse_args_and_config(self, args: Optional[list[str]] = None) -> tuple:
        argv = list(sys.argv[1:] if args is None else args)
        config_path, argv = _pop_config_flag(argv)
        config_tokens: list[str] = []
        self._yaml_defaults: set[str] = set()
        if config_path is not None:
            config_tokens = self._config_to_tokens(config_path)
        namespace, remaining = self.parse_known_args(args=config_tokens + argv)
        if remaining:
            raise ConfigError(f"unknown command-line argument(s): {' '.join(remaining)}{self._suggest(remaining[0])}")
        values = vars(namespace)
        given = self._given_fields(config_tokens + argv) | set(self._yaml_defaults)
        token = _EXPLICIT_FIELDS.set(frozenset(given))
        outputs = []
        try:
            for dtype in self.dataclass_types:
                keys = {f.name for f in dataclasses.fields(dtype) if f.init}
                try:
                    outputs.append(dtype(**{k: v for k, v in values.items() if k in keys}))
                except ConfigError:
                    raise
                except (ValueError, TypeError) as exc:  # raised by a dataclass __post_init__
                    raise ConfigError(f"{dtype.__name__}: {str(exc).strip().splitlines()[0]}") from exc
        finally:
            _EXPLICIT_FIELDS.reset(token)
        return tuple(outputs)

    # -- YAML -------------------------------------------------------------------------------------------------
    def _config_to_tokens(self, path: str) -> list[str]:
        if not os.path.isfile(path):
            raise ConfigError(f"--config: no such file: {path}")
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())  # one line: YAML errors span several
            raise ConfigError(f"--config {path}: not valid YAML ({exc.__class__.__name__}: {detail})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path}: expected a mapping of field: value, got {type(data).__name__}")
        self._yaml_defaults = set()
        for name, value in (data.pop("env", None) or {}).items():
            os.environ[str(name)] = str(value)
        tokens: list[str] = []
        for key, value in data.items():
            action = self._option_string_actions.get(f"--{key}")
            if action is None:
                raise ConfigError(f"--config {path}: unknown key '{key}'{self._suggest('--' + str(key))}")
            container = list if isinstance(value, (list, tuple)) else dict if isinstance(value, dict) else None
            if container is not None and action.nargs not in ("+", "*"):
                # Fields such as `report_to` (str | list[str]) or `model_init_kwargs` (dict | str) take a list or
                # a mapping only from YAML: keep the value's type as the parser's default, as TRL's parser does.
                if container.__name__ not in self._declared_types.get(key, ""):
                    kind = "a list" if container is list else "a mapping"
                    raise ConfigError(f"--config {path}: key '{key}' expects a single value, got {kind}: {value!r}")
                self.set_defaults(**{key: value})
                self._yaml_defaults.add(key)
                continue
            tokens += _value_to_tokens(key, value, path)
        return tokens

    def _given_fields(self, tokens: list[str]) -> set[str]:
        """Field names of the flags in `tokens` (`--x`, `--x=1`, `--no_x`)."""
        given = set()
        for token in tokens:
            if not token.startswith("--"):
                continue
            action = self._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                given.add(action.dest)
        return given

    def _suggest(self, flag: str) -> str:
        flag = flag.split("=", 1)[0]
        close = difflib.get_close_matches(flag, list(self._option_string_actions), n=3)
        return f" (did you mean {', '.join(c.lstrip('-') for c in close)}?)" if close else ""


def _declared_type(dtype: type, name: str) -> str:
    for cls in dtype.__mro__:
        annotation = vars(cls).get("__annotations__", {}).get(name)
        if annotation is not None:
            return str(annotation).lower()
    return ""


def _pop_config_flag(argv: list[str]) -> tuple[Optional[str], list[str]]:
    rest, path = [], None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config: expected a path to a YAML file")
            path, i = argv[i + 1], i + 2
            continue
        if token.startswith("--config="):
            path = token.split("=", 1)[1]
        else:
            rest.append(token)
        i += 1
    return path, rest


def _value_to_tokens(key: str, value: Any, path: str) -> list[str]:
    """The command-line tokens equivalent to `key: value` from a YAML file (argparse then checks the type)."""
    if value is None:
        return []  # keep the field's default (None for optional fields)
    if isinstance(value, (list, tuple)):
        return [f"--{key}", *[_scalar(v, key, path) for v in value]] if value else []
    return [f"--{key}", _scalar(value, key, path)]


def _scalar(value: Any, key: str, path: str) -> str:
    if isinstance(value, (dict, list)):
        raise ConfigError(f"--config {path}: key '{key}' holds a nested {type(value).__name__}, expected a scalar")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
