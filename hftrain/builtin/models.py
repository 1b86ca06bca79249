"""Tiny models built from configs (random weights, no download), sized for CPU training in minutes."""

from __future__ import annotations

from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)


def _vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    return ((len(tokenizer) + 7) // 8) * 8  # a multiple of 8 keeps matmuls aligned


def _llama_config(
    tokenizer: PreTrainedTokenizerBase, hidden_size: int, num_layers: int, num_heads: int
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=_vocab_size(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A small Llama (about 0.5M parameters at the defaults) whose special-token ids match `tokenizer`."""
    import torch

    config = _llama_config(tokenizer, hidden_size, num_layers, num_heads)
    with torch.random.fork_rng():  # building a default model must not move the caller's RNG stream
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny_reward_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> LlamaForSequenceClassification:
    """The same small Llama with a one-score head (`num_labels=1`), as TRL's `RewardTrainer` trains it."""
    import torch

    config = _llama_config(tokenizer, hidden_size, num_layers, num_heads)
    config.num_labels = 1
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(config)


def build_tiny_seq2seq(
    tokenizer: PreTrainedTokenizerBase,
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> T5ForConditionalGeneration:
    """A small T5 encoder-decoder whose special-token ids match `tokenizer`."""
    import torch

    config = T5Config(
        vocab_size=_vocab_size(tokenizer),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_model * 2,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    return model
