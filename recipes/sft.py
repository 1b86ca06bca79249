"""Supervised fine-tuning with hftrain's `SFTTrainer`.

With no arguments it trains the embedded tiny Llama on the bundled arithmetic questions (offline, a few minutes on
a laptop CPU) and prints held-out exact-match accuracy before and after. Point it at any Hub model and dataset to
train for real; every field of `SFTConfig`, `ScriptArguments` and `ModelArguments` can be set in a YAML file and
overridden on the command line.

Usage:
    python recipes/sft.py
    python recipes/sft.py --config recipes/configs/sft_default.yaml --max_steps 200
    python -m hftrain.launch --config_file accelerate_configs/cpu_ddp.yaml recipes/sft.py
    python recipes/sft.py --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara \
        --output_dir outputs/qwen-sft

Dataset columns: `messages` (conversations), `prompt` + `completion`, or `text`. The run resumes from the newest
complete checkpoint in `output_dir` unless `--auto_resume false` is given.
"""

from __future__ import annotations

import os
from typing import Optional

from hftrain import ModelArguments, ScriptArguments, SFTConfig, SFTTrainer
from hftrain.builtin import arithmetic_splits
from hftrain.recipe_utils import (
    SFT_FORMATS,
    Headline,
    apply_peft,
    default_curriculum_only_for_bundled_data,
    find_resume_checkpoint,
    finish_run,
    greedy_exact_match,
    is_main_process,
    load_causal_lm,
    load_dataset_splits,
    load_tokenizer,
    parse_recipe_args,
    require_columns,
    run_main,
    start_run,
    train_with_resume,
)
from hftrain.validation import SFT_ROWS

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "sft_default.yaml")


def parse_args(argv: Optional[list[str]] = None):
    """Script, training and model arguments; with no `--config`, the bundled default config is the base."""
    return parse_recipe_args(argv, (ScriptArguments, SFTConfig, ModelArguments), DEFAULT_CONFIG)


def prompts_and_answers(dataset, tokenizer, columns):
    """Prompts (rendered the way the model sees them at inference) and reference answers, for exact match."""
    if columns == ("prompt", "completion") and isinstance(dataset[0]["prompt"], str):
        return list(dataset["prompt"]), list(dataset["completion"])
    if columns == ("messages",):
        prompts = [
            tokenizer.apply_chat_template(m[:-1], tokenize=False, add_generation_prompt=True)
            for m in dataset["messages"]
        ]
        return prompts, [m[-1]["content"] for m in dataset["messages"]]
    return None, None  # plain text or other layouts have no prompt/answer split


def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None):
    """Run the recipe; `callbacks` (e.g. `hftrain tune`'s per-trial pruning callback) are added to the trainer."""
    # 1. Arguments: YAML, then command-line overrides. Bad keys or types fail here, before anything is written.
    script_args, training_args, model_args = parse_args(argv)
    push_target = start_run(training_args, model_args)  # preset choices, global batch, LoRA; push target

    # 2. Data: the bundled arithmetic set, or any Hub/local dataset with one of the SFT layouts.
    train_dataset, eval_dataset = load_dataset_splits(
        script_args,
        bundled=lambda: arithmetic_splits(script_args.bundled_train_size, script_args.bundled_eval_size, seed=0),
        seed=training_args.seed,
        formats=SFT_ROWS,  # columns and every row's values, checked before anything is tokenised
    )
    columns = require_columns(train_dataset, SFT_FORMATS, "dataset_name")
    if eval_dataset is not None:
        require_columns(eval_dataset, [columns], "dataset_test_split")
    if script_args.dataset_name:
        default_curriculum_only_for_bundled_data(training_args, train_dataset)

    # 3. Model and tokenizer: the embedded tiny Llama, or any Hub model by name.
    tokenizer = load_tokenizer(model_args)
    model = apply_peft(load_causal_lm(model_args, tokenizer), model_args, training_args)
    checkpoint = find_resume_checkpoint(training_args, model)  # refuses another run's checkpoint or shape

    # 4. Trainer: hftrain's SFTTrainer is trl.SFTTrainer plus hftrain's callbacks.
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )

    prompts, answers = (
        prompts_and_answers(eval_dataset, tokenizer, columns) if eval_dataset is not None else (None, None)
    )
    if prompts is not None and checkpoint is None:
        before = greedy_exact_match(trainer.model, tokenizer, prompts, answers)
        if is_main_process():
            print(f"[hftrain] held-out exact match before training: {before:.1%} ({len(prompts)} questions)")

    # 5. Train (resuming when a checkpoint exists).
    train_with_resume(trainer, checkpoint)

    # 6-7. Save, evaluate, card (held-out exact match first), push (hftrain.recipe_utils.finish_run), say where.
    headline = None
    if prompts is not None:
        headline = Headline("held-out exact match", "exact_match")  # measured after training, on every process
        headline.measure = lambda: greedy_exact_match(trainer.model, tokenizer, prompts, answers)
    metrics = finish_run(
        trainer,
        model_args=model_args,
        recipe="sft",
        dataset=script_args.dataset_name or "arithmetic",
        task="text-generation",
        push_target=push_target,
        headline=headline,
    )
    if headline is not None and is_main_process():
        print(f"[hftrain] held-out exact match after training: {headline.value:.1%} ({len(prompts)} questions)")

    return trainer, metrics


if __name__ == "__main__":
    run_main(main)
