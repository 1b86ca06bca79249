"""hftrain's trainers are drop-in: same constructor, same training as the parent classes.

Each pair trains side by side on a tiny model with the same seed; per-step losses must agree to 1e-6 and the final
weights must be equal, with the parent's own arguments class and with hftrain's (features at their defaults).
"""

import copy
import inspect

import pytest
import torch
import transformers
import trl

import hftrain
from hftrain.builtin import (
    arithmetic_splits,
    build_tiny_causal_lm,
    build_tiny_reward_model,
    build_tiny_seq2seq,
    build_tokenizer,
    number_spelling_splits,
    preference_splits,
)

STEPS = 6
COMMON = dict(
    max_steps=STEPS,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    seed=7,
    data_seed=7,
    disable_tqdm=True,
)
TRL_COMMON = dict(COMMON, bf16=False, gradient_checkpointing=False, max_length=32)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _assert_same_training(reference, candidate):
    ref_losses, cand_losses = _losses(reference), _losses(candidate)
    assert len(ref_losses) == STEPS and len(cand_losses) == STEPS
    assert ref_losses == pytest.approx(cand_losses, abs=1e-6)
    ref_state, cand_state = reference.model.state_dict(), candidate.model.state_dict()
    assert ref_state.keys() == cand_state.keys()
    for name, tensor in ref_state.items():
        assert torch.equal(tensor, cand_state[name]), f"weights differ after training: {name}"
    # the run actually trained: weights moved away from the initial model
    assert ref_losses[0] != ref_losses[-1]


def _lm_dataset(tokenizer):
    train, _ = arithmetic_splits(64, 8, seed=1, fmt="text")
    return train.map(lambda row: tokenizer(row["text"]), remove_columns=train.column_names)


def _seq2seq_dataset(tokenizer):
    train, _ = number_spelling_splits(64, 8, seed=1)

    def encode(row):
        features = tokenizer(row["source"])
        features["labels"] = tokenizer(row["target"])["input_ids"] + [tokenizer.eos_token_id]
        return features

    return train.map(encode, remove_columns=train.column_names)


def _train_trainer(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    args = args_cls(output_dir=str(tmp_path / tag), **COMMON)
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
    # positional arguments in the parent's order: model, args, data_collator, train_dataset
    trainer = trainer_cls(build_tiny_causal_lm(tokenizer, hidden_size=32), args, collator, _lm_dataset(tokenizer))
    trainer.train()
    return trainer


def _train_seq2seq(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    args = args_cls(output_dir=str(tmp_path / tag), **COMMON)
    model = build_tiny_seq2seq(tokenizer, d_model=32)
    collator = transformers.DataCollatorForSeq2Seq(tokenizer, model=model)
    trainer = trainer_cls(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=_seq2seq_dataset(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def _train_sft(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    train, _ = arithmetic_splits(64, 8, seed=1)
    args = args_cls(output_dir=str(tmp_path / tag), **TRL_COMMON)
    trainer = trainer_cls(
        build_tiny_causal_lm(tokenizer, hidden_size=32), args, train_dataset=train, processing_class=tokenizer
    )
    trainer.train()
    return trainer


def _train_dpo(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    train, _ = preference_splits(64, 8, seed=1)
    model = build_tiny_causal_lm(tokenizer, hidden_size=32)
    args = args_cls(output_dir=str(tmp_path / tag), **TRL_COMMON)
    # positional arguments in the parent's order: model, ref_model, args
    trainer = trainer_cls(model, copy.deepcopy(model), args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    return trainer


def digit_share(completions, **kwargs):
    """A reward that varies between a random model's completions, so GRPO/RLOO advantages are not all zero."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def _prompts(size=64):
    train, _ = arithmetic_splits(size, 8, seed=1)
    return train.rename_column("completion", "answer")


RL_COMMON = dict(TRL_COMMON, per_device_train_batch_size=8, num_generations=4, max_completion_length=4, beta=0.0)
del RL_COMMON["max_length"]


def _train_grpo(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    args = args_cls(output_dir=str(tmp_path / tag), **RL_COMMON)
    # positional arguments in the parent's order: model, reward_funcs, args, train_dataset
    trainer = trainer_cls(build_tiny_causal_lm(tokenizer, hidden_size=32), digit_share, args, _prompts(),
                          processing_class=tokenizer)  # fmt: skip
    trainer.train()
    return trainer


def _train_kto(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    train, _ = preference_splits(32, 8, seed=1)  # TRL unpairs it: 64 rows
    model = build_tiny_causal_lm(tokenizer, hidden_size=32)
    args = args_cls(output_dir=str(tmp_path / tag), **TRL_COMMON)
    # positional arguments in the parent's order: model, ref_model, args
    trainer = trainer_cls(model, copy.deepcopy(model), args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    return trainer


def _train_reward(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    train, _ = preference_splits(64, 8, seed=1)
    args = args_cls(output_dir=str(tmp_path / tag), **TRL_COMMON)
    # positional arguments in the parent's order: model, args, data_collator, train_dataset
    trainer = trainer_cls(build_tiny_reward_model(tokenizer, hidden_size=32), args, None, train,
                          processing_class=tokenizer)  # fmt: skip
    trainer.train()
    return trainer


CASES = {
    "Trainer": (
        _train_trainer,
        transformers.Trainer,
        hftrain.Trainer,
        transformers.TrainingArguments,
        hftrain.TrainingArguments,
    ),
    "Seq2SeqTrainer": (
        _train_seq2seq,
        transformers.Seq2SeqTrainer,
        hftrain.Seq2SeqTrainer,
        transformers.Seq2SeqTrainingArguments,
        hftrain.Seq2SeqTrainingArguments,
    ),
    "SFTTrainer": (_train_sft, trl.SFTTrainer, hftrain.SFTTrainer, trl.SFTConfig, hftrain.SFTConfig),
    "DPOTrainer": (_train_dpo, trl.DPOTrainer, hftrain.DPOTrainer, trl.DPOConfig, hftrain.DPOConfig),
    "GRPOTrainer": (_train_grpo, trl.GRPOTrainer, hftrain.GRPOTrainer, trl.GRPOConfig, hftrain.GRPOConfig),
    "RLOOTrainer": (_train_grpo, trl.RLOOTrainer, hftrain.RLOOTrainer, trl.RLOOConfig, hftrain.RLOOConfig),
    "KTOTrainer": (_train_kto, trl.KTOTrainer, hftrain.KTOTrainer, trl.KTOConfig, hftrain.KTOConfig),
    "RewardTrainer": (_train_reward, trl.RewardTrainer, hftrain.RewardTrainer, trl.RewardConfig, hftrain.RewardConfig),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hftrain_trainer_trains_exactly_like_parent(name, tokenizer, tmp_path):
    train, parent_cls, hf_cls, parent_args, hf_args = CASES[name]
    assert issubclass(hf_cls, parent_cls) and issubclass(hf_cls, hftrain.HFTrainMixin)
    reference = train(parent_cls, parent_args, tokenizer, tmp_path, "parent")
    with_parent_args = train(hf_cls, parent_args, tokenizer, tmp_path, "hftrain-parent-args")
    with_hftrain_args = train(hf_cls, hf_args, tokenizer, tmp_path, "hftrain-args")
    assert isinstance(with_hftrain_args.args, hftrain.HFTrainArguments)
    _assert_same_training(reference, with_parent_args)
    _assert_same_training(reference, with_hftrain_args)


@pytest.mark.parametrize("name", list(CASES))
def test_constructor_accepts_every_parent_argument(name):
    _, parent_cls, hf_cls, _, _ = CASES[name]
    # the mixin forwards *args/**kwargs untouched, so the parent's signature is the effective one
    mixin_params = inspect.signature(hftrain.HFTrainMixin.__init__).parameters
    assert [p.kind for p in mixin_params.values()][1:] == [
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]
    assert hf_cls.__mro__.index(hftrain.HFTrainMixin) < hf_cls.__mro__.index(parent_cls)
    assert "__init__" not in vars(hf_cls)  # nothing between the mixin and the parent reshapes the arguments


def test_trl_configs_choose_bf16_by_hardware(tmp_path):
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if not supported:
        with pytest.raises(ValueError):  # upstream's bf16=True default trips on a machine without bf16
            trl.SFTConfig(output_dir=str(tmp_path))
    assert hftrain.SFTConfig(output_dir=str(tmp_path)).bf16 is supported
    assert hftrain.DPOConfig(output_dir=str(tmp_path)).bf16 is supported
    for config in (hftrain.GRPOConfig, hftrain.RLOOConfig, hftrain.KTOConfig, hftrain.RewardConfig):
        assert config(output_dir=str(tmp_path)).bf16 is supported, config.__name__
    assert hftrain.SFTConfig(output_dir=str(tmp_path), bf16=False).bf16 is False
