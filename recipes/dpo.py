"""Preference tuning (DPO) with hftrain's `DPOTrainer`.

With no arguments it starts from the SFT recipe's output (`outputs/sft-default`, when `recipes/sft.py` has run)
or else from the embedded tiny Llama, and trains on the bundled arithmetic preferences (the right answer is
chosen, a close wrong one rejected), offline, in a few minutes on a laptop CPU. Any Hub model and preference
dataset (`prompt`, `chosen`, `rejected`) work the same way; LoRA/QLoRA with `--use_peft` (the reference is then the
adapter-disabled base, no second copy).

Usage:
    python recipes/dpo.py
    python recipes/dpo.py --config recipes/configs/dpo_default.yaml --max_steps 50
    python -m hftrain.launch --config_file accelerate_configs/cpu_ddp.yaml recipes/dpo.py
    python -m hftrain.launch --config_file accelerate_configs/single_gpu.yaml recipes/dpo.py \
        --config recipes/configs/dpo_qwen2.5-0.5b_lora.yaml
    python -m hftrain.launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/dpo.py \
        --config recipes/configs/dpo_qwen2.5-0.5b_full.yaml --global_batch_size 64

The run resumes from the newest complete checkpoint in `output_dir` unless `--auto_resume false` is given;
`--push_to_hub --hub_model_id USER/NAME` pushes the model (or adapter), tokenizer, card and run history at the end.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Optional

from hftrain import DPOConfig, DPOTrainer, ModelArguments, ScriptArguments
from hftrain.builtin import preference_splits
from hftrain.recipe_utils import (
    Headline,
    apply_peft,
    find_resume_checkpoint,
    finish_run,
    is_main_process,
    load_causal_lm,
    load_dataset_splits,
    load_tokenizer,
    parse_recipe_args,
    reference_scores_in_one_process_only,
    require_columns,
    run_main,
    start_from_sft_output,
    start_run,
    train_with_resume,
    untracked,
)
from hftrain.validation import PREFERENCE_ROWS

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "dpo_default.yaml")
PREFERENCE_COLUMNS = tuple(tuple(columns) for columns in PREFERENCE_ROWS)


@dataclass
class DPOScriptArguments:
    """Where the default DPO run starts."""

    sft_output_dir: str = field(
        default="outputs/sft-default",
        metadata={
            "help": "Without `model_name_or_path`: start from this SFT output when it holds a model, "
            "else from the embedded tiny model. Empty: always the embedded model."
        },
    )


def preference_accuracy(metrics: dict) -> Optional[float]:
    """The preference accuracy from evaluation metrics: hftrain's `dpo` metric (every pair counted once) when
    `eval_metrics` asks for it, else TRL's mean of batch means, which TRL logs as `eval_rewards/accuracies`
    whatever `metric_key_prefix` the evaluation had, so each is found by its suffix."""
    for suffix in ("_dpo_preference_accuracy", "rewards/accuracies"):
        found = next((v for k, v in metrics.items() if k.endswith(suffix)), None)
        if found is not None:
            return found
    return None


def print_accuracy_before_training(trainer) -> None:
    """Evaluate the starting model (untracked: not a 0-step run of its own) and print its preference accuracy."""
    with untracked(trainer):
        before = trainer.evaluate(metric_key_prefix="before")
    accuracy = preference_accuracy(before)
    if is_main_process() and accuracy is not None:
        print(f"[hftrain] held-out preference accuracy before training: {accuracy:.1%}")


def parse_args(argv: Optional[list[str]] = None):
    """The recipe's arguments (also what `hftrain tune` checks searched fields against); with no `--config`, the
    bundled default config is the base."""
    return parse_recipe_args(argv, (ScriptArguments, DPOConfig, ModelArguments, DPOScriptArguments), DEFAULT_CONFIG)


def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None):
    """Run the recipe; `callbacks` (e.g. `hftrain tune`'s per-trial pruning callback) are added to the trainer."""
    # 1. Arguments: YAML, then command-line overrides; bad keys, types or hardware fail here, before any writing.
    script_args, training_args, model_args, dpo_args = parse_args(argv)
    push_target = start_run(training_args, model_args)
    reference_scores_in_one_process_only(training_args)

    # 2. Data: the bundled arithmetic preferences, or any dataset with prompt/chosen/rejected columns.
    train_dataset, eval_dataset = load_dataset_splits(
        script_args,
        bundled=lambda: preference_splits(script_args.bundled_train_size, script_args.bundled_eval_size, seed=0),
        seed=training_args.seed,
        formats=PREFERENCE_ROWS,  # columns and every row's values, checked before anything is tokenised
    )
    columns = require_columns(train_dataset, PREFERENCE_COLUMNS, "dataset_name")
    if eval_dataset is not None:
        require_columns(eval_dataset, [columns], "dataset_test_split")

    # 3. Model: the SFT recipe's output when present, else the embedded tiny Llama, or any Hub model by name.
    start_from_sft_output(model_args, dpo_args.sft_output_dir)
    tokenizer = load_tokenizer(model_args)
    model = load_causal_lm(model_args, tokenizer)
    model = apply_peft(model, model_args, training_args)
    # The reference policy. TRL's `ref_model=None` reloads from `config._name_or_path`, which is "" for a model
    # built in memory (TRL would try to load it from the Hub), so full fine-tuning gets a frozen copy; with LoRA the adapter-disabled
    # base is the reference and no copy is needed.
    ref_model = None if model_args.use_peft else copy.deepcopy(model).eval()
    checkpoint = find_resume_checkpoint(training_args, model)

    # 4. Trainer: hftrain's DPOTrainer is trl.DPOTrainer plus hftrain's callbacks.
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )

    # A baseline to compare with: how often the starting model already prefers the right answer.
    if eval_dataset is not None and checkpoint is None:
        print_accuracy_before_training(trainer)

    # 5. Train (resuming when a checkpoint exists).
    train_with_resume(trainer, checkpoint)

    # 6-8. Save, evaluate, card, push, and say where everything is.
    metrics = finish_run(
        trainer,
        model_args=model_args,
        recipe="dpo",
        dataset=script_args.dataset_name or "arithmetic-preferences",
        task="text-generation",
        push_target=push_target,
        headline=Headline("held-out preference accuracy", "accuracy", key="eval_rewards/accuracies"),
    )
    accuracy = preference_accuracy(metrics)
    if is_main_process() and accuracy is not None:
        print(f"[hftrain] held-out preference accuracy after training: {accuracy:.1%}")
    return trainer, metrics


if __name__ == "__main__":
    run_main(main)
