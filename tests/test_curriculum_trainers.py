"""Every trainer (Trainer, Seq2SeqTrainer, SFTTrainer, DPOTrainer) trains with every scorer and every pacing on
the bundled data: 5 short runs per trainer cover the 5 scorer variants and, rotated, the 5 pacings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq

from hftrain import ConfigError
from hftrain.builtin import (
    arithmetic_splits,
    build_tiny_causal_lm,
    build_tiny_seq2seq,
    build_tokenizer,
    number_spelling_splits,
    preference_splits,
)
from hftrain.curriculum import PACINGS, CurriculumSampler, _find_sampler

ROWS, STEPS = 24, 3
VARIANTS = [
    ("length", {}),
    ("column", {}),
    ("loss", {}),
    ("tests.test_curriculum_trainers:twice_difficulty", {}),
    ("column", {"curriculum_reverse": True}),
]


def twice_difficulty(row: dict) -> float:
    """A user scorer, importable by name (`module:function`)."""
    return 2.0 * row["difficulty"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _common(tmp_path, scorer, extra, pacing):
    return dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=1e-3,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
        curriculum=scorer,
        curriculum_pacing=pacing,
        curriculum_start=0.3,
        curriculum_full_at=1.0,
        curriculum_loss_batch_size=8,
        **extra,
    )


def _build(kind, tok, kw):
    if kind == "trainer":
        from hftrain import Trainer, TrainingArguments

        train, _ = arithmetic_splits(ROWS, 4, seed=2, fmt="text")
        train = train.map(lambda r: tok(r["text"] + tok.eos_token), remove_columns=["text"])
        return Trainer(
            model=build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, num_heads=2),
            args=TrainingArguments(**kw),
            train_dataset=train,
            processing_class=tok,
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        )
    if kind == "seq2seq":
        from hftrain import Seq2SeqTrainer, Seq2SeqTrainingArguments

        train, _ = number_spelling_splits(ROWS, 4, seed=2)
        train = train.map(
            lambda r: {
                "input_ids": tok(r["source"])["input_ids"],
                "labels": tok(r["target"] + tok.eos_token)["input_ids"],
            },
            remove_columns=["source", "target"],
        )
        model = build_tiny_seq2seq(tok, d_model=32, num_layers=1, num_heads=2)
        return Seq2SeqTrainer(
            model=model,
            args=Seq2SeqTrainingArguments(**kw),
            train_dataset=train,
            processing_class=tok,
            data_collator=DataCollatorForSeq2Seq(tok, model=model),
        )
    if kind == "sft":
        from hftrain import SFTConfig, SFTTrainer

        train, _ = arithmetic_splits(ROWS, 4, seed=2, fmt="messages")
        return SFTTrainer(
            model=build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, num_heads=2),
            args=SFTConfig(max_length=32, gradient_checkpointing=False, **kw),
            train_dataset=train,
            processing_class=tok,
        )
    from hftrain import DPOConfig, DPOTrainer

    train, _ = preference_splits(ROWS, 4, seed=2)
    model = build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, num_heads=2)
    return DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=DPOConfig(max_length=32, gradient_checkpointing=False, **kw),
        train_dataset=train,
        processing_class=tok,
    )


def _expected(kind, scorer, reverse, ds):
    if scorer == "column":
        return [float(d) for d in ds["difficulty"]]
    if scorer.endswith("twice_difficulty"):
        return [2.0 * d for d in ds["difficulty"]]
    if scorer == "length":
        if kind == "dpo":
            return [
                float(len(p) + max(len(c), len(r)))
                for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])
            ]
        if kind == "seq2seq":
            return [float(len(i) + len(l)) for i, l in zip(ds["input_ids"], ds["labels"])]
        return [float(len(i)) for i in ds["input_ids"]]
    return None


@pytest.mark.parametrize("kind", ["trainer", "seq2seq", "sft", "dpo"])
def test_each_scorer_and_pacing_trains(kind, tok, tmp_path):
    offset = ["trainer", "seq2seq", "sft", "dpo"].index(kind)
    for i, (scorer, extra) in enumerate(VARIANTS):
        pacing = PACINGS[(i + offset) % len(PACINGS)]
        trainer = _build(kind, tok, _common(tmp_path / f"{i}", scorer, extra, pacing))
        trainer.train()
        assert trainer.state.global_step == STEPS
        sampler = _find_sampler(trainer.get_train_dataloader())
        assert isinstance(sampler, CurriculumSampler) and len(sampler) == len(trainer.train_dataset)
        assert sampler.pacing == pacing and sampler.reverse == bool(extra.get("curriculum_reverse"))
        expected = _expected(kind, scorer, sampler.reverse, trainer.train_dataset)
        if expected is not None:
            assert sampler.scores.tolist() == pytest.approx(expected), (kind, scorer)
        else:  # loss: finite, per-row, and not all equal
            assert np.isfinite(sampler.scores).all() and np.ptp(sampler.scores) > 0
        shares = [h["curriculum/open_share"] for h in trainer.state.log_history if "curriculum/open_share" in h]
        assert len(shares) == STEPS and shares == sorted(shares), (kind, scorer, pacing)
        if pacing != "none":
            assert shares[0] < 1.0
        # the first batch came from the easiest (or, reversed, hardest) open share
        first = sampler.indices_for_steps(1, 1)
        assert set(first.tolist()) <= set(sampler.order[: sampler.open_count(0)].tolist())


def test_sft_packing_is_refused(tok, tmp_path):
    from hftrain import SFTConfig, SFTTrainer

    train, _ = arithmetic_splits(ROWS, 4, seed=2, fmt="text")
    with pytest.raises(ConfigError, match=r"curriculum: SFT packing \(packing=true\)"):
        SFTTrainer(
            model=build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, num_heads=2),
            args=SFTConfig(max_length=32, packing=True, **_common(tmp_path, "column", {}, "linear")),
            train_dataset=train,
            processing_class=tok,
        )
