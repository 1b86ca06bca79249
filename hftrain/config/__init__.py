"""hftrain's configuration: per-feature argument groups, the arguments classes and the YAML/CLI parser.

A leaf package: it imports nothing of hftrain but `hftrain.errors` (a test checks it). Importing it pulls in
transformers (the classes subclass it); TRL's configs live in `hftrain.config.trl`.
"""

from .classes import ModelArguments, ScriptArguments, Seq2SeqTrainingArguments, TrainingArguments
from .groups import HFTrainArguments, hftrain_settings
from .parser import HFTrainParser

__all__ = [
    "HFTrainArguments",
    "HFTrainParser",
    "ModelArguments",
    "ScriptArguments",
    "Seq2SeqTrainingArguments",
    "TrainingArguments",
    "hftrain_settings",
]
