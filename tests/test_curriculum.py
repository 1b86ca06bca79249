"""Curriculum: pacing, the deterministic sampler, scorers, bad input, resume checks and logging (one process)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import IterableDataset
from torch.utils.data import RandomSampler
from transformers import DataCollatorForLanguageModeling

from hftrain import ConfigError, DataError, Trainer, TrainingArguments
from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer
from hftrain.curriculum import (
    PACINGS,
    CurriculumSampler,
    _find_sampler,
    pacing_share,
    register_scorer,
)


# --- pacing ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pacing", PACINGS)
def test_pacing_opens_from_start_to_everything(pacing):
    shares = [pacing_share(pacing, x / 100, 0.2) for x in range(0, 121)]
    assert all(b >= a - 1e-12 for a, b in zip(shares, shares[1:])), "the open share never shrinks"
    assert shares[-1] == 1.0 and shares[100] == 1.0
    if pacing == "none":
        assert shares[0] == 1.0
    else:
        assert shares[0] == pytest.approx(0.2)
        assert shares[50] < 1.0


def test_pacing_shapes_differ_as_documented():
    x = 0.25
    assert pacing_share("linear", x, 0.2) == pytest.approx(0.4)
    assert pacing_share("root", x, 0.2) == pytest.approx(math.sqrt(0.04 + 0.96 * 0.25))
    assert pacing_share("geometric", x, 0.2) == pytest.approx(0.2 * 5**0.25)
    assert pacing_share("step", 0.5, 0.2, [0.3, 0.6]) == 0.6
    assert pacing_share("step", 0.49, 0.2, [0.3, 0.6]) == 0.3
    # root opens faster than linear early, geometric slower
    assert pacing_share("root", x, 0.2) > pacing_share("linear", x, 0.2) > pacing_share("geometric", x, 0.2)


# --- sampler -----------------------------------------------------------------------------------------------------
def _sampler(scores, **kw):
    base = dict(
        seed=5, pacing="linear", start=0.25, full_at=0.5, samples_per_step=8, steps_per_epoch=10, total_steps=40
    )
    base.update(kw)
    return CurriculumSampler(scores, **base)


def test_sampler_order_is_a_pure_function_of_seed_epoch_scores():
    scores = np.random.default_rng(0).integers(1, 5, size=80).astype(float)
    a, b = _sampler(scores), _sampler(scores)
    b.set_epoch(3)
    b.set_epoch(3)  # idempotent
    for epoch in (0, 1, 3):
        a.set_epoch(epoch)
        first = list(a)
        assert first == list(a) and len(first) == len(a) == 80
        b.set_epoch(epoch)
        assert list(b) == first
    a.set_epoch(0)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0, "each epoch draws a different order"
    assert list(_sampler(scores, seed=6)) != e0, "the seed matters"
    assert not isinstance(a, RandomSampler), "accelerate would replace a RandomSampler subclass"


def test_sampler_only_draws_from_the_open_share_and_covers_all_once_open():
    scores = np.arange(80, dtype=float)[::-1].copy()  # row 79 is the easiest
    s = _sampler(scores)
    order = s.order.tolist()
    assert order[:3] == [79, 78, 77]
    epoch0 = s.epoch_indices(0)
    for step in range(10):
        open_rows = set(order[: s.open_count(step)])
        assert set(epoch0[step * 8 : step * 8 + 8].tolist()) <= open_rows
    assert s.open_count(0) == 20 and s.open_count(19) < 80 and s.open_count(20) == 80
    # the first pass over the open pool draws without replacement
    assert len(set(epoch0[:16].tolist())) == 16
    # from epoch 2 on everything is open: each epoch is a permutation of all rows
    assert sorted(s.epoch_indices(2).tolist()) == list(range(80))
    # consumed rows grow harder as the pool opens
    assert scores[epoch0[:8]].mean() < scores[epoch0[-8:]].mean()


def test_sampler_none_and_reverse():
    scores = np.array([3.0, 1.0, 2.0, 1.0, 0.0])
    fixed = _sampler(scores, pacing="none", samples_per_step=2, steps_per_epoch=3)
    assert list(fixed)[0] == 4 and sorted(list(fixed)[1:3]) == [1, 3] and list(fixed)[3:] == [2, 0]
    fixed.set_epoch(1)
    assert list(fixed)[0] == 4 and list(fixed)[-1] == 0
    hard_first = _sampler(scores, pacing="none", reverse=True)
    assert list(hard_first)[0] == 0 and list(hard_first)[-1] == 4
    # ties are broken by the seed, not by row position
    ties = np.zeros(50)
    assert list(_sampler(ties, pacing="none")) != list(range(50))


# --- a tiny Trainer --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def text_data(tok):
    train, _ = arithmetic_splits(48, 4, seed=1, fmt="text")
    return train.map(lambda r: tok(r["text"] + tok.eos_token), remove_columns=["text"])


def _trainer(tok, data, tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-3,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=2,
        seed=3,
        curriculum="column",
    )
    base.update(kw)
    return Trainer(
        model=build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, num_heads=2),
        args=TrainingArguments(**base),
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        processing_class=tok,
    )


def test_curriculum_off_by_default_keeps_the_parent_sampler(tok, text_data, tmp_path):
    trainer = _trainer(tok, text_data, tmp_path, curriculum=None)
    assert type(trainer._get_train_sampler()) is RandomSampler
    assert not [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "CurriculumCallback"]


def test_trainer_uses_the_sampler_and_logs_the_schedule(tok, text_data, tmp_path):
    trainer = _trainer(
        tok, text_data, tmp_path, curriculum_pacing="linear", curriculum_start=0.25, curriculum_full_at=1.0
    )
    sampler = _find_sampler(trainer.get_train_dataloader())
    assert isinstance(sampler, CurriculumSampler)
    assert sampler.scores.tolist() == [float(d) for d in text_data["difficulty"]]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "curriculum/open_share" in h]
    assert [h["step"] for h in logs] == [2, 4, 6]
    shares = [h["curriculum/open_share"] for h in logs]
    assert shares == sorted(shares) and shares[0] < 0.5 < shares[-1]
    expected = [float(np.mean(sampler.scores[sampler.indices_for_steps(s - 1, s)])) for s in (2, 4, 6)]
    assert [h["curriculum/mean_difficulty"] for h in logs] == pytest.approx(expected)
    assert logs[0]["curriculum/mean_difficulty"] <= 2.0  # the easiest rows of this set are difficulty 1-2


def test_registered_and_callable_scorers(tok, text_data, tmp_path):
    register_scorer("neg_difficulty", lambda row: -float(row["difficulty"]))
    trainer = _trainer(tok, text_data, tmp_path, curriculum="neg_difficulty")
    assert curriculum_scores(trainer).tolist() == [-float(d) for d in text_data["difficulty"]]
    trainer = _trainer(tok, text_data, tmp_path, curriculum=lambda row: len(row["input_ids"]) * 1.0)
    assert curriculum_scores(trainer).tolist() == [len(i) * 1.0 for i in text_data["input_ids"]]


def test_resume_with_different_curriculum_is_refused(tok, text_data, tmp_path):
    _trainer(tok, text_data, tmp_path, save_strategy="steps", save_steps=3).train()
    checkpoint = str(tmp_path / "out" / "checkpoint-3")
    same = _trainer(tok, text_data, tmp_path)
    same.train(resume_from_checkpoint=checkpoint)  # same settings: accepted
    assert same.state.global_step == 6
    longer = _trainer(tok, text_data, tmp_path, max_steps=8)
    with pytest.raises(ConfigError, match=r"total_steps: checkpoint 6, now 8"):
        longer.train(resume_from_checkpoint=checkpoint)
    other = _trainer(tok, text_data, tmp_path, curriculum_start=0.5)
    with pytest.raises(ConfigError, match=r"different curriculum \(start: checkpoint 0.2, now 0.5"):
        other.train(resume_from_checkpoint=checkpoint)


# --- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(curriculum_start=0.0), r"curriculum_start: expected a share in \(0, 1\], got 0.0"),
        (dict(curriculum_start=1.5), r"curriculum_start: .*got 1.5"),
        (dict(curriculum_full_at=-0.1), r"curriculum_full_at: .*got -0.1"),
        (
            dict(curriculum_pacing="cosine"),
            r"curriculum_pacing: expected one of linear, root, geometric, step, none, got 'cosine'",
        ),
        (dict(curriculum_stages=[0.5, 0.3]), r"curriculum_stages: shares must not decrease"),
        (dict(curriculum_stages=[0.0, 1.0]), r"curriculum_stages: expected a list of shares in \(0, 1\]"),
        (dict(curriculum="hardness"), r"curriculum: unknown scorer 'hardness'"),
        (dict(curriculum_loss_batch_size=0), r"curriculum_loss_batch_size"),
    ],
)
def test_bad_settings_fail_before_any_work(kw, match, tmp_path):
    from hftrain import resolve_arguments

    # ranges and choices when the arguments are built; a scorer name against the registry when they are resolved
    with pytest.raises(ConfigError, match=match):
        resolve_arguments(
            TrainingArguments(output_dir=str(tmp_path), report_to="none", **{"curriculum": "column", **kw})
        )


def test_bad_data_fails_when_the_trainer_is_built(tok, text_data, tmp_path):
    with pytest.raises(DataError, match=r"curriculum_column: no column 'hardness'"):
        _trainer(tok, text_data, tmp_path, curriculum_column="hardness")
    with pytest.raises(DataError, match=r"curriculum_column: column 'label' is string, expected a number"):
        _trainer(tok, text_data.add_column("label", ["x"] * len(text_data)), tmp_path, curriculum_column="label")
    nan = text_data.add_column("score", [1.0] * (len(text_data) - 1) + [float("nan")])
    with pytest.raises(DataError, match=r"column 'score' holds a non-finite value \(nan\) in row 47"):
        _trainer(tok, nan, tmp_path, curriculum_column="score")
    untokenized, _ = arithmetic_splits(8, 2, fmt="text")
    with pytest.raises(DataError, match=r"curriculum=length: the training set has no token ids"):
        _trainer(tok, untokenized, tmp_path, curriculum="length")
    stream = IterableDataset.from_generator(lambda: iter([{"input_ids": [1, 2]}]))
    with pytest.raises(ConfigError, match=r"curriculum: the training set \(IterableDataset\) has no length"):
        _trainer(tok, stream, tmp_path)


def test_length_and_loss_scores(tok, text_data, tmp_path):
    trainer = _trainer(tok, text_data, tmp_path, curriculum="length")
    assert curriculum_scores(trainer).tolist() == [float(len(i)) for i in text_data["input_ids"]]
    trainer = _trainer(tok, text_data, tmp_path, curriculum="loss", curriculum_loss_batch_size=7)
    sampler = _find_sampler(trainer.get_train_dataloader())
    scores = sampler.scores
    # the loss of row 0 under the initial model, computed directly
    model = trainer.model.eval()
    ids = torch.tensor([text_data[0]["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss.item()
    assert scores[0] == pytest.approx(expected, rel=1e-4)
    assert np.isfinite(scores).all() and len(set(np.round(scores, 5))) > 10
    cached = list((tmp_path / "out").glob("curriculum_scores-*.json"))
    assert len(cached) == 1, "loss scores are cached in output_dir for resume"


def curriculum_scores(trainer):
    """The scores the trainer's curriculum callback holds."""
    from hftrain.curriculum import CurriculumCallback

    return next(cb.scores for cb in trainer.callback_handler.callbacks if isinstance(cb, CurriculumCallback))
