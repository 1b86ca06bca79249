"""recipes/sft.py under `accelerate launch` with two real processes on CPU (gloo): one run, rank 0 writes."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sft_recipe_with_two_processes(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(REPO, "accelerate_configs", "cpu_ddp.yaml"),
        os.path.join(REPO, "recipes", "sft.py"),
        "--output_dir", str(out), "--bundled_train_size", "64", "--bundled_eval_size", "16",
        "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--max_steps", "-1",
        "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    # 64 rows / (8 rows per device x 2 processes) = 4 optimizer steps in the epoch: both ranks took half the data
    assert state["global_step"] == 4
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    # rank 0 alone reports and writes
    assert result.stdout.count("model and tokenizer saved to") == 1
    assert result.stdout.count("held-out exact match after training") == 1
    written = sorted(os.listdir(out))
    assert "model.safetensors" in written and "tokenizer.json" in written
    assert not [name for name in written if "rank" in name or name.endswith(".1")]
