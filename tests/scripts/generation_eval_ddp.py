"""Evaluates SFT (three data layouts), Seq2Seq and DPO with hftrain's eval metrics and writes them as JSON.

Run in-process for one process, and with `accelerate launch --config_file accelerate_configs/cpu_ddp.yaml` for
two; tests/test_generation_ddp.py compares the two outputs. Eval sets have odd sizes, so the last batch is
partial and the shards are uneven.
"""

from __future__ import annotations

import copy
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

COMMON = dict(
    use_cpu=True,
    report_to="none",
    save_strategy="no",
    per_device_eval_batch_size=4,
    tracker=False,
    eval_max_new_tokens=6,
    eval_log_samples=13,
    eval_generation_samples=0,
    disable_tqdm=True,
    seed=0,
)


def _keep(metrics: dict, names: tuple) -> dict:
    return {k: v for k, v in metrics.items() if any(k.startswith(f"eval_{n}") for n in names)}


def run_all(output_dir: str) -> dict:
    """Metrics of one evaluation per trainer/layout (identical on every process)."""
    from transformers import DataCollatorForSeq2Seq

    from hftrain import DPOConfig, DPOTrainer, Seq2SeqTrainer, Seq2SeqTrainingArguments, SFTConfig, SFTTrainer
    from hftrain.builtin import (
        arithmetic_splits,
        build_tiny_causal_lm,
        build_tiny_seq2seq,
        build_tokenizer,
        number_spelling_splits,
        preference_splits,
    )

    tok = build_tokenizer()
    results = {}
    generation = ("bleu", "chrf", "rougeL", "exact_match", "numeric_match", "samples_file")
    for fmt, extra in (("prompt_completion", {}), ("messages", {}), ("text", {"eval_response_template": "="})):
        train, evaluation = arithmetic_splits(8, 13, fmt=fmt)
        args = SFTConfig(
            output_dir=os.path.join(output_dir, f"sft_{fmt}"),
            max_length=64,
            bf16=False,
            eval_metrics=["bleu", "chrf", "rougeL", "exact_match", "numeric_match", "perplexity"],
            **extra,
            **COMMON,
        )
        trainer = SFTTrainer(
            model=build_tiny_causal_lm(tok, hidden_size=32, seed=1),
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tok,
        )
        results[f"sft_{fmt}"] = _keep(trainer.evaluate(), generation + ("perplexity", "nll_tokens"))

    train, evaluation = number_spelling_splits(8, 13)

    def encode(batch):
        out = tok(batch["source"])
        out["labels"] = [ids + [tok.eos_token_id] for ids in tok(batch["target"])["input_ids"]]
        return out

    model = build_tiny_seq2seq(tok, d_model=32, seed=1)
    args = Seq2SeqTrainingArguments(
        output_dir=os.path.join(output_dir, "seq2seq"),
        predict_with_generate=True,
        eval_metrics=["bleu", "chrf", "rougeL", "exact_match", "perplexity"],
        **COMMON,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        eval_dataset=evaluation.map(encode, batched=True),
        data_collator=DataCollatorForSeq2Seq(tok, model=model),
        processing_class=tok,
    )
    results["seq2seq"] = _keep(trainer.evaluate(), generation + ("perplexity", "nll_tokens"))

    train, evaluation = preference_splits(8, 13)
    policy = build_tiny_causal_lm(tok, hidden_size=32, seed=1)
    args = DPOConfig(
        output_dir=os.path.join(output_dir, "dpo"),
        max_length=64,
        bf16=False,
        eval_metrics=["chrf", "numeric_match", "dpo"],
        **COMMON,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=copy.deepcopy(policy),
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tok,
    )
    # Move the policy away from the reference so the KL and accuracy are not trivially 0 and 0.5.
    import torch

    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)))
    results["dpo"] = _keep(trainer.evaluate(), generation + ("dpo_",))
    return results


if __name__ == "__main__":
    out = run_all(sys.argv[1])
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(sys.argv[1], "metrics.json"), "w") as handle:
            json.dump({"world_size": int(os.environ.get("WORLD_SIZE", "1")), "results": out}, handle, indent=1)
    from hftrain.recipe_utils import end_distributed

    end_distributed()  # no process exits with a live gloo group (it can abort at shutdown)
