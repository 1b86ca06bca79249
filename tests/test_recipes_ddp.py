"""Every recipe under `accelerate launch --config_file accelerate_configs/cpu_ddp.yaml`: two real processes over
gloo, one launch per recipe with tiny overrides. Rank 0 alone reports and writes; both ranks share the data."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = [
    "--max_steps",
    "-1",
    "--num_train_epochs",
    "1",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
]
RECIPES = {
    # recipe: (extra arguments, optimizer steps expected in the epoch)
    "sft": (
        [
            "--tiny_hidden_size",
            "32",
            "--bundled_train_size",
            "64",
            "--bundled_eval_size",
            "8",
            "--per_device_train_batch_size",
            "8",
            "--global_batch_size",
            "32",
            "--eval_strategy",
            "no",
        ],
        2,
    ),  # 64 / 32 (8 x 2 accumulation x 2 procs)
    "dpo": (
        [
            "--bundled_train_size",
            "32",
            "--bundled_eval_size",
            "8",
            "--per_device_train_batch_size",
            "8",
            "--sft_output_dir",
            "",
            "--eval_strategy",
            "no",
        ],
        2,
    ),
    "seq2seq": (
        [
            "--bundled_train_size",
            "32",
            "--bundled_eval_size",
            "8",
            "--per_device_train_batch_size",
            "8",
            "--eval_strategy",
            "no",
        ],
        2,
    ),
    "pretrain": (
        [
            "--max_train_samples",
            "40",
            "--max_eval_samples",
            "4",
            "--block_size",
            "64",
            "--per_device_train_batch_size",
            "8",
            "--eval_strategy",
            "no",
        ],
        None,
    ),
    "grpo": (
        [
            "--bundled_train_size",
            "16",
            "--bundled_eval_size",
            "4",
            "--per_device_train_batch_size",
            "8",
            "--num_generations",
            "4",
            "--sft_output_dir",
            "",
            "--sft_warmup_steps",
            "0",
            "--eval_strategy",
            "no",
        ],
        None,
    ),
    "kto": (
        [
            "--bundled_train_size",
            "32",
            "--bundled_eval_size",
            "8",
            "--per_device_train_batch_size",
            "8",
            "--sft_output_dir",
            "",
            "--eval_strategy",
            "no",
        ],
        None,
    ),
    "reward": (
        [
            "--bundled_train_size",
            "32",
            "--bundled_eval_size",
            "8",
            "--per_device_train_batch_size",
            "8",
            "--sft_output_dir",
            "",
            "--eval_strategy",
            "no",
        ],
        2,
    ),
    "diffusion": (
        [
            "--max_train_samples",
            "32",
            "--per_device_train_batch_size",
            "8",
            "--eval_strategy",
            "no",
            "--unet_block_out_channels",
            "16",
            "32",
            "32",
        ],
        2,
    ),
}
PRESENT = sorted(r for r in RECIPES if os.path.exists(os.path.join(REPO, "recipes", f"{r}.py")))


def test_every_recipe_is_covered():
    """A recipe file added without a launch case here, or a case without its file, is a failure, not a skip."""
    on_disk = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "recipes")) if f.endswith(".py") and f[0] != "_")
    assert on_disk == sorted(RECIPES)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESENT)
def test_recipe_with_two_processes(name, tmp_path):
    extra, steps = RECIPES[name]
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(REPO, "accelerate_configs", "cpu_ddp.yaml"),
        os.path.join(REPO, "recipes", f"{name}.py"),
        "--output_dir",
        str(out),
        *COMMON,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    if steps is not None:  # both ranks took half of each global batch
        assert state["global_step"] == steps
    assert state["global_step"] >= 1 and [e for e in state["log_history"] if "loss" in e]
    assert result.stdout.count("metrics: ") == 1  # rank 0 alone reports
    if name != "diffusion":
        assert "effective batch size" in result.stdout and " x 2 process(es)" in result.stdout
        assert result.stdout.count("model and tokenizer saved to") == 1
        assert (out / "README.md").exists() and (out / "run_history" / "history.csv").exists()
        assert not [f for f in os.listdir(out) if "rank" in f]  # no per-rank copies: rank 0 alone wrote
