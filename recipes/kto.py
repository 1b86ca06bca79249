"""Preference tuning from unpaired feedback (KTO) with hftrain's `KTOTrainer`.

With no arguments it starts from the SFT recipe's output (`outputs/sft-default`, when `recipes/sft.py` has run) or
else from the embedded tiny Llama, and trains on the bundled arithmetic preferences, which TRL unpairs into
desirable (the right answer) and undesirable (a close wrong one) rows. Prints the held-out preference accuracy (share
of questions whose right answer gets the higher implied reward) and the desirable/undesirable reward gap before and
after. Offline, CPU.

Usage:
    python recipes/kto.py
    python recipes/kto.py --config recipes/configs/kto_default.yaml --max_steps 100
    python -m hftrain.launch --config_file accelerate_configs/cpu_ddp.yaml recipes/kto.py
    python recipes/kto.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/kto-mix-14k \
        --output_dir outputs/qwen-kto

Dataset columns: `prompt`, `completion` and a boolean `label` (unpaired), or `prompt`, `chosen` and `rejected`
(paired; TRL unpairs it). The run resumes from the newest complete checkpoint unless `--auto_resume false`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Optional

from trl import maybe_extract_prompt, unpair_preference_dataset

from hftrain import KTOConfig, KTOTrainer, ModelArguments, ScriptArguments
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
)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "kto_default.yaml")
KTO_COLUMNS = (("prompt", "completion", "label"), ("prompt", "chosen", "rejected"), ("chosen", "rejected"))


@dataclass
class KTOScriptArguments:
    """Where the default KTO run starts."""

    sft_output_dir: str = field(
        default="outputs/sft-default",
        metadata={"help": "Without `model_name_or_path`: start from this SFT output when it holds a model."},
    )


def parse_args(argv: Optional[list[str]] = None):
    """The recipe's arguments; with no `--config`, the bundled default config is the base."""
    return parse_recipe_args(argv, (ScriptArguments, KTOConfig, ModelArguments, KTOScriptArguments), DEFAULT_CONFIG)


def shuffled_unpaired(dataset, seed: int):
    """The training rows unpaired (when paired) and shuffled with the run's seed. TRL's KTO reads its training rows
    in order (its KL estimate pairs neighbours) and unpairs a paired set in blocks of 1,000 pairs, all desirable
    rows before all undesirable ones: unshuffled, each batch held one label only, and the seed changed nothing."""
    if "label" not in dataset.column_names:  # paired; a set without `prompt` keeps the shared start as its prompt
        dataset = unpair_preference_dataset(dataset.map(maybe_extract_prompt))
    return dataset.shuffle(seed=seed)


def report(metrics: dict, prefix: str, when: str) -> None:
    """The held-out preference accuracy and reward gap (hftrain's `kto` metrics), on rank 0."""
    accuracy, gap = metrics.get(f"{prefix}_kto_preference_accuracy"), metrics.get(f"{prefix}_kto_reward_gap")
    if is_main_process() and accuracy is not None:
        print(f"[hftrain] held-out preference accuracy {when} training: {accuracy:.1%} (reward gap {gap:.3f})")


def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None):
    """Run the recipe; `callbacks` (e.g. `hftrain tune`'s per-trial pruning callback) are added to the trainer."""
    # 1. Arguments: YAML, then command-line overrides; bad keys or types fail here, before any writing.
    script_args, training_args, model_args, kto_args = parse_args(argv)
    push_target = start_run(training_args, model_args)
    reference_scores_in_one_process_only(training_args)

    # 2. Data: the bundled arithmetic preferences (paired; TRL unpairs them), or any KTO or preference dataset.
    train_dataset, eval_dataset = load_dataset_splits(
        script_args,
        bundled=lambda: preference_splits(script_args.bundled_train_size, script_args.bundled_eval_size, seed=0),
        seed=training_args.seed,
    )
    columns = require_columns(train_dataset, KTO_COLUMNS, "dataset_name")
    if eval_dataset is not None:
        require_columns(eval_dataset, [columns], "dataset_test_split")
    train_dataset = shuffled_unpaired(train_dataset, training_args.seed)

    # 3. Model: the SFT recipe's output when present, else the embedded tiny Llama, or any Hub model by name.
    start_from_sft_output(model_args, kto_args.sft_output_dir)
    tokenizer = load_tokenizer(model_args)
    model = apply_peft(load_causal_lm(model_args, tokenizer), model_args, training_args)
    # The reference: a frozen copy (TRL would reload it by name, and an in-memory model has none); with LoRA the
    # adapter-disabled base.
    ref_model = None if model_args.use_peft else copy.deepcopy(model).eval()
    checkpoint = find_resume_checkpoint(training_args, model)

    # 4. Trainer: hftrain's KTOTrainer is trl.KTOTrainer plus hftrain's callbacks and `kto` metrics.
    trainer = KTOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if eval_dataset is not None and checkpoint is None:
        report(trainer.evaluate(metric_key_prefix="before"), "before", "before")

    # 5. Train (resuming when a checkpoint exists), then 6. save, evaluate, card, push.
    train_with_resume(trainer, checkpoint)
    metrics = finish_run(
        trainer,
        model_args=model_args,
        recipe="kto",
        dataset=script_args.dataset_name or "arithmetic-preferences",
        task="text-generation",
        push_target=push_target,
        headline=Headline("held-out preference accuracy", "accuracy", key="eval_kto_preference_accuracy"),
    )
    report(metrics, "eval", "after")
    return trainer, metrics


if __name__ == "__main__":
    run_main(main)
