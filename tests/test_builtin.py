"""The embedded defaults: local tokenizer and tiny models that save and reload offline; deterministic data."""

from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from hftrain.builtin import (
    arithmetic_splits,
    build_tiny_causal_lm,
    build_tiny_seq2seq,
    build_tokenizer,
    number_spelling_splits,
    preference_splits,
    spell_number,
)


def test_tokenizer_round_trips_and_reloads(tmp_path):
    tokenizer = build_tokenizer()
    text = "23+45=68 café ✓"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert len(tokenizer("12+7=").input_ids) == 5  # one token per byte keeps digits apart
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+2="}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|im_start|>assistant\n")
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert (reloaded.pad_token, reloaded.eos_token, reloaded.chat_template) == (
        "<pad>",
        "<|im_end|>",
        tokenizer.chat_template,
    )


def test_models_save_and_reload(tmp_path):
    tokenizer = build_tokenizer()
    causal = build_tiny_causal_lm(tokenizer, hidden_size=32)
    assert causal.config.vocab_size >= len(tokenizer) and causal.config.pad_token_id == tokenizer.pad_token_id
    causal.save_pretrained(tmp_path / "causal")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "causal").num_parameters() == causal.num_parameters()
    seq2seq = build_tiny_seq2seq(tokenizer, d_model=32)
    seq2seq.save_pretrained(tmp_path / "s2s")
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "s2s").num_parameters() == seq2seq.num_parameters()
    # same seed, same weights; building does not move the caller's RNG
    import torch

    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    again = build_tiny_causal_lm(tokenizer, hidden_size=32)
    assert torch.rand(1) == expected
    assert all(torch.equal(a, b) for a, b in zip(causal.state_dict().values(), again.state_dict().values()))


def test_arithmetic_is_deterministic_correct_and_held_out():
    train, evaluation = arithmetic_splits(500, 100, seed=3)
    again, _ = arithmetic_splits(500, 100, seed=3)
    assert train.to_list() == again.to_list()
    assert not set(train["prompt"]) & set(evaluation["prompt"])
    for row in train:
        assert str(eval(row["prompt"][:-1])) == row["completion"]  # noqa: S307 - our own generated arithmetic
        assert row["difficulty"] in (1, 2, 3, 4)
    assert set(train["difficulty"]) == {1, 2, 3, 4}
    messages, _ = arithmetic_splits(10, 5, seed=3, fmt="messages")
    assert messages[0]["messages"][1] == {"role": "assistant", "content": train[0]["completion"]}
    text, _ = arithmetic_splits(10, 5, seed=3, fmt="text")
    assert text[0]["text"] == train[0]["prompt"] + train[0]["completion"]


def test_preferences_pair_the_right_answer_with_a_close_wrong_one():
    train, _ = preference_splits(300, 20, seed=1)
    for row in train:
        assert str(eval(row["prompt"][:-1])) == row["chosen"] != row["rejected"]  # noqa: S307
        assert abs(int(row["rejected"]) - int(row["chosen"])) <= 90


def test_preference_held_out_questions_are_unseen_by_the_sft_default():
    """A preference recipe starting from the SFT recipe's output is measured on questions neither run trained on:
    they avoid the SFT default's 4,000 and the preference train set, whichever is larger."""
    sft_train, sft_eval = arithmetic_splits(4000, 300, seed=0)
    for train_size in (2000, 6000):
        train, evaluation = preference_splits(train_size, 300, seed=0)
        assert not set(evaluation["prompt"]) & (set(sft_train["prompt"]) | set(train["prompt"]))
        assert len(set(train["prompt"])) == train_size
    train, evaluation = preference_splits(2000, 300, seed=0)
    assert train["prompt"] == sft_train["prompt"][:2000] and evaluation["prompt"] == sft_eval["prompt"]


def test_number_spelling():
    assert [spell_number(n) for n in (0, 13, 40, 99, 100, 407, 999)] == [
        "zero",
        "thirteen",
        "forty",
        "ninety nine",
        "one hundred",
        "four hundred seven",
        "nine hundred ninety nine",
    ]
    train, evaluation = number_spelling_splits(200, 50, seed=0)
    assert not set(train["source"]) & set(evaluation["source"])
    assert all(spell_number(int(r["source"].split()[1])) == r["target"] for r in train)
