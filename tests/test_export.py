"""`hftrain export`: tiny models saved as the recipes save them, exported through the real CLI entry (and one real
process), the written files run by onnxruntime / torch.jit.load and checked against PyTorch; bad input is one line.

The dynamo ONNX exporter takes tens of seconds on a loaded CPU even for these models, so it runs on the causal LM
(the README's command) and on the seq2seq model (which needs eager attention to export); the UNets and the reward
model use the legacy exporter or TorchScript.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hftrain.builtin import build_tiny_causal_lm, build_tiny_reward_model, build_tiny_seq2seq, build_tokenizer
from hftrain.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


# -- folders as the recipes write them ------------------------------------------------------------------------------
def save_causal_lm(folder: Path, model=None) -> Path:
    tokenizer = build_tokenizer()
    (model or build_tiny_causal_lm(tokenizer, **TINY)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_seq2seq(folder: Path) -> Path:
    tokenizer = build_tokenizer()
    build_tiny_seq2seq(tokenizer, d_model=32, num_layers=1, num_heads=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_lora_run(folder: Path, merged: bool) -> Path:
    """The adapter at the top (what `trainer.save_model` writes for a peft model), `merged/` when asked."""
    from peft import LoraConfig, get_peft_model

    from hftrain.peft_utils import merge_and_save

    tokenizer = build_tokenizer()
    model = get_peft_model(build_tiny_causal_lm(tokenizer, **TINY), LoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if merged:
        merge_and_save(model, tokenizer, str(folder))
    return folder


def save_digits_pipeline(folder: Path, num_classes: int | None = None) -> Path:
    """The diffusion recipe's output: DDPMPipeline when unconditional, hftrain's ImagePipeline otherwise."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from hftrain.diffusion.builtin import build_digits_unet
    from hftrain.diffusion.pipeline import ImagePipeline

    unet = build_digits_unet((16, 32), 1, True, num_classes=num_classes, seed=0)
    if num_classes:
        ImagePipeline(unet, DDPMScheduler(), None, None).save_pretrained(folder)
    else:
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


def save_text_unet(folder: Path) -> Path:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=8,
        attention_head_dim=8,
    ).save_pretrained(folder)
    return folder


# -- running the command --------------------------------------------------------------------------------------------
def export(capsys, *argv) -> tuple[int, list[str], list[str]]:
    """Exit status, stdout lines and `error:` lines of `hftrain export ARGV` through `hftrain.cli.main`."""
    status = main(["export", *map(str, argv)])
    printed = capsys.readouterr()
    return status, printed.out.splitlines(), [line for line in printed.err.splitlines() if line.startswith("error:")]


def assert_exported(status: int, out: list[str], errors: list[str], folder: Path, fmt: str) -> dict:
    """Every listed file exists in `folder`, the model file among them, and the check passed; returns export.json."""
    assert status == 0 and errors == [], errors
    folder = folder.resolve()
    written = [Path(re.match(r"wrote (.+) \(\d", line).group(1)) for line in out if line.startswith("wrote ")]
    assert sorted(written) == sorted(folder.iterdir()) and all(path.stat().st_size > 0 for path in written)
    model_file = folder / ("model.onnx" if fmt == "onnx" else "model.pt")
    assert model_file in written and (folder / "export.json") in written
    assert out[-1].startswith("check passed: ") and len(out) == len(written) + 1, out
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["format"] == fmt and manifest["check"]["inputs"] == 3
    assert manifest["check"]["max_abs_diff"] <= manifest["atol"]
    return manifest


def onnx_input_names(path: Path) -> list[str]:
    import onnxruntime

    return [node.name for node in onnxruntime.InferenceSession(str(path)).get_inputs()]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the README's commands ------------------------------------------------------------------------------------------
def readme_export_section() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Export: ONNX and TorchScript") :]
    return section[: section.index("\n#", 10)]


def test_readme_export_commands_and_snippet_run_as_written(tmp_path, monkeypatch, capsys):
    """Each `hftrain export` line of the README's Export section, on folders at the paths the recipes write, then
    its onnxruntime snippet on the result."""
    monkeypatch.chdir(tmp_path)
    section = readme_export_section()
    commands = [re.sub(r"\s+#\s.*$", "", line).strip() for line in section.splitlines() if line.startswith("hftrain ")]
    assert len(commands) == 4, commands
    save_causal_lm(tmp_path / "outputs" / "sft-default")
    save_seq2seq(tmp_path / "outputs" / "seq2seq-default")
    save_digits_pipeline(tmp_path / "outputs" / "diffusion-digits")
    save_lora_run(tmp_path / "outputs" / "qwen2.5-0.5b-sft-lora", merged=True)
    for command in commands:
        argv = shlex.split(command)[1:]
        source, fmt = Path(argv[1]), argv[argv.index("--format") + 1]
        folder = Path(argv[argv.index("--output") + 1]) if "--output" in argv else source / "export" / fmt
        manifest = assert_exported(*export(capsys, *argv[1:]), folder, fmt)
        assert manifest["source"] == os.path.abspath(source)
    assert (tmp_path / "digits-onnx" / "scheduler_config.json").is_file()  # the sampling loop's settings
    lm = tmp_path / "outputs" / "sft-default" / "export" / "onnx"
    assert json.loads((lm / "export.json").read_text())["onnx_exporter"] == "dynamo"
    assert (lm / "tokenizer.json").is_file() and onnx_input_names(lm / "model.onnx") == ["input_ids", "attention_mask"]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(snippet, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("(1, 6, ")


# -- each kind of model ---------------------------------------------------------------------------------------------
def test_seq2seq_to_onnx_with_the_default_exporter(tmp_path, capsys):
    """torch 2.13's dynamo exporter fails on T5's SDPA path with dynamic lengths; exported with eager attention."""
    source = save_seq2seq(tmp_path / "t5")
    manifest = assert_exported(*export(capsys, source, "--format", "onnx"), source / "export" / "onnx", "onnx")
    assert manifest["onnx_exporter"] == "dynamo" and manifest["output"]["axes"] == {
        "0": "batch",
        "1": "target_sequence",
    }
    names = ["input_ids", "attention_mask", "decoder_input_ids"]
    assert onnx_input_names(source / "export" / "onnx" / "model.onnx") == names


def test_conditional_unets_export_with_their_conditioning(tmp_path, capsys):
    """A class-conditional pipeline (ImagePipeline) to TorchScript; a text-conditional UNet folder to ONNX."""
    pipeline = save_digits_pipeline(tmp_path / "classes", num_classes=10)
    manifest = assert_exported(
        *export(capsys, pipeline, "--format", "torchscript"), pipeline / "export" / "torchscript", "torchscript"
    )
    assert [i["name"] for i in manifest["inputs"]] == ["sample", "timestep", "class_labels"]
    unet = save_text_unet(tmp_path / "text_unet")
    out = tmp_path / "text_onnx"
    manifest = assert_exported(
        *export(capsys, unet, "--format", "onnx", "--onnx_exporter", "legacy", "--output", out), out, "onnx"
    )
    assert manifest["model"] == "UNet2DConditionModel"
    assert manifest["inputs"][2] == {
        "name": "encoder_hidden_states",
        "dtype": "float32",
        "shape": ["batch", "text_sequence", 16],
    }


def test_reward_model_through_a_real_process(tmp_path):
    """`python -m hftrain.cli export` as a user runs it: the reward recipe's sequence-classification head."""
    source = tmp_path / "reward"
    tokenizer = build_tokenizer()
    build_tiny_reward_model(tokenizer, **TINY).save_pretrained(source)
    tokenizer.save_pretrained(source)
    argv = [
        sys.executable,
        "-m",
        "hftrain.cli",
        "export",
        str(source),
        "--format",
        "onnx",
        "--onnx_exporter",
        "legacy",
    ]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    folder = source / "export" / "onnx"
    manifest = assert_exported(0, result.stdout.splitlines(), [], folder, "onnx")
    assert manifest["kind"] == "sequence-classification" and manifest["output"]["axes"] == {"0": "batch"}


# -- what is refused, before anything is written --------------------------------------------------------------------
def test_a_lora_adapter_is_refused_with_the_path_to_export(tmp_path, capsys):
    with_merged = save_lora_run(tmp_path / "with", merged=True)
    status, _, errors = export(capsys, with_merged, "--format", "onnx")
    assert status == 2 and errors == [
        f"error: output_dir {with_merged}: holds a LoRA adapter, not a model; "
        f"export its merged model: {with_merged / 'merged'}"
    ]
    without = save_lora_run(tmp_path / "without", merged=False)
    status, _, errors = export(capsys, without, "--format", "torchscript")
    assert status == 2 and len(errors) == 1 and "--merge_adapter true" in errors[0]
    assert not (with_merged / "export").exists() and not (without / "export").exists()


@pytest.fixture(scope="module")
def bad_folders(tmp_path_factory) -> dict[str, Path]:
    """Built once for the module; each case checks that nothing under the root changed."""
    root = tmp_path_factory.mktemp("bad")
    lm = save_causal_lm(root / "lm")
    quantized = save_causal_lm(root / "quantized")
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    encoder = root / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    no_weights = root / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((lm / "config.json").read_text())
    not_a_model = root / "notes"
    not_a_model.mkdir()
    (not_a_model / "train.log").write_text("loss 1.0\n")
    (root / "a_file").write_text("x")
    return {
        "root": root,
        "lm": lm,
        "quantized": quantized,
        "encoder": encoder,
        "no_weights": no_weights,
        "notes": not_a_model,
    }


BAD = [  # (arguments with {folder} placeholders, what the one line must say)
    ("{lm} --format tflite", "--format: expected one of onnx, torchscript; got 'tflite'"),
    ("{lm}", "--format: expected one of onnx, torchscript; missing"),
    ("{lm} --format onnx --atol 0", "--atol: expected a number > 0"),
    ("{lm} --format onnx --atol nan", "--atol: expected a number > 0"),
    ("{lm} --format torchscript --onnx_exporter legacy", "--onnx_exporter: applies to --format onnx only"),
    ("{lm} --format onnx --onnx_exporter fx", "--onnx_exporter: expected one of dynamo, legacy; got 'fx'"),
    ("{root}/missing --format onnx", "missing: no such folder"),
    ("{notes} --format onnx", "notes: not a model folder"),
    ("{encoder} --format onnx", "holds BertModel; hftrain export takes a causal LM"),
    ("{quantized} --format onnx", "holds a bitsandbytes quantized model; ONNX and TorchScript cannot hold"),
    ("{no_weights} --format torchscript", "config.json but no weights"),
    ("{lm} --format onnx --output {lm}", "is the model folder or holds it"),
    ("{lm} --format onnx --output {root}", "is the model folder or holds it"),
    ("{lm} --format onnx --output {root}/a_file", "a_file: is a file; expected a folder"),
]


@pytest.mark.parametrize("arguments, says", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_input_is_one_line_and_changes_nothing(arguments, says, bad_folders, capsys):
    root = bad_folders["root"]
    before = tree(root)
    status, out, errors = export(capsys, *shlex.split(arguments.format(**bad_folders)))
    assert status == 2 and out == [] and len(errors) == 1 and says in errors[0], errors
    assert tree(root) == before and not any(root.rglob("export"))


def test_onnx_without_its_packages_names_the_extra(tmp_path, capsys, monkeypatch):
    source = save_causal_lm(tmp_path / "lm")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # find_spec then reports it missing
    status, _, errors = export(capsys, source, "--format", "onnx")
    assert status == 2 and errors == [
        "error: --format onnx: needs onnxscript (not installed): pip install 'hftrain[export]'"
    ]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    status, _, errors = export(capsys, source, "--format", "onnx", "--onnx_exporter", "legacy")
    assert status == 2 and errors == [
        "error: --format onnx: needs onnxruntime (not installed): pip install 'hftrain[export]'"
    ]
    assert not (source / "export").exists()


def test_cli_import_and_a_refusal_load_no_torch(tmp_path):
    """The subcommand is registered and refuses bad input without importing torch (`hftrain runs` stays fast)."""
    code = "import sys, hftrain.cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
    argv = [sys.executable, "-m", "hftrain.cli", "export", str(tmp_path), "--format", "onnx"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"error: output_dir {tmp_path}: not a model folder (no config.json, model_index.json or adapter_config.json); "
        "expected a causal LM (*ForCausalLM), a seq2seq model (*ForConditionalGeneration), a sequence classifier "
        "(*ForSequenceClassification) or a diffusion pipeline / UNet (UNet2DModel, UNet2DConditionModel)"
    ]


# -- the destination and the check ----------------------------------------------------------------------------------
def test_an_existing_export_is_replaced_only_with_overwrite(tmp_path, capsys):
    source = save_causal_lm(tmp_path / "lm")
    folder = source / "export" / "torchscript"
    assert_exported(*export(capsys, source, "--format", "torchscript"), folder, "torchscript")
    (folder / "stale.txt").write_text("from an earlier export")
    before = tree(folder)
    status, _, errors = export(capsys, source, "--format", "torchscript")
    assert status == 2 and errors == [
        f"error: --output {folder}: already holds files; pass --overwrite to replace them"
    ]
    assert tree(folder) == before
    assert_exported(*export(capsys, source, "--format", "torchscript", "--overwrite"), folder, "torchscript")
    assert not (folder / "stale.txt").exists()


def save_shape_branch_lm(folder: Path) -> Path:
    """A Llama whose logits double past 8 tokens: a Python branch on a shape, which a trace freezes at the example's
    length (8), so the traced file is wrong on the check's longer inputs."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    class ShapeBranchLlamaConfig(LlamaConfig):
        model_type = "hftrain-test-shape-branch"

    class ShapeBranchForCausalLM(LlamaForCausalLM):
        config_class = ShapeBranchLlamaConfig

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            output = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            if input_ids.shape[1] > 8:
                output.logits = output.logits * 2
            return output

    AutoConfig.register("hftrain-test-shape-branch", ShapeBranchLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(ShapeBranchLlamaConfig, ShapeBranchForCausalLM, exist_ok=True)
    reference = build_tiny_causal_lm(build_tokenizer(), **TINY)
    model = ShapeBranchForCausalLM(ShapeBranchLlamaConfig(**reference.config.to_diff_dict()))
    model.load_state_dict(reference.state_dict())
    return save_causal_lm(folder, model)


def test_a_trace_that_does_not_generalise_fails_the_check_and_writes_nothing(tmp_path, capsys):
    source = save_shape_branch_lm(tmp_path / "branchy")
    status, out, errors = export(capsys, source, "--format", "torchscript")
    assert status == 1 and out == [] and len(errors) == 1, errors
    assert re.match(
        r"error: check: torch.jit.load's logits differ from PyTorch's by up to \S+ \(--atol 0.001\) on "
        r"input_ids \(3, 11\), attention_mask \(3, 11\); nothing was written$",
        errors[0],
    ), errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branchy"] and not (source / "export").exists()


def test_an_exporter_failure_is_one_line_and_leaves_the_old_export(tmp_path, capsys, monkeypatch):
    import hftrain.export_formats

    source = save_causal_lm(tmp_path / "lm")
    folder = source / "export" / "torchscript"
    assert_exported(*export(capsys, source, "--format", "torchscript"), folder, "torchscript")
    before = tree(folder)

    def unsupported(spec, path):
        raise RuntimeError("Tracer cannot infer type of output\nmore detail")

    monkeypatch.setattr(hftrain.export_formats, "write_torchscript", unsupported)
    status, out, errors = export(capsys, source, "--format", "torchscript", "--overwrite")
    assert (
        status == 1
        and out == []
        and errors
        == [
            "error: --format torchscript: torch.jit.trace could not export LlamaForCausalLM: Tracer cannot infer type "
            "of output; try --format onnx"
        ]
    )
    assert tree(folder) == before and sorted(p.name for p in (source / "export").iterdir()) == ["torchscript"]
