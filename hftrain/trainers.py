"""Drop-in trainers: `HFTrainMixin` plus transformers' `Trainer` and `Seq2SeqTrainer`.

The mixin comes first in the MRO, accepts every argument of the parent unchanged (`*args, **kwargs`), and adds
the callbacks hftrain's settings ask for. TRL's trainers get the same mixin in `hftrain.trl_trainers`.
"""

from __future__ import annotations

import transformers

from .args import hftrain_settings
from .callbacks import build_callbacks

__all__ = ["HFTrainMixin", "Trainer", "Seq2SeqTrainer"]


class HFTrainMixin:
    """Adds hftrain's callbacks to any `transformers.Trainer` subclass. Put it first: `class T(HFTrainMixin, X)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hftrain_args = hftrain_settings(self.args)
        for callback in build_callbacks(self):
            self.add_callback(callback)


class Trainer(HFTrainMixin, transformers.Trainer):
    """`transformers.Trainer` with hftrain's callbacks. Same constructor, same training."""


class Seq2SeqTrainer(HFTrainMixin, transformers.Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with hftrain's callbacks. Same constructor, same training."""
