"""Two real processes (`accelerate launch`, CPU, gloo) train one diffusion run, checkpoint and resume exactly."""

import json
import os
import socket
import subprocess

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path, repo_root, python):
    command = [
        python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(repo_root / "accelerate_configs" / "cpu_ddp.yaml"),
        "--main_process_port",
        str(_free_port()),
        str(repo_root / "tests" / "scripts" / "diffusion_ddp.py"),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report_{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2
        assert report["ranks_agree"]  # gradients were averaged over gloo: both ranks hold the same weights
        assert report["partial_steps"] == 2
        assert report["resumed_equals_full"] and report["resumed_ema_equals_full"] and report["resumed_step"] == 4
        assert report["losses_resumed"] == report["losses_full"]
        assert len(report["losses_full"]) == 4
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert (tmp_path / "full" / "samples" / "step-000004.png").is_file()
    assert (tmp_path / "full" / "model_index.json").is_file()
