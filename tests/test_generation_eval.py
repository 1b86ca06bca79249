"""Generation metrics inside `Seq2SeqTrainer.evaluate` / `train`: improvement, best model, samples, perplexity,
flat memory, and nothing changed when no metric is asked for; DPO metrics equal TRL's own eval rewards."""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import re
import tracemalloc

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from hftrain import DPOConfig, DPOTrainer, Seq2SeqTrainer, Seq2SeqTrainingArguments
from hftrain.builtin import (
    build_tiny_causal_lm,
    build_tiny_seq2seq,
    build_tokenizer,
    number_spelling_splits,
    preference_splits,
)
from hftrain.host import host_of

TOK = build_tokenizer()


def _encode(batch):
    out = TOK(batch["source"])
    out["labels"] = [ids + [TOK.eos_token_id] for ids in TOK(batch["target"])["input_ids"]]
    return out


def _trainer(tmp_path, eval_rows, train_rows=8, **overrides):
    train, evaluation = number_spelling_splits(train_rows, eval_rows)
    model = build_tiny_seq2seq(TOK, d_model=32, seed=0)
    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        tracker=False,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=8,
        learning_rate=1e-2,
        disable_tqdm=True,
        eval_max_new_tokens=12,
        seed=0,
    )
    settings.update(overrides)
    return Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(**settings),
        train_dataset=train.map(_encode, batched=True, remove_columns=train.column_names),
        eval_dataset=evaluation.map(_encode, batched=True),
        data_collator=DataCollatorForSeq2Seq(TOK, model=model),
        processing_class=TOK,
    )


def test_training_raises_generation_metrics_logged_at_every_eval_and_best_model(tmp_path):
    trainer = _trainer(
        tmp_path,
        eval_rows=16,
        train_rows=320,
        max_steps=40,
        eval_strategy="steps",
        eval_steps=20,
        logging_steps=20,
        eval_metrics=["chrf", "rougeL", "bleu", "exact_match", "perplexity"],
        metric_for_best_model="eval_chrf",
        eval_log_samples=3,
    )
    before = trainer.evaluate()
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_chrf" in h]
    assert [h["step"] for h in evals] == [20, 40]  # train() starts a fresh state: the evaluate() above is not in it
    after = evals[-1]
    assert after["eval_chrf"] > before["eval_chrf"] + 10
    assert after["eval_rougeL"] > before["eval_rougeL"]
    assert after["eval_perplexity"] < before["eval_perplexity"]
    # metric_for_best_model sees the generation metric (it is in the dict evaluate() returns)
    assert trainer.state.best_metric == max(h["eval_chrf"] for h in evals[1:])
    # samples: a JSONL per evaluation, its path in the logs
    rows = [json.loads(line) for line in open(after["eval_samples_file"], encoding="utf-8")]
    assert after["eval_samples_file"].endswith("eval_step40.jsonl") and len(rows) == 3
    assert set(rows[0]) == {"step", "index", "prompt", "generation", "reference"} and rows[0]["step"] == 40
    assert rows[0]["prompt"].startswith("spell: ") and rows[0]["reference"]


def test_perplexity_is_token_weighted_over_the_whole_eval_set(tmp_path):
    # 11 rows in batches of 4: the last batch is partial and rows differ in length, so a mean of batch means
    # (what exp(eval_loss) is) differs from the token-weighted value.
    trainer = _trainer(tmp_path, eval_rows=11, eval_metrics=["perplexity"], per_device_eval_batch_size=4)
    metrics = trainer.evaluate()
    model = trainer.model.eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for row in trainer.eval_dataset:
            labels = torch.tensor([row["labels"]])
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels)
            nll += out.loss.item() * labels.numel()
            tokens += labels.numel()
    assert metrics["eval_nll_tokens"] == tokens
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert metrics["eval_perplexity"] != pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-4)


def test_no_metrics_requested_leaves_evaluation_as_the_parent(tmp_path):
    trainer = _trainer(tmp_path, eval_rows=8)
    assert trainer._hftrain_evaluator is None
    ours = trainer.evaluate()
    import transformers

    parent = transformers.Seq2SeqTrainer(
        model=trainer.model,
        args=trainer.args,
        eval_dataset=trainer.eval_dataset,
        data_collator=trainer.data_collator,
        processing_class=TOK,
    ).evaluate()
    assert set(ours) == set(parent) and ours["eval_loss"] == parent["eval_loss"]
    assert not os.path.exists(tmp_path / "eval_samples")


def test_generation_does_not_touch_the_rng(tmp_path):
    trainer = _trainer(tmp_path, eval_rows=8, eval_metrics=["chrf"], eval_do_sample=True)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    trainer._hftrain_evaluator.compute(trainer, None, None, "eval")
    assert torch.equal(torch.get_rng_state(), state)


def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(r"VmHWM:\s+(\d+)", handle.read()).group(1))


def _peak_of_evaluation(trainer) -> tuple[int, int]:
    """(Python/numpy bytes still held after the evaluation, peak RSS growth in KiB during it)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM (the peak RSS) to the current RSS
        handle.write("5")
    base = _vm_hwm_kib()
    tracemalloc.start()
    try:
        values = trainer._hftrain_evaluator.compute(trainer, None, None, "eval")
        rss_growth = _vm_hwm_kib() - base
        # `generate` leaves reference cycles (ModelOutput, caches) that Python frees at its next collection;
        # what survives a collection is what the evaluation keeps.
        gc.collect()
        # Count what hftrain's own code allocated and still holds (transformers keeps a small per-forward residue
        # of its own between `generate` calls, which is not ours to assert on).
        ours = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/hftrain/*")])
        kept = sum(stat.size for stat in ours.statistics("filename"))
    finally:
        tracemalloc.stop()
    assert values["chrf"] >= 0 and values["perplexity"] > 0
    return kept, rss_growth


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to reset peak RSS")
def test_evaluation_memory_is_flat_when_the_eval_set_grows_8x(tmp_path):
    metrics = ["chrf", "rougeL", "bleu", "exact_match", "perplexity"]
    small = _trainer(
        tmp_path / "small",
        eval_rows=16,
        eval_metrics=metrics,
        eval_generation_samples=0,
        eval_log_samples=0,
        eval_max_new_tokens=8,
    )
    large = _trainer(
        tmp_path / "large",
        eval_rows=128,
        eval_metrics=metrics,
        eval_generation_samples=0,
        eval_log_samples=0,
        eval_max_new_tokens=8,
    )
    for trainer in (small, large):  # warm-up: first-call allocations (kernels, caches) are not per-example
        _peak_of_evaluation(trainer)
    kept_small, rss_small = _peak_of_evaluation(small)
    kept_large, rss_large = _peak_of_evaluation(large)
    print(
        f"kept after eval: {kept_small} B (16 rows) vs {kept_large} B (128 rows); "
        f"peak RSS growth: {rss_small} KiB vs {rss_large} KiB"
    )
    # Keeping the 112 extra generations, references and prompts as strings alone would add > 20 KB.
    assert kept_large <= kept_small + 16 * 1024
    assert rss_large <= rss_small + 8 * 1024


def _dpo_trainer(tmp_path, eval_rows, **overrides):
    train, evaluation = preference_splits(8, eval_rows)
    policy = build_tiny_causal_lm(TOK, hidden_size=32, seed=1)
    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        tracker=False,
        per_device_eval_batch_size=4,
        max_length=64,
        disable_tqdm=True,
        seed=0,
        eval_metrics=["dpo"],
    )
    settings.update(overrides)
    trainer = DPOTrainer(
        model=policy,
        ref_model=copy.deepcopy(policy),
        args=DPOConfig(**settings),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=TOK,
    )
    with torch.no_grad():  # move the policy off the reference so the margin and accuracy are not trivially 0 and 0.5
        for parameter in trainer.model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)))
    return trainer


@pytest.mark.parametrize(
    "overrides",
    [{}, {"ld_alpha": 0.5}, {"ld_alpha": 0.3, "precompute_ref_log_probs": True}],
    ids=["default", "ld_alpha", "ld_alpha_precomputed_reference"],
)
def test_dpo_metrics_equal_trl_eval_rewards(tmp_path, overrides):
    # 12 pairs in batches of 4: TRL's mean of batch means is the mean over pairs that hftrain reports.
    trainer = _dpo_trainer(tmp_path, eval_rows=12, **overrides)
    metrics = trainer.evaluate()
    assert metrics["eval_rewards/margins"] != 0 and 0 < metrics["eval_rewards/accuracies"] < 1
    assert metrics["eval_dpo_reward_margin"] == pytest.approx(metrics["eval_rewards/margins"], rel=1e-6)
    assert metrics["eval_dpo_preference_accuracy"] == pytest.approx(metrics["eval_rewards/accuracies"], abs=1e-9)
    implied_kl = (metrics["eval_rewards/chosen"] + metrics["eval_rewards/rejected"]) / (2 * trainer.args.beta)
    assert metrics["eval_dpo_implied_kl"] == pytest.approx(implied_kl, rel=1e-6)
    trainer._hftrain_evaluator.compute(trainer, None, None, "eval")
    assert not any(trainer._metrics.values())  # TRL's own eval logs never see hftrain's batches


def test_dpo_metrics_weight_pairs_where_trl_averages_batch_means(tmp_path):
    # 13 pairs in batches of 4, 4, 4, 1: TRL's eval_rewards/* average the 4 batch means; hftrain weights by pairs.
    trainer = _dpo_trainer(tmp_path, eval_rows=13)
    metrics = trainer.evaluate()
    prepared = trainer._hftrain_evaluator._prepared_batches(trainer, trainer.eval_dataset)
    batches = [host_of(trainer).dpo_batch_rewards(trainer.model, batch) for batch in prepared]
    sizes = [4, 4, 4, 1]
    assert metrics["eval_rewards/margins"] == pytest.approx(sum(b["margins"] for b in batches) / 4, rel=1e-6)
    assert metrics["eval_dpo_reward_margin"] == pytest.approx(
        sum(n * b["margins"] for n, b in zip(sizes, batches)) / 13, rel=1e-6
    )
    hits = sum(round(n * b["accuracies"]) for n, b in zip(sizes, batches))
    assert metrics["eval_dpo_preference_accuracy"] == hits / 13
    assert metrics["eval_dpo_reward_margin"] != pytest.approx(metrics["eval_rewards/margins"], rel=1e-3)
