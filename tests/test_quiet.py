"""Quiet by default: the default SFT recipe's console has no warning caused by hftrain's own dependencies or
configs (bitsandbytes is the optional `qlora` extra; the bundled configs use no deprecated key), and QLoRA without
bitsandbytes is refused in one line that says what to install."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tomllib
import yaml

from hftrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
WARNING_LINE = re.compile(r"warn|deprecat|failed to|please make sure|will be removed|no module named", re.I)
# Warnings upstream prints on its own defaults, for any user on this machine, whatever hftrain chooses:
ALLOWED = [
    # transformers' Trainer asks for pinned memory by default (`dataloader_pin_memory`) and turns it off only under
    # `use_cpu`; torch then warns on every machine without an accelerator.
    re.compile(r"UserWarning: 'pin_memory' argument is set as true but no accelerator is found"),
]
# transformers 5.20 renamed these TrainingArguments fields; the old names warn on every run.
DEPRECATED_KEYS = {"gradient_checkpointing", "gradient_checkpointing_kwargs"}


def bitsandbytes_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def warning_lines(console: str) -> list[str]:
    """Lines that warn, progress bars' carriage returns split off, minus the allow-listed ones."""
    allowed = list(ALLOWED)
    if bitsandbytes_installed():  # someone installed the qlora extra here; hftrain itself never requires it
        allowed.append(re.compile(r"gemm_4bit_forward from kernels-community"))
    lines = (part for line in console.splitlines() for part in line.split("\r"))
    return [line for line in lines if WARNING_LINE.search(line) and not any(a.search(line) for a in allowed)]


def test_bitsandbytes_is_the_qlora_extra_only():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [r for r in project["dependencies"] if r.startswith("bitsandbytes")]
    assert any(r.startswith("bitsandbytes") for r in project["optional-dependencies"]["qlora"])
    assert not [
        e for e, reqs in project["optional-dependencies"].items() if e != "qlora" and "bitsandbytes" in str(reqs)
    ]


@pytest.mark.slow  # about 30 s: a real process trains, evaluates and saves
def test_default_sft_run_prints_no_warning_of_hftrains_making(tmp_path):
    """Four steps of the default recipe, with an evaluation and a checkpoint on the way (where warnings come from)."""
    argv = [
        sys.executable,
        str(REPO / "recipes" / "sft.py"),
        "--max_steps",
        "4",
        "--eval_steps",
        "2",
        "--save_steps",
        "2",
    ]
    argv += ["--logging_steps", "2", "--bundled_train_size", "256", "--bundled_eval_size", "16"]
    argv += ["--output_dir", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # Python's default filters, as users have
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out exact match after training" in result.stdout
    assert warning_lines(result.stdout + result.stderr) == []


def test_the_warning_filter_sees_what_used_to_be_printed():
    """The two lines the default run printed before (a deprecated key, bitsandbytes' kernels) are caught."""
    before = (
        "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.\n"
        "x/training_args.py:1541: FutureWarning: `gradient_checkpointing` is deprecated and will be removed in v6.\n"
        "  0%|  | 0/3\r/x/dataloader.py:759: UserWarning: 'pin_memory' argument is set as true but no accelerator "
        "is found, then device pinned memory won't be used.\n"
    )
    caught = warning_lines(before)
    assert any("gradient_checkpointing" in line for line in caught) and not any(
        "pin_memory" in line for line in caught
    )
    assert bitsandbytes_installed() or any("gemm_4bit" in line for line in caught)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes" / "configs").glob("*.yaml")))
def test_bundled_configs_use_no_deprecated_key(name):
    keys = set(yaml.safe_load((REPO / "recipes" / "configs" / name).read_text()) or {})
    assert not keys & DEPRECATED_KEYS, f"{name}: {sorted(keys & DEPRECATED_KEYS)} (use activation_checkpointing)"


def _sft_parse(argv):
    from hftrain.recipes.sft import parse_args

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = parse_args(argv)
    return parsed[1], [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]


def test_default_config_parses_without_a_deprecation_and_the_old_name_typed_still_counts(tmp_path):
    args, deprecations = _sft_parse(["--output_dir", str(tmp_path / "a")])
    assert args.activation_checkpointing is False and not [d for d in deprecations if "checkpointing" in d]
    # the bundled config names the new field; the old one typed on the command line must not be silently overruled
    args, _ = _sft_parse(["--output_dir", str(tmp_path / "b"), "--gradient_checkpointing", "true"])
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    args, _ = _sft_parse(["--output_dir", str(tmp_path / "c"), "--activation_checkpointing", "true"])
    assert args.activation_checkpointing is True


QLORA = ["--use_peft", "true", "--load_in_4bit", "true", "--model_name_or_path", "some/model"]


@pytest.mark.parametrize(
    "gpu, package, expected, absent",
    [
        (False, False, ("needs a CUDA GPU", "pip install 'hftrain[qlora]'", "plain LoRA"), ()),
        (True, False, ("needs bitsandbytes (not installed: pip install 'hftrain[qlora]')",), ("CUDA GPU",)),
        (False, True, ("needs a CUDA GPU (none is visible)",), ("pip install",)),
    ],
)
def test_qlora_refusal_says_what_is_missing(gpu, package, expected, absent, tmp_path, monkeypatch):
    from hftrain.recipes.sft import main

    monkeypatch.setattr("hftrain.peft_utils._cuda_available", lambda: gpu)
    monkeypatch.setattr("hftrain.peft_utils._bitsandbytes_installed", lambda: package)
    with pytest.raises(ConfigError) as info:
        main([*QLORA, "--output_dir", str(tmp_path / "run")])
    message = str(info.value)
    assert message.startswith("load_in_4bit: QLoRA/k-bit loading needs") and "\n" not in message
    assert all(part in message for part in expected) and not any(part in message for part in absent), message
    assert not (tmp_path / "run").exists()


def test_qlora_check_passes_with_a_gpu_and_bitsandbytes(monkeypatch):
    from hftrain import ModelArguments
    from hftrain.peft_utils import check_model_arguments

    monkeypatch.setattr("hftrain.peft_utils._cuda_available", lambda: True)
    monkeypatch.setattr("hftrain.peft_utils._bitsandbytes_installed", lambda: True)
    check_model_arguments(ModelArguments(model_name_or_path="some/model", use_peft=True, load_in_8bit=True))


def test_qlora_on_this_cpu_is_one_error_line(tmp_path, monkeypatch, capsys):
    """What CI sees (no GPU, no bitsandbytes): the recipe's entry ends in one line naming the extra, status 2."""
    from hftrain.recipe_utils import run_main
    from hftrain.recipes.sft import main

    monkeypatch.setattr("hftrain.peft_utils._bitsandbytes_installed", lambda: False)
    monkeypatch.setattr("hftrain.peft_utils._cuda_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["sft.py", *QLORA, "--output_dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(errors) == 1 and "pip install 'hftrain[qlora]'" in errors[0]
    assert not (tmp_path / "run").exists()
