"""Encoder-decoder fine-tuning (T5 family) with hftrain's `Seq2SeqTrainer`.

With no arguments it trains an embedded tiny T5 to spell numbers (`spell: 47` -> `forty seven`), offline, in a
few minutes on a laptop CPU, and reports held-out exact match and chrF from generation at every evaluation. Any
encoder-decoder on the Hub (`google-t5/t5-small`, `google/flan-t5-base`, ...) and any text-to-text dataset work the
same way: name the input and output columns with `--source_column` / `--target_column`.

Usage:
    python recipes/seq2seq.py
    python recipes/seq2seq.py --config recipes/configs/seq2seq_default.yaml --max_steps 100
    python -m hftrain.launch --config_file accelerate_configs/cpu_ddp.yaml recipes/seq2seq.py
    python -m hftrain.launch --config_file accelerate_configs/single_gpu.yaml recipes/seq2seq.py \
        --config recipes/configs/seq2seq_t5-small_full.yaml
    python -m hftrain.launch --config_file accelerate_configs/multi_gpu.yaml recipes/seq2seq.py \
        --config recipes/configs/seq2seq_t5-small_lora.yaml

The run resumes from the newest complete checkpoint in `output_dir` unless `--auto_resume false` is given;
`--push_to_hub --hub_model_id USER/NAME` pushes the model (or adapter), tokenizer, card and run history at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from transformers import DataCollatorForSeq2Seq

from hftrain import ModelArguments, ScriptArguments, Seq2SeqTrainer, Seq2SeqTrainingArguments
from hftrain.builtin import number_spelling_splits
from hftrain.recipe_utils import (
    Headline,
    apply_peft,
    find_resume_checkpoint,
    finish_run,
    is_main_process,
    load_dataset_splits,
    load_seq2seq_lm,
    load_tokenizer,
    parse_recipe_args,
    require_columns,
    run_main,
    start_run,
    train_with_resume,
)
from hftrain.validation import SCALAR

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "seq2seq_default.yaml")


@dataclass
class Seq2SeqDataArguments:
    """Which columns hold the input and output text, and how long they may be."""

    source_column: str = field(default="source", metadata={"help": "Column with the input text."})
    target_column: str = field(default="target", metadata={"help": "Column with the output text."})
    source_prefix: str = field(default="", metadata={"help": "Text put before every input (T5: `summarize: `)."})
    max_source_length: int = field(default=512, metadata={"help": "Input tokens kept (truncated beyond)."})
    max_target_length: int = field(default=128, metadata={"help": "Output tokens kept (truncated beyond)."})


def tokenize_pairs(dataset, tokenizer, data_args):
    """Tokenised inputs and labels; keeps `source`/`target` so generation metrics can read the raw texts."""
    # The embedded byte-level tokenizer adds no EOS; a decoder that never sees one never learns to stop.
    adds_eos = tokenizer("a")["input_ids"][-1:] == [tokenizer.eos_token_id]
    suffix = "" if adds_eos else tokenizer.eos_token

    def encode(batch):
        sources = [data_args.source_prefix + str(s) for s in batch[data_args.source_column]]
        targets = [str(t) + suffix for t in batch[data_args.target_column]]
        encoded = tokenizer(sources, max_length=data_args.max_source_length, truncation=True)
        encoded["labels"] = tokenizer(text_target=targets, max_length=data_args.max_target_length, truncation=True)[
            "input_ids"
        ]
        encoded["source"], encoded["target"] = sources, [str(t) for t in batch[data_args.target_column]]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def show_examples(trainer, eval_dataset, count: int = 3) -> None:
    """Print a few held-out inputs with the model's greedy output and the reference (rank 0)."""
    import torch

    rows = eval_dataset.select(range(min(count, len(eval_dataset))))
    tokenizer, model = trainer.processing_class, trainer.model
    batch = tokenizer(list(rows["source"]), return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=trainer.args.eval_max_new_tokens, do_sample=False)
    for source, generated, target in zip(
        rows["source"], tokenizer.batch_decode(output, skip_special_tokens=True), rows["target"]
    ):
        print(f"[hftrain] {source!r} -> {generated.strip()!r} (reference {target!r})")


def parse_args(argv: Optional[list[str]] = None):
    """The recipe's arguments (also what `hftrain tune` checks searched fields against); with no `--config`, the
    bundled default config is the base."""
    return parse_recipe_args(
        argv, (ScriptArguments, Seq2SeqTrainingArguments, ModelArguments, Seq2SeqDataArguments), DEFAULT_CONFIG
    )


def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None):
    """Run the recipe; `callbacks` (e.g. `hftrain tune`'s per-trial pruning callback) are added to the trainer."""
    # 1. Arguments: YAML, then command-line overrides; bad keys, types or hardware fail here, before any writing.
    script_args, training_args, model_args, data_args = parse_args(argv)
    push_target = start_run(training_args, model_args)

    # 2. Data: the bundled number-spelling pairs, or any dataset with a source and a target column.
    train_dataset, eval_dataset = load_dataset_splits(
        script_args,
        bundled=lambda: number_spelling_splits(script_args.bundled_train_size, script_args.bundled_eval_size, seed=0),
        seed=training_args.seed,
        formats=[{data_args.source_column: SCALAR, data_args.target_column: SCALAR}],  # no nulls, no lists
    )
    columns = [(data_args.source_column, data_args.target_column)]
    require_columns(train_dataset, columns, "source_column/target_column")
    if eval_dataset is not None:
        require_columns(eval_dataset, columns, "dataset_test_split")

    # 3. Model and tokenizer: the embedded tiny T5, or any encoder-decoder on the Hub.
    tokenizer = load_tokenizer(model_args)
    model = load_seq2seq_lm(model_args, tokenizer)
    model = apply_peft(model, model_args, training_args, task_type="SEQ_2_SEQ_LM")
    checkpoint = find_resume_checkpoint(training_args, model)
    train_dataset = tokenize_pairs(train_dataset, tokenizer, data_args)
    eval_dataset = tokenize_pairs(eval_dataset, tokenizer, data_args) if eval_dataset is not None else None

    # 4. Trainer: hftrain's Seq2SeqTrainer; `eval_metrics` (exact_match, chrf, bleu, rouge...) generate at eval.
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        callbacks=callbacks,
    )

    # 5. Train (resuming when a checkpoint exists).
    train_with_resume(trainer, checkpoint)

    # 6-8. Save, evaluate, card, push, and say where everything is.
    metrics = finish_run(
        trainer,
        model_args=model_args,
        recipe="seq2seq",
        dataset=script_args.dataset_name or "number-spelling",
        task="text2text-generation",
        push_target=push_target,
        headline=Headline("held-out exact match", "exact_match", key="eval_exact_match"),
    )
    if is_main_process() and "eval_exact_match" in metrics:
        print(f"[hftrain] held-out exact match: {metrics['eval_exact_match']:.1%}")
    if is_main_process() and eval_dataset is not None:
        show_examples(trainer, eval_dataset)
    return trainer, metrics


if __name__ == "__main__":
    run_main(main)
