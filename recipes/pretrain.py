"""Pretraining from scratch with hftrain's `Trainer`: a causal LM built from a config, trained on raw text.

With no arguments it builds a tiny Llama (random weights) and trains it on the docstrings of Python's standard
library, a corpus every machine has offline, in a few minutes on a laptop CPU; it reports token-weighted held-out
perplexity. `--model_name_or_path` names a config to build from (its weights are NOT loaded: `from_config`), e.g.
`Qwen/Qwen2.5-0.5B`; `--dataset_name` any dataset with a `text` column (or `--text_column`).

Usage:
    python recipes/pretrain.py
    python recipes/pretrain.py --config recipes/configs/pretrain_default.yaml --max_steps 100
    python -m hftrain.launch --config_file accelerate_configs/cpu_ddp.yaml recipes/pretrain.py
    python -m hftrain.launch --config_file accelerate_configs/multi_gpu.yaml recipes/pretrain.py \
        --config recipes/configs/pretrain_qwen2.5-0.5b-arch.yaml
    python -m hftrain.launch --config_file accelerate_configs/fsdp.yaml recipes/pretrain.py \
        --config recipes/configs/pretrain_qwen2.5-0.5b-arch.yaml --global_batch_size 256

Text is tokenised, joined with EOS between documents and cut into blocks of `block_size` tokens. The run resumes
from the newest complete checkpoint in `output_dir` unless `--auto_resume false` is given; `--push_to_hub
--hub_model_id USER/NAME` pushes the model, tokenizer, card and run history at the end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

from transformers import DataCollatorForLanguageModeling

from hftrain import ModelArguments, ScriptArguments, Trainer, TrainingArguments
from hftrain.builtin.corpus import stdlib_docstring_splits
from hftrain.errors import ConfigError, ModelLoadError
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
    require_columns,
    run_main,
    start_run,
    train_with_resume,
)
from hftrain.validation import TEXT

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pretrain_default.yaml")


@dataclass
class PretrainArguments:
    """How raw text becomes training blocks."""

    text_column: str = field(default="text", metadata={"help": "Column with the raw text."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training block."})

    def __post_init__(self):
        if self.block_size < 8:
            raise ConfigError(f"block_size: expected at least 8 tokens, got {self.block_size}")


def build_from_config(model_args, tokenizer):
    """A randomly initialised causal LM: the embedded tiny Llama, or the architecture `model_name_or_path` names."""
    if not model_args.model_name_or_path:
        return load_causal_lm(model_args, tokenizer)
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"model_name_or_path: could not load the config of {model_args.model_name_or_path!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    return AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)


def group_texts(dataset, tokenizer, column: str, block_size: int):
    """Tokenise, join documents with EOS and cut into full blocks of `block_size` tokens (labels = inputs)."""

    def tokenize(batch):
        return tokenizer([t + tokenizer.eos_token for t in batch[column]], add_special_tokens=False)

    def chunk(batch):
        ids = [token for row in batch["input_ids"] for token in row]
        usable = len(ids) // block_size * block_size  # the tail shorter than a block is dropped
        return {"input_ids": [ids[i : i + block_size] for i in range(0, usable, block_size)]}

    tokens = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)
    return tokens.map(chunk, batched=True, batch_size=1000, remove_columns=tokens.column_names)


def parse_args(argv: Optional[list[str]] = None):
    """The recipe's arguments (also what `hftrain tune` checks searched fields against); with no `--config`, the
    bundled default config is the base."""
    return parse_recipe_args(
        argv, (ScriptArguments, TrainingArguments, ModelArguments, PretrainArguments), DEFAULT_CONFIG
    )


def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None):
    """Run the recipe; `callbacks` (e.g. `hftrain tune`'s per-trial pruning callback) are added to the trainer."""
    # 1. Arguments: YAML, then command-line overrides; bad keys, types or hardware fail here, before any writing.
    script_args, training_args, model_args, pretrain_args = parse_args(argv)
    push_target = start_run(training_args, model_args)

    # 2. Data: the standard library's docstrings, or any dataset with a text column.
    train_dataset, eval_dataset = load_dataset_splits(
        script_args,
        bundled=stdlib_docstring_splits,
        seed=training_args.seed,
        formats=[{pretrain_args.text_column: TEXT}],  # every row a string: no nulls, no numbers
    )
    require_columns(train_dataset, [(pretrain_args.text_column,)], "text_column")

    # 3. Model from a config (random weights) and its tokenizer (the embedded byte-level one by default).
    tokenizer = load_tokenizer(model_args)
    model = apply_peft(build_from_config(model_args, tokenizer), model_args, training_args)
    checkpoint = find_resume_checkpoint(training_args, model)
    with training_args.main_process_first(desc="tokenising"):  # rank 0 fills the datasets cache, the rest reuse it
        train_dataset = group_texts(train_dataset, tokenizer, pretrain_args.text_column, pretrain_args.block_size)
        if eval_dataset is not None:
            eval_dataset = group_texts(eval_dataset, tokenizer, pretrain_args.text_column, pretrain_args.block_size)
    if is_main_process():
        print(
            f"[hftrain] {len(train_dataset):,} training blocks of {pretrain_args.block_size} tokens; model "
            f"{sum(p.numel() for p in model.parameters()):,} parameters"
        )

    # 4. Trainer: hftrain's Trainer; the collator copies inputs to labels (the model shifts them).
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=callbacks,
    )

    # 5. Train (resuming when a checkpoint exists).
    train_with_resume(trainer, checkpoint)

    # 6-8. Save, evaluate, card, push, and say where everything is.
    metrics = finish_run(
        trainer,
        model_args=model_args,
        recipe="pretrain",
        dataset=script_args.dataset_name or "python-stdlib-docstrings",
        task="text-generation",
        push_target=push_target,
        headline=Headline("held-out perplexity", "perplexity", key="eval_perplexity", percent=False),
    )
    if is_main_process() and "eval_loss" in metrics:
        ppl = metrics.get("eval_perplexity", math.exp(min(metrics["eval_loss"], 50)))
        print(f"[hftrain] held-out perplexity: {ppl:.2f} (per byte-level token for the default tokenizer)")
    return trainer, metrics


if __name__ == "__main__":
    run_main(main)
