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
        raw_eval_dataset = _eval_dataset_argument(super().__init__, args, kwargs)  # before TRL tokenises it
        super().__init__(*args, **kwargs)
        self.hftrain_args = hftrain_settings(self.args)
        self._hftrain_evaluator = _generation_evaluator(self, raw_eval_dataset)
        for callback in build_callbacks(self):
            self.add_callback(callback)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """The parent's `train`, resuming only from complete, matching checkpoints; alerts on failure and ends the
        process after a graceful SIGTERM/SIGINT checkpoint (callbacks cannot act around `train`: hftrain.resilience)."""
        from .resilience import run_train

        return run_train(self, super().train, resume_from_checkpoint, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        """The curriculum sampler when `args.curriculum` is set; otherwise the parent's sampler, unchanged."""
        from .curriculum import sampler_for_trainer

        sampler = sampler_for_trainer(self, train_dataset)
        return super()._get_train_sampler(train_dataset) if sampler is None else sampler


    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        """The parent's evaluation plus the `eval_metrics` hftrain computes (generation, perplexity, DPO)."""
        evaluator = getattr(self, "_hftrain_evaluator", None)  # None also while the parent's __init__ runs
        if evaluator is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)
        with evaluator.pending(eval_dataset, metric_key_prefix):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)

    def get_eval_dataloader(self, eval_dataset=None):
        """The parent's dataloader; remembers which prepared dataset this evaluation runs on."""
        if getattr(self, "_hftrain_evaluator", None) is not None:
            self._hftrain_evaluator.saw_eval_dataset(eval_dataset)
        return super().get_eval_dataloader(eval_dataset)

    def log(self, logs, *args, **kwargs):
        """Adds hftrain's eval metrics to the eval logs before the parent logs them, so they also reach the dict
        `evaluate()` returns, `log_history`, callbacks and `metric_for_best_model`."""
        if getattr(self, "_hftrain_evaluator", None) is not None:
            self._hftrain_evaluator.add_metrics(self, logs)
        return super().log(logs, *args, **kwargs)


def _eval_dataset_argument(init, args, kwargs):
    from .generation_eval import bound_argument

    return bound_argument(init, args, kwargs, "eval_dataset")


def _generation_evaluator(trainer, raw_eval_dataset):
    if not getattr(trainer.hftrain_args, "eval_metrics", None):
        return None
    from .generation_eval import GenerationEvaluator

    return GenerationEvaluator(trainer, trainer.hftrain_args, raw_eval_dataset)


class Trainer(HFTrainMixin, transformers.Trainer):
    """`transformers.Trainer` with hftrain's callbacks. Same constructor, same training."""


class Seq2SeqTrainer(HFTrainMixin, transformers.Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with hftrain's callbacks. Same constructor, same training."""
