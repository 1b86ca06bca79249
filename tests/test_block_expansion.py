"""Block expansion: new top layers start as the identity, then train; per-layer config lists grow with them."""

from __future__ import annotations

import os
import runpy

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, Qwen2Config

from hftrain.block_expansion import expanded_config, zero_new_layers
from hftrain.builtin import build_tiny_causal_lm, build_tokenizer
from hftrain.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory):
    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("sft")
    build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def scores(model, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.squeeze(-1)


def test_expanded_model_scores_exactly_as_the_original_until_it_trains(sft_folder):
    tokenizer = build_tokenizer()
    recipe = runpy.run_path(os.path.join(REPO, "recipes", "reward.py"))
    model_args = recipe["ModelArguments"](model_name_or_path=str(sft_folder))
    plain = recipe["load_reward_model"](str(sft_folder), model_args, tokenizer)
    expanded = recipe["load_reward_model"](str(sft_folder), model_args, tokenizer, expand_layers=2)
    assert len(expanded.model.layers) == 4 and expanded.config.num_hidden_layers == 4
    expanded.score.load_state_dict(plain.score.state_dict())  # the one-score head is new in both: make it the same
    texts = ["23+45=68", "23+45=69", "7+8=15"]
    assert torch.allclose(scores(plain, tokenizer, texts), scores(expanded, tokenizer, texts), atol=1e-6)
    for layer in expanded.model.layers[2:]:
        assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
        assert layer.self_attn.q_proj.weight.any()  # random, so the layer can learn a pattern of its own
    for trained, copy in zip(plain.model.layers, expanded.model.layers[:2]):
        assert torch.equal(trained.self_attn.q_proj.weight, copy.self_attn.q_proj.weight)


def test_reward_recipe_trains_and_saves_the_expanded_model(sft_folder, tmp_path):
    tokenizer = build_tokenizer()
    main = runpy.run_path(os.path.join(REPO, "recipes", "reward.py"))["main"]
    flags = ["--output_dir", str(tmp_path / "rm"), "--sft_output_dir", str(sft_folder), "--expand_layers", "2",
             "--max_steps", "3", "--bundled_train_size", "32", "--bundled_eval_size", "8", "--learning_rate", "1e-3",
             "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--eval_strategy", "no",
             "--save_strategy", "no", "--warmup_steps", "0", "--disable_tqdm", "true"]  # fmt: skip
    trainer, _ = main(flags)
    new_layer = trainer.model.model.layers[3]
    assert new_layer.self_attn.o_proj.weight.any() and new_layer.mlp.down_proj.weight.any()  # it trained
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert saved.config.num_hidden_layers == 4
    texts = ["23+45=68", "2+2=5"]
    assert torch.allclose(scores(saved, tokenizer, texts), scores(trainer.model.cpu().eval(), tokenizer, texts))


def test_per_layer_lists_grow_with_the_layers():
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=300)  # fmt: skip
    assert len(config.layer_types) == 2
    grown = expanded_config(config, 3)
    assert grown.num_hidden_layers == 5 and grown.layer_types == ["full_attention"] * 5
    AutoModelForSequenceClassification.from_config(grown)  # the config validates with five layers
    with pytest.raises(ConfigError, match="expand_layers: expected 0 or more new layers, got -1"):
        expanded_config(AutoConfig.for_model("llama"), -1)


def test_an_architecture_without_llama_style_layers_is_refused_by_name():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=300, num_labels=1))
    with pytest.raises(ConfigError, match=r"expand_layers: needs decoder layers .* GPT2ForSequenceClassification"):
        zero_new_layers(model, 1)
