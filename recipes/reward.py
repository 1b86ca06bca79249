"""Reward modelling with hftrain's `RewardTrainer`: a sequence classifier that scores chosen above rejected.

With no arguments it starts from the SFT recipe's output (`outputs/sft-default`, when `recipes/sft.py` has run) with
a fresh one-score head, or else from the embedded tiny Llama, and trains on the bundled arithmetic preferences (the
right answer is chosen, a close wrong one rejected). Prints held-out pairwise accuracy (share of pairs scored chosen
> rejected) before and after. Offline, CPU. A trained reward model plugs into `recipes/grpo.py` as a reward.

Usage:
    python recipes/reward.py
    python recipes/reward.py --config recipes/configs/reward_default.yaml --max_steps 100
    python recipes/reward.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
        --dataset_name trl-lib/ultrafeedback_binarized --output_dir outputs/qwen-rm

Dataset columns: `chosen` and `rejected`, with an optional `prompt` (text or messages). The run resumes from the
newest complete checkpoint in `output_dir` unless `--auto_resume false` is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

from hftrain import ConfigError, ModelArguments, ModelLoadError, RewardConfig, RewardTrainer, ScriptArguments
from hftrain.block_expansion import expanded_config, zero_new_layers
from hftrain.builtin import build_tiny_reward_model, preference_splits
from hftrain.recipe_utils import (
    Headline,
    find_resume_checkpoint,
    finish_run,
    holds_model,
    is_main_process,
    load_dataset_splits,
    load_tokenizer,
    parse_recipe_args,
    require_columns,
    run_main,
    start_run,
    train_with_resume,
)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "reward_default.yaml")
PREFERENCE_COLUMNS = (("prompt", "chosen", "rejected"), ("chosen", "rejected"))


@dataclass
class RewardScriptArguments:
    """Where the default reward-model run starts."""

    sft_output_dir: str = field(
        default="outputs/sft-default",
        metadata={"help": "Without `model_name_or_path`: start from this SFT output (a new score head on it)."},
    )
    expand_layers: int = field(
        default=0,
        metadata={
            "help": "Block expansion: this many new decoder layers on top of the loaded model, starting as the identity "
            "(output projections zeroed); every layer trains. Needs a trained model to start from."
        },
    )

    def __post_init__(self):
        if self.expand_layers < 0:
            raise ConfigError(f"expand_layers: expected 0 or more new layers, got {self.expand_layers}")


def parse_args(argv: Optional[list[str]] = None):
    """The recipe's arguments; with no `--config`, the bundled default config is the base."""
    return parse_recipe_args(
        argv, (ScriptArguments, RewardConfig, ModelArguments, RewardScriptArguments), DEFAULT_CONFIG
    )


def starting_path(model_args, extra) -> Optional[str]:
    """The model to load: `model_name_or_path`, else the SFT recipe's output when it holds a model, else None (the
    embedded tiny model, trained from scratch, which `expand_layers` cannot grow)."""
    path = model_args.model_name_or_path or (extra.sft_output_dir if holds_model(extra.sft_output_dir) else None)
    if path is None and extra.expand_layers:
        raise ConfigError(
            f"expand_layers: needs a trained model to grow (model_name_or_path, or sft_output_dir holding one); "
            f"{extra.sft_output_dir!r} holds no model"
        )
    return path


def load_reward_model(path: Optional[str], model_args, tokenizer, expand_layers: int = 0):
    """A one-score sequence classifier: from `path` (a causal LM gets a new head and `expand_layers` new top layers
    that start as the identity), or the embedded tiny Llama."""
    if path is None:
        heads = max(1, model_args.tiny_hidden_size // 32)
        return build_tiny_reward_model(tokenizer, model_args.tiny_hidden_size, model_args.tiny_num_layers, heads)
    options = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, num_labels=1, **options)
        trained_layers = config.get_text_config().num_hidden_layers
        config = expanded_config(config, expand_layers)
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config, **options)
    except ConfigError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"model_name_or_path: could not load {path!r} as a reward model ({exc})") from exc
    if expand_layers:
        zero_new_layers(model, trained_layers)
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last token before padding
    return model


def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None):
    """Run the recipe; `callbacks` (e.g. `hftrain tune`'s per-trial pruning callback) are added to the trainer."""
    # 1. Arguments: YAML, then command-line overrides; bad keys or types fail here, before any writing.
    script_args, training_args, model_args, extra = parse_args(argv)
    path = starting_path(model_args, extra)
    push_target = start_run(training_args, model_args)

    # 2. Data: the bundled arithmetic preferences, or any dataset with chosen/rejected columns.
    train_dataset, eval_dataset = load_dataset_splits(
        script_args,
        bundled=lambda: preference_splits(script_args.bundled_train_size, script_args.bundled_eval_size, seed=0),
        seed=training_args.seed,
    )
    columns = require_columns(train_dataset, PREFERENCE_COLUMNS, "dataset_name")
    if eval_dataset is not None:
        require_columns(eval_dataset, [columns], "dataset_test_split")

    # 3. Model: the SFT output (or any model) with a one-score head; the head's initial weights come from the seed.
    if path is not None and is_main_process():
        print(f"[hftrain] reward model on {os.path.abspath(path) if os.path.isdir(path) else path}")
    model_args.model_name_or_path = path
    tokenizer = load_tokenizer(model_args)
    set_seed(training_args.seed)
    model = load_reward_model(path, model_args, tokenizer, extra.expand_layers)
    checkpoint = find_resume_checkpoint(training_args, model)

    # 4. Trainer: hftrain's RewardTrainer is trl.RewardTrainer plus hftrain's callbacks and `pairwise` metrics.
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    key = "pairwise_accuracy" if "pairwise" in training_args.eval_metrics else "accuracy"
    if eval_dataset is not None and checkpoint is None:
        before = trainer.evaluate(metric_key_prefix="before")  # TRL logs its own accuracy as eval_ whatever the prefix
        value = before.get(f"before_{key}", before.get(f"eval_{key}"))
        if is_main_process() and value is not None:
            print(f"[hftrain] held-out pairwise accuracy before training: {value:.1%}")

    # 5. Train (resuming when a checkpoint exists), then 6. save, evaluate, card, push.
    train_with_resume(trainer, checkpoint)
    metrics = finish_run(
        trainer,
        model_args=model_args,
        recipe="reward",
        dataset=script_args.dataset_name or "arithmetic-preferences",
        task="text-classification",
        push_target=push_target,
        headline=Headline("held-out pairwise accuracy", "accuracy", key=f"eval_{key}"),
    )
    if is_main_process() and f"eval_{key}" in metrics:
        print(f"[hftrain] held-out pairwise accuracy after training: {metrics[f'eval_{key}']:.1%}")
    return trainer, metrics


if __name__ == "__main__":
    run_main(main)
