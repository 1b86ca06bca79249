"""The model card each recipe writes: metadata that huggingface_hub parses strictly, the sections a reader needs, the
headline metric first in the model-index, and loading code that runs as written for a full model, a LoRA adapter
(of the embedded base and of a saved one) and the merged model.

huggingface_hub's `ModelCard.validate()` posts the card to the Hub; offline, the same library's strict parsing is the
check: `ModelCard.load` (with `ignore_metadata_errors=False`) turns `model-index` into `EvalResult`s and refuses a
malformed one, and writing them back (`eval_results_to_model_index`) must give the file's model-index again.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index

REPO = Path(__file__).resolve().parents[1]
STEPS = "--max_steps 2 --logging_steps 1 --eval_steps 2 --save_steps 2 --disable_tqdm true".split()
LM = "--bundled_train_size 32 --bundled_eval_size 8 --tiny_hidden_size 32 --tiny_num_layers 1".split()
LM += "--per_device_train_batch_size 8 --per_device_eval_batch_size 8".split()
NO_SFT = ["--sft_output_dir", ""]
# recipe: (its arguments, the headline metric's label, its model-index type, the pipeline tag)
RECIPES = {
    "sft": ([*LM, "--eval_generation_samples", "4", "--eval_max_new_tokens", "4"], "held-out exact match",
            "exact_match", "text-generation"),
    "dpo": ([*LM, *NO_SFT], "held-out preference accuracy", "accuracy", "text-generation"),
    "kto": ([*LM, *NO_SFT], "held-out preference accuracy", "accuracy", "text-generation"),
    "reward": ([*LM, *NO_SFT], "held-out pairwise accuracy", "accuracy", "text-classification"),
    "grpo": ([*LM, *NO_SFT, "--sft_warmup_steps", "0", "--bundled_train_size", "16", "--bundled_eval_size", "4",
              "--num_generations", "4", "--per_device_eval_batch_size", "4"], "held-out exact match", "exact_match",
             "text-generation"),
    "seq2seq": ([*LM, "--eval_generation_samples", "4", "--eval_max_new_tokens", "4"], "held-out exact match",
                "exact_match", "text2text-generation"),
    "pretrain": (["--block_size", "32", "--max_train_samples", "40", "--max_eval_samples", "8",
                  "--tiny_hidden_size", "32", "--per_device_train_batch_size", "4"], "held-out perplexity",
                 "perplexity", "text-generation"),
    "diffusion": (["--eval_num_samples", "10", "--num_inference_steps", "2", "--unet_block_out_channels", "16", "16",
                   "--unet_attention", "false", "--max_train_samples", "32"], "digit quality score", "quality",
                  "unconditional-image-generation"),
}  # fmt: skip
SECTIONS = [
    "## Intended use",
    "## Limitations",
    "## Training data",
    "## Training",
    "## Results",
    "## Curriculum",
    "## License",
    "## Run history",
    "## How to use",
]
ENUM_REPR = re.compile(r"\b[A-Z][A-Za-z]+\.[A-Z][A-Z0-9_]+\b")  # SchedulerType.COSINE, OptimizerNames.ADAMW_TORCH


def run_recipe(name: str, argv: list[str]):
    return runpy.run_path(str(REPO / "recipes" / f"{name}.py"))["main"](argv)


def checked_card(path: Path) -> ModelCard:
    """The card as huggingface_hub reads it, strictly; its model-index must survive the round trip."""
    card = ModelCard.load(path, ignore_metadata_errors=False)
    metadata = metadata_load(path)
    assert eval_results_to_model_index(card.data.model_name, card.data.eval_results) == metadata["model-index"]
    assert isinstance(metadata["tags"], list) and "hftrain" in metadata["tags"]
    return card


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_each_recipe_writes_a_card_that_validates_and_reads_well(recipe, tmp_path):
    argv, label, metric, pipeline_tag = RECIPES[recipe]
    out = tmp_path / recipe
    trainer, metrics = run_recipe(recipe, ["--output_dir", str(out), *STEPS, *argv])
    card = checked_card(out / "README.md")
    text = (out / "README.md").read_text()

    headline = card.data.eval_results[0]  # the recipe's headline metric comes first
    assert (headline.metric_name, headline.metric_type, headline.task_type) == (label, metric, pipeline_tag)
    assert card.data.pipeline_tag == pipeline_tag and card.data.license == "apache-2.0"  # the embedded base's
    assert card.data.base_model is None  # built in code: no Hub model to point at
    assert f"**{label[0].upper()}{label[1:]}: " in text
    positions = [text.find(section) for section in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), positions

    assert not ENUM_REPR.search(text), ENUM_REPR.search(text)
    assert "num_train_epochs" not in text  # max_steps bounded the run: the epochs trained are stated instead
    assert f"| epochs trained | {trainer.state.epoch:.3g} |" in text
    assert f"| training examples | {len(trainer.train_dataset):,} |" in text
    assert "| training time | " in text and "| hardware | CPU only: " in text and "| processes | 1 |" in text
    assert f"transformers {transformers.__version__}" in text and f"torch {torch.__version__}" in text
    assert "a demonstration of hftrain's" in text.lower() and "not meant for any real task" in text
    assert "hftrain-bundled/" in text  # the model-index names where the data came from


def code_blocks(card_path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card_path.read_text(), re.S)


def loaded(code: str):
    """Run one loading snippet of a card as written; returns the model and tokenizer it defines."""
    namespace: dict = {}
    exec(compile(code, "<model card>", "exec"), namespace)
    return namespace["model"], namespace["tokenizer"]


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["What is 3 + 4?"], return_tensors="pt", add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_loading_snippets_run_for_full_adapter_and_merged_outputs(tmp_path):
    full_dir, lora_dir, on_saved_dir = tmp_path / "full", tmp_path / "lora", tmp_path / "lora-on-saved"
    tiny = [*STEPS, *LM, "--eval_strategy", "no"]

    # a full model: one snippet, the same weights
    trainer, _ = run_recipe("sft", ["--output_dir", str(full_dir), *tiny])
    (code,) = code_blocks(full_dir / "README.md")
    model, tokenizer = loaded(code)
    assert torch.equal(logits(model, tokenizer), logits(trainer.model, tokenizer))

    # a LoRA adapter of the embedded base (rebuilt from its seed) and the merged model: both give the trained model
    trainer, _ = run_recipe(
        "sft", ["--output_dir", str(lora_dir), *tiny, "--use_peft", "true", "--merge_adapter", "true"]
    )
    adapter_code, merged_code = code_blocks(lora_dir / "README.md")
    assert "PeftModel.from_pretrained" in adapter_code and "merged" in merged_code
    reference = logits(trainer.model, trainer.processing_class)
    for code in (adapter_code, merged_code):
        model, tokenizer = loaded(code)
        torch.testing.assert_close(logits(model, tokenizer), reference, rtol=1e-4, atol=1e-5)
    assert "`merged/`" in (lora_dir / "README.md").read_text()

    # a LoRA adapter of a saved base: peft's AutoPeftModel finds the base through adapter_config.json
    trainer, _ = run_recipe(
        "sft", ["--output_dir", str(on_saved_dir), *tiny, "--use_peft", "true", "--model_name_or_path", str(full_dir)]
    )
    (code,) = code_blocks(on_saved_dir / "README.md")
    assert "AutoPeftModelForCausalLM" in code
    model, tokenizer = loaded(code)
    torch.testing.assert_close(logits(model, tokenizer), logits(trainer.model, tokenizer), rtol=1e-4, atol=1e-5)
    assert checked_card(on_saved_dir / "README.md").data.library_name == "peft"


def test_a_mixture_is_not_named_as_one_hub_dataset():
    from hftrain.model_card import _is_hub_dataset

    assert _is_hub_dataset("org/dataset") and not _is_hub_dataset("mixture(org/dataset, local.jsonl)")
