"""One arguments family for every hftrain trainer.

`HFTrainArguments` holds hftrain's own fields only; each of hftrain's argument classes inherits upstream's class
*and* `HFTrainArguments`, so callbacks read their settings from `args` in every trainer. `HFTrainParser` reads a
YAML file and lets command-line flags override it; an unknown key or a value of the wrong type is a `ConfigError`
that names the key.

TRL's `SFTConfig` / `DPOConfig` live in `hftrain.trl_args` so that plain `Trainer` users never pay TRL's import.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
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

    # --- evaluation metrics (hftrain.metrics) ------------------------------------------------------------------

    # --- curriculum (hftrain.curriculum) -----------------------------------------------------------------------

    def hftrain_post_init(self) -> None:
        """Validate hftrain's fields; called by each combined class before upstream's `__post_init__`."""
        if not isinstance(self.auto_resume, bool):
            raise ConfigError(f"auto_resume: expected true or false, got {self.auto_resume!r}")
        if hasattr(self, "use_cpu") and not self.use_cpu and _launched_without_accelerator():
            # Under `accelerate launch` / torchrun on a machine with no GPU, transformers only forms a gloo
            # process group when `use_cpu` is set; otherwise each process silently trains alone.
            self.use_cpu = True
        # tracker checks

        # evaluation-metric checks

        # curriculum checks


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
        # HfArgumentParser narrows `field.type` in place (e.g. `str | list[str]` becomes `str`), so remember
        # the declared types first: they say which keys may hold a list or a mapping in YAML.
        self._declared_types = {f.name: str(f.type).lower() for t in types for f in dataclasses.fields(t)}
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
        if config_path is not None:
            config_tokens = self._config_to_tokens(config_path)
        namespace, remaining = self.parse_known_args(args=config_tokens + argv)
        if remaining:
            raise ConfigError(f"unknown command-line argument(s): {' '.join(remaining)}{self._suggest(remaining[0])}")
        values = vars(namespace)
        outputs = []
        for dtype in self.dataclass_types:
            keys = {f.name for f in dataclasses.fields(dtype) if f.init}
            try:
                outputs.append(dtype(**{k: v for k, v in values.items() if k in keys}))
            except ConfigError:
                raise
            except (ValueError, TypeError) as exc:  # raised by a dataclass __post_init__
                raise ConfigError(f"{dtype.__name__}: {str(exc).strip().splitlines()[0]}") from exc
        return tuple(outputs)

    # -- YAML -------------------------------------------------------------------------------------------------
    def _config_to_tokens(self, path: str) -> list[str]:
        if not os.path.isfile(path):
            raise ConfigError(f"--config: no such file: {path}")
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc.__class__.__name__}: {exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path}: expected a mapping of field: value, got {type(data).__name__}")
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
                continue
            tokens += _value_to_tokens(key, value, path)
        return tokens

    def _suggest(self, flag: str) -> str:
        flag = flag.split("=", 1)[0]
        close = difflib.get_close_matches(flag, list(self._option_string_actions), n=3)
        return f" (did you mean {', '.join(c.lstrip('-') for c in close)}?)" if close else ""


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
