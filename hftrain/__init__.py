"""hftrain: Hugging Face training that tells you more and loses nothing.

Public names are imported lazily, so `hftrain runs …` and other non-training commands never import TRL or
transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "HFTrainArguments": "hftrain.config",
    "HFTrainParser": "hftrain.config",
    "ModelArguments": "hftrain.config",
    "ScriptArguments": "hftrain.config",
    "TrainingArguments": "hftrain.config",
    "Seq2SeqTrainingArguments": "hftrain.config",
    "SFTConfig": "hftrain.config.trl",
    "DPOConfig": "hftrain.config.trl",
    "GRPOConfig": "hftrain.config.trl",
    "RLOOConfig": "hftrain.config.trl",
    "KTOConfig": "hftrain.config.trl",
    "RewardConfig": "hftrain.config.trl",
    "resolve_arguments": "hftrain.launch",
    "HFTrainMixin": "hftrain.trainers",
    "Trainer": "hftrain.trainers",
    "Seq2SeqTrainer": "hftrain.trainers",
    "SFTTrainer": "hftrain.trl_trainers",
    "DPOTrainer": "hftrain.trl_trainers",
    "GRPOTrainer": "hftrain.trl_trainers",
    "RLOOTrainer": "hftrain.trl_trainers",
    "KTOTrainer": "hftrain.trl_trainers",
    "RewardTrainer": "hftrain.trl_trainers",
    "DiffusionConfig": "hftrain.diffusion.config",
    "DiffusionTrainer": "hftrain.diffusion.trainer",
    "HFTrainError": "hftrain.errors",
    "ConfigError": "hftrain.errors",
    "DataError": "hftrain.errors",
    "ModelLoadError": "hftrain.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hftrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
