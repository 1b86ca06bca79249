"""recipes/dpo.py, seq2seq.py, pretrain.py in-process on their bundled defaults (tiny overrides), LoRA on the
tiny models, global batch size, and bad input that must fail at start without writing anything."""

import json
import os
import runpy

import pytest

from hftrain.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--max_steps",
    "4",
    "--logging_steps",
    "2",
    "--eval_steps",
    "2",
    "--save_steps",
    "2",
    "--disable_tqdm",
    "true",
    "--per_device_train_batch_size",
    "8",
    "--bundled_train_size",
    "64",
    "--bundled_eval_size",
    "16",
]


def recipe(name):
    return runpy.run_path(os.path.join(REPO, "recipes", f"{name}.py"))["main"]


@pytest.fixture(scope="module")
def dpo_main():
    return recipe("dpo")


@pytest.fixture(scope="module")
def sft_main():
    return recipe("sft")


def test_dpo_default_without_sft_output_uses_a_frozen_reference(dpo_main, tmp_path, capsys):
    out = tmp_path / "dpo"
    trainer, metrics = dpo_main(["--output_dir", str(out), "--sft_output_dir", str(tmp_path / "none"), *FAST])
    printed = capsys.readouterr().out
    assert "starting from the SFT recipe's output" not in printed
    assert trainer.state.global_step == 4 and "eval_rewards/accuracies" in metrics
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model  # not TRL's reload-by-name path
    assert f"model and tokenizer saved to {out}" in printed and "run record:" in printed
    card = (out / "README.md").read_text()
    assert "rewards/accuracies" in card and "model-index" in card and "dpo" in card
    # the default asks for hftrain's `dpo` metric: the accuracy printed counts every held-out pair once
    assert f"preference accuracy after training: {metrics['eval_dpo_preference_accuracy']:.1%}" in printed
    assert (out / "run_history" / "history.csv").read_text().startswith("key,step,value,epoch,wall_time")


def test_dpo_accuracy_is_hftrains_pair_count_when_present_else_trls_batch_mean():
    preference_accuracy = runpy.run_path(os.path.join(REPO, "recipes", "dpo.py"))["preference_accuracy"]
    trl_only = {"before_loss": 0.7, "eval_rewards/accuracies": 0.5}  # TRL keeps `eval_` whatever the prefix
    assert preference_accuracy(trl_only) == 0.5
    assert preference_accuracy({**trl_only, "before_dpo_preference_accuracy": 0.48}) == 0.48
    assert preference_accuracy({"eval_loss": 0.7}) is None


def test_dpo_starts_from_the_sft_output_when_present(dpo_main, tmp_path, capsys):
    from hftrain.builtin import build_tiny_causal_lm, build_tokenizer

    sft_dir = tmp_path / "sft-default"
    tokenizer = build_tokenizer()
    build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    trainer, _ = dpo_main(
        [
            "--output_dir",
            str(tmp_path / "dpo"),
            "--sft_output_dir",
            str(sft_dir),
            *FAST,
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
        ]
    )
    assert f"starting from the SFT recipe's output: {sft_dir}" in capsys.readouterr().out
    assert trainer.model.config.hidden_size == 32 and trainer.model.config.num_hidden_layers == 1


def test_seq2seq_default_generates_metrics(tmp_path, capsys):
    out = tmp_path / "s2s"
    trainer, metrics = recipe("seq2seq")(["--output_dir", str(out), *FAST])
    assert trainer.model.config.is_encoder_decoder
    assert {"eval_exact_match", "eval_chrf", "eval_loss"} <= set(metrics)
    card = (out / "README.md").read_text()
    assert "text2text-generation" in card and "exact_match" in card
    assert "held-out exact match" in capsys.readouterr().out


def test_pretrain_builds_from_config_on_stdlib_docstrings(tmp_path):
    out = tmp_path / "pt"
    trainer, metrics = recipe("pretrain")(
        ["--output_dir", str(out), *FAST, "--block_size", "32", "--max_eval_samples", "8", "--tiny_hidden_size", "32"]
    )
    from hftrain.builtin.corpus import stdlib_docstring_splits

    assert all(len(ids) == 32 for ids in trainer.train_dataset[:4]["input_ids"])
    first_block = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert first_block == stdlib_docstring_splits()[0][0]["text"][:32]  # the corpus's first docstring, in blocks
    assert "eval_perplexity" in metrics and metrics["eval_perplexity"] > 1
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_sft_lora_saves_adapter_and_merges(sft_main, tmp_path, capsys):
    out = tmp_path / "lora"
    trainer, _ = sft_main(
        [
            "--output_dir",
            str(out),
            *FAST,
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--merge_adapter",
            "true",
        ]
    )
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert not (out / "model.safetensors").exists()  # the adapter, not the full model
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "lora_r" in card
    printed = capsys.readouterr().out
    assert "LoRA adapter:" in printed and "trainable of" in printed


def test_global_batch_size_sets_accumulation_and_is_logged(sft_main, tmp_path, capsys):
    trainer, _ = sft_main(
        [
            "--output_dir",
            str(tmp_path / "gb"),
            *FAST,
            "--global_batch_size",
            "32",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--max_steps",
            "2",
        ]
    )
    assert trainer.args.gradient_accumulation_steps == 4
    assert "effective batch size 32 = 8 per device x 4 accumulation x 1 process(es)" in capsys.readouterr().out


def test_global_batch_size_keeps_the_global_batch_on_another_process_count(monkeypatch):

    from hftrain import TrainingArguments
    from hftrain.launch import global_batch, resolve_arguments

    accumulation = {}
    args = TrainingArguments(
        "unused", per_device_train_batch_size=4, global_batch_size=32, use_cpu=True, report_to="none"
    )
    for world in (1, 2, 4):
        # the process count accelerate launch / torchrun announce (WORLD_SIZE), as the resolution step reads it
        monkeypatch.setattr("hftrain.launch.world_size_from_env", lambda world=world: world)
        resolved = resolve_arguments(args)
        accumulation[world] = resolved.gradient_accumulation_steps
        assert global_batch(resolved, world) == 32
    assert accumulation == {1: 8, 2: 4, 4: 2}


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--config", "/no/such/config.yaml"], "--config: no such file: /no/such/config.yaml"),
        (["--use_peft", "true", "--lora_target_modules", "qkv_proj"], "lora_target_modules: qkv_proj not found"),
        (["--use_peft", "true", "--load_in_4bit", "true"], "load_in_4bit: needs --model_name_or_path"),
        (
            ["--use_peft", "true", "--load_in_4bit", "true", "--model_name_or_path", "some/model"],
            "load_in_4bit: QLoRA/k-bit loading needs a CUDA GPU",
        ),
        (["--push_to_hub", "true"], "push_to_hub: needs --hub_model_id"),
        (["--global_batch_size", "12"], "global_batch_size: 12 is not a multiple of"),
        (["--optimization_level", "turbo"], "optimization_level"),
    ],
)
def test_bad_input_fails_before_writing(dpo_main, tmp_path, extra, fragment):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        dpo_main(["--output_dir", str(out), *FAST, *extra])
    assert fragment in str(info.value)
    assert not out.exists()


def test_push_without_token_and_deepspeed_on_cpu_fail_at_start(dpo_main, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ConfigError, match="push_to_hub: no Hub token"):
        dpo_main(["--output_dir", str(out), *FAST, "--push_to_hub", "true", "--hub_model_id", "me/model"])
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed was requested .* no CUDA GPU"):
        dpo_main(["--output_dir", str(out), *FAST])
    assert not out.exists()


@pytest.mark.parametrize(
    "name",
    sorted(
        f
        for f in os.listdir(os.path.join(REPO, "recipes", "configs"))
        if f.endswith(".yaml") and not f.startswith("diffusion")
    ),
)
def test_every_config_parses(name, monkeypatch):
    """Real-model configs name Hub models: parsing checks every key and type without downloading anything."""

    recipe_name = name.split("_")[0]
    module = runpy.run_path(os.path.join(REPO, "recipes", f"{recipe_name}.py"))
    path = os.path.join(REPO, "recipes", "configs", name)
    # QLoRA configs are refused on CPU at parse time (by design); the rest of the file must still be valid.
    monkeypatch.setattr("hftrain.peft_utils._cuda_available", lambda: "qlora" in name)
    monkeypatch.setattr("hftrain.peft_utils._bitsandbytes_installed", lambda: "qlora" in name)  # the qlora extra
    monkeypatch.setattr("hftrain.presets.cuda_usable", lambda args: False)
    monkeypatch.setattr("hftrain.presets.bf16_unavailable_reason", lambda args: "test: no GPU")
    from hftrain import HFTrainArguments, ModelArguments

    parsed = module["parse_args"](["--config", path])  # every recipe parses the way its command line does
    training_args = next(p for p in parsed if isinstance(p, HFTrainArguments))
    model_args = next(p for p in parsed if isinstance(p, ModelArguments))
    assert training_args.output_dir.startswith("outputs/")
    if "qlora" in name:
        assert model_args.use_peft and model_args.load_in_4bit
    elif "lora" in name:
        assert model_args.use_peft and model_args.lora_target_modules and not model_args.load_in_4bit
    if "default" not in name:
        assert model_args.model_name_or_path and training_args.global_batch_size


def test_run_main_destroys_the_process_group_after_success_only(tmp_path):
    """A recipe's process never exits with a live gloo group (which can abort at interpreter shutdown), and a
    failed run leaves the group alone (another rank may still be inside a collective)."""
    import torch.distributed as dist

    from hftrain.errors import HFTrainError
    from hftrain.recipe_utils import run_main

    def start_group():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    seen = []
    run_main(lambda argv: (start_group(), seen.append(dist.is_initialized())))
    assert seen == [True] and not dist.is_initialized()

    def fails(argv):
        start_group()
        raise HFTrainError("bad config")

    (tmp_path / "store").unlink(missing_ok=True)
    with pytest.raises(SystemExit):
        run_main(fails)
    try:
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
