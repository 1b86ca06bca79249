"""Drop-in trainers: `HFTrainMixin` plus transformers' `Trainer` and `Seq2SeqTrainer`.

The mixin comes first in the MRO, accepts every argument of the parent unchanged (`*args, **kwargs`), resolves
hftrain's arguments once (`hftrain.launch`) before the parent sees them, and adds the callbacks hftrain's settings
ask for through the host contract (`hftrain.host`). TRL's trainers get the same mixin in `hftrain.trl_trainers`.
"""

from __future__ import annotations

import inspect

import transformers

from .callbacks import build_callbacks
from .config import hftrain_settings
from .host import host_of
from .launch import resolve_arguments
from .validation import check_trainer_datasets, check_training_data

__all__ = ["HFTrainMixin", "Trainer", "Seq2SeqTrainer"]


class HFTrainMixin:
    """Adds hftrain's callbacks to any `transformers.Trainer` subclass. Put it first: `class T(HFTrainMixin, X)`."""

    def __init__(self, *args, **kwargs):
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        resolved = bound.get("args")
        if resolved is not None:
            resolved = resolve_arguments(bound["args"])
            if resolved is not bound["args"]:
                args, kwargs = _replace_argument(super().__init__, args, kwargs, "args", resolved)
        _preflight(type(self), resolved, bound)  # before the parent prepares (tokenises) any data
        raw_eval_dataset = bound.get("eval_dataset")  # before TRL tokenises it
        super().__init__(*args, **kwargs)
        check_training_data(self.train_dataset, self.eval_dataset)
        self._hftrain_evaluator = _generation_evaluator(self, hftrain_settings(self.args), raw_eval_dataset)
        for callback in build_callbacks(host_of(self)):
            self.add_callback(callback)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """The parent's `train`, resuming only from complete, matching checkpoints; alerts on failure and ends the
        process after a graceful SIGTERM/SIGINT checkpoint (callbacks cannot act around `train`: hftrain.signals)."""
        from .signals import run_train

        return run_train(host_of(self), super().train, resume_from_checkpoint, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        """The curriculum sampler when `args.curriculum` is set; otherwise the parent's sampler, unchanged."""
        from .curriculum import sampler_for_host

        sampler = sampler_for_host(host_of(self), train_dataset, self.data_collator)
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


def _preflight(cls: type, args, bound: dict) -> None:
    """What the parent finds out only deep inside its data preparation or at its first save: the columns and row
    values a TRL trainer reads (in the recipes' words), and an output_dir that cannot take a checkpoint."""
    from .preflight import check_output_dir

    if bound.get("formatting_func") is None:
        check_trainer_datasets(cls, args, bound.get("train_dataset"), bound.get("eval_dataset"))
    check_output_dir(args, bound.get("model"))


def _replace_argument(init, args: tuple, kwargs: dict, name: str, value) -> tuple[tuple, dict]:
    """`(args, kwargs)` with argument `name` replaced, wherever the caller passed it (positionally or by name)."""
    if name in kwargs:
        return args, {**kwargs, name: value}
    position = list(inspect.signature(init).parameters).index(name)
    return args[:position] + (value,) + args[position + 1 :], kwargs


def _generation_evaluator(trainer, settings, raw_eval_dataset):
    if not settings.eval_metrics:
        return None
    from .generation_eval import GenerationEvaluator

    return GenerationEvaluator(trainer, settings, raw_eval_dataset)


class Trainer(HFTrainMixin, transformers.Trainer):
    """`transformers.Trainer` with hftrain's callbacks. Same constructor, same training."""


class Seq2SeqTrainer(HFTrainMixin, transformers.Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with hftrain's callbacks. Same constructor, same training."""
