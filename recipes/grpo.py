"""Reinforcement learning from a verifiable reward (GRPO) with hftrain's `GRPOTrainer`.

With no arguments it starts from the SFT recipe's output (`outputs/sft-default`, when `recipes/sft.py` has run), or
else from a short SFT warm-up of the embedded tiny Llama, and trains on the bundled arithmetic prompts with two
rewards: `answer_reward` (1 for exactly the right answer) and `format_reward` (0.1 for a plain number). Every
evaluation measures held-out exact match from the policy's own greedy completions, apart from the rewards, so the
best checkpoint is picked by the task and the monitor flags reward hacking (the reward rising while exact match
falls). Prints held-out exact match before and after. Offline, CPU.

Usage:
    python recipes/grpo.py
    python recipes/grpo.py --config recipes/configs/grpo_default.yaml --max_steps 100
    python -m hftrain.launch --config_file accelerate_configs/cpu_ddp.yaml recipes/grpo.py
    python recipes/grpo.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name DATA \
        --reward_funcs mypkg.rewards:accuracy --eval_reference_column solution --output_dir outputs/qwen-grpo

Dataset columns: `prompt` (text or messages) and the reference answer in `eval_reference_column` (default
`answer`; GRPO drops a column named `completion` before the reward functions see it). Reward functions get every
column as a keyword list. The run resumes from the newest complete checkpoint unless `--auto_resume false`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Optional

from hftrain import ConfigError, GRPOConfig, GRPOTrainer, ModelArguments, ScriptArguments
from hftrain.builtin import arithmetic_splits
from hftrain.recipe_utils import (
    Headline,
    find_resume_checkpoint,
    finish_run,
    greedy_exact_match,
    holds_model,
    is_main_process,
    load_causal_lm,
    load_dataset_splits,
    load_tokenizer,
    parse_recipe_args,
    require_columns,
    run_main,
    run_recipe_steps,
    start_run,
    train_with_resume,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "grpo_default.yaml")
REWARDS = "hftrain.builtin.rewards"


@dataclass
class GRPOScriptArguments:
    """Where the default GRPO run starts, and what it is rewarded for."""

    sft_output_dir: str = field(
        default="outputs/sft-default",
        metadata={"help": "Without `model_name_or_path`: start from this SFT output when it holds a model."},
    )
    sft_warmup_steps: int = field(
        default=400,
        metadata={"help": "Otherwise: run the first N steps of the SFT recipe's default first (0: start untrained)."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: [f"{REWARDS}:answer_reward", f"{REWARDS}:format_reward"],
        metadata={"help": "Reward functions by import path `module:function`; their scores are summed."},
    )


def parse_args(argv: Optional[list[str]] = None):
    """The recipe's arguments; with no `--config`, the bundled default config is the base."""
    return parse_recipe_args(argv, (ScriptArguments, GRPOConfig, ModelArguments, GRPOScriptArguments), DEFAULT_CONFIG)


def load_reward(path: str):
    """A reward function from `module:function` (or `module.function`)."""
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"reward_funcs: cannot import {path!r} ({type(exc).__name__}: {exc})") from exc


def starting_model(model_args, grpo_args, training_args) -> Optional[str]:
    """Without `model_name_or_path`: the SFT recipe's output, else the first `sft_warmup_steps` of its default run
    (its 1,000-step schedule and curriculum: 400 steps reach about 50%), kept in `output_dir/sft-warmup`, with the
    model size and device settings the user gave GRPO. GRPO needs a policy that is sometimes right: a group whose
    answers all score 0 teaches nothing."""
    warm = os.path.join(training_args.output_dir, "sft-warmup")
    if model_args.model_name_or_path:
        return model_args.model_name_or_path
    for path in (grpo_args.sft_output_dir, warm):  # a warm-up of an earlier (interrupted) run is reused
        if holds_model(path):
            return path
    if not grpo_args.sft_warmup_steps:
        return None
    if is_main_process():
        print(f"[hftrain] no SFT output at {grpo_args.sft_output_dir!r}: {grpo_args.sft_warmup_steps} SFT steps first")
    flags = ["--output_dir", warm, "--seed", str(training_args.seed), "--save_strategy", "no", "--eval_strategy", "no",
             "--overwrite_output_dir", "true", "--monitor", "false", "--tracker", "false"]  # fmt: skip
    for args, name in [(model_args, "tiny_hidden_size"), (model_args, "tiny_num_layers"), (training_args, "use_cpu")]:
        if getattr(args, "hftrain_config_sources", {}).get(name) in ("yaml", "env", "flag"):
            flags += [f"--{name}", str(getattr(args, name))]
    run_recipe_steps(os.path.join(HERE, "sft.py"), flags, grpo_args.sft_warmup_steps)
    return warm


def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None):
    """Run the recipe; `callbacks` (e.g. `hftrain tune`'s per-trial pruning callback) are added to the trainer."""
    # 1. Arguments: YAML, then command-line overrides; bad keys, types or reward paths fail here, before any writing.
    script_args, training_args, model_args, grpo_args = parse_args(argv)
    reward_funcs = [load_reward(path) for path in grpo_args.reward_funcs]
    push_target = start_run(training_args, model_args)

    # 2. Data: the bundled arithmetic prompts with their answers, or any dataset with a prompt and a reference.
    train_dataset, eval_dataset = load_dataset_splits(
        script_args,
        bundled=lambda: arithmetic_splits(
            script_args.bundled_train_size, script_args.bundled_eval_size, seed=0, fmt="prompt_answer"
        ),
        seed=training_args.seed,
    )
    reference = training_args.eval_reference_column
    require_columns(train_dataset, [("prompt",)], "dataset_name")
    if eval_dataset is not None:
        require_columns(eval_dataset, [("prompt", reference)], "dataset_test_split")

    # 3. Model: a named model, the SFT recipe's output, or the first steps of its default run.
    model_args.model_name_or_path = starting_model(model_args, grpo_args, training_args)
    if model_args.model_name_or_path and is_main_process():
        print(f"[hftrain] starting from {model_args.model_name_or_path}")
    tokenizer = load_tokenizer(model_args)
    model = load_causal_lm(model_args, tokenizer)
    checkpoint = find_resume_checkpoint(training_args, model)

    # 4. Trainer: hftrain's GRPOTrainer is trl.GRPOTrainer plus task metrics at every evaluation and the monitor.
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )

    prompts, answers = (None, None) if eval_dataset is None else (eval_dataset["prompt"], eval_dataset[reference])
    if prompts is not None and isinstance(prompts[0], str) and checkpoint is None:
        before = greedy_exact_match(trainer.model, tokenizer, prompts, answers)
        if is_main_process():
            print(f"[hftrain] held-out exact match before GRPO: {before:.1%} ({len(prompts)} questions)")

    # 5. Train (resuming when a checkpoint exists).
    train_with_resume(trainer, checkpoint)

    # 6-7. Save, evaluate, card (with the reward functions and task metrics), push, and say where everything is.
    headline = None
    if prompts is not None and isinstance(prompts[0], str):
        headline = Headline("held-out exact match", "exact_match")  # measured after training, on every process
        headline.measure = lambda: greedy_exact_match(trainer.model, tokenizer, prompts, answers)
    metrics = finish_run(
        trainer,
        model_args=model_args,
        recipe="grpo",
        dataset=script_args.dataset_name or "arithmetic",
        task="text-generation",
        push_target=push_target,
        headline=headline,
    )
    if headline is not None and is_main_process():
        print(f"[hftrain] held-out exact match after GRPO: {headline.value:.1%} ({len(prompts)} questions)")
    return trainer, metrics


if __name__ == "__main__":
    run_main(main)
