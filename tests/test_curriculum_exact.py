"""Exactness: the rows consumed step by step are the same uninterrupted, killed and resumed mid-epoch, and under
two real processes (`accelerate launch`), including a two-process mid-epoch resume.

64 rows, global batch 8, 2 epochs = 16 steps, linear pacing from 25 % to all by 75 % of training (so the open share
changes in both epochs). The kill comes after the checkpoint of step 11, in the middle of epoch 1: the case where,
without the epoch-sync callback, two processes replay epoch 0's order (accelerate's `set_epoch` does not reach a custom sampler after a resume).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "curriculum_consume.py")
KILL_AT, STEPS, GLOBAL_BATCH = 11, 16, 8

pytestmark = pytest.mark.slow


def _script():
    spec = importlib.util.spec_from_file_location("curriculum_consume", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _steps(out: str, ranks: int) -> list[list[int]]:
    """The global batch of every step, as the concatenation of the ranks' batches (rank r holds batch r of each step)."""
    per_rank = []
    for rank in range(ranks):
        with open(os.path.join(out, f"consumed-rank{rank}.jsonl"), encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        assert [r["step"] for r in records] == list(range(1, STEPS + 1)), "each step ran exactly once"
        per_rank.append([r["rows"] for r in records])
    return [sum((per_rank[r][i] for r in range(ranks)), []) for i in range(STEPS)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(repo_root, out, *extra, expect_rc=0):
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1")
    accelerate = shutil.which("accelerate")
    cmd = [accelerate] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate:
        cmd.append("launch")
    cmd += [
        "--config_file",
        str(repo_root / "accelerate_configs" / "cpu_ddp.yaml"),
        "--main_process_port",
        str(_free_port()),
        SCRIPT,
        "--out",
        out,
        "--batch",
        str(GLOBAL_BATCH // 2),
        *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=repo_root)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line][:20]
    assert proc.returncode == expect_rc or (expect_rc and proc.returncode != 0), "\n".join(errors)
    return proc


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one uninterrupted process, global batch 8."""
    out = str(tmp_path_factory.mktemp("one"))
    _script().main(["--out", out, "--batch", str(GLOBAL_BATCH)])
    return _steps(out, 1)


def test_reference_follows_the_curriculum(one_process):
    from hftrain.builtin import arithmetic_splits

    script = _script()
    train, _ = arithmetic_splits(script.ROWS, 8, seed=3, fmt="text")
    difficulty = train["difficulty"]
    assert all(len(batch) == GLOBAL_BATCH for batch in one_process)
    epoch0 = sum(one_process[:8], [])
    # 25 % open at step 1: the 16 easiest rows; every difficulty-1 row is easier than any difficulty-4 row
    assert max(difficulty[i] for i in one_process[0]) <= sorted(difficulty)[15]
    assert sum(difficulty[i] for i in epoch0[:16]) < sum(difficulty[i] for i in epoch0[-16:])


def test_single_process_kill_and_resume_mid_epoch_is_exact(one_process, tmp_path):
    script = _script()
    out = str(tmp_path)
    with pytest.raises(script.Killed):
        script.main(["--out", out, "--batch", str(GLOBAL_BATCH), "--kill_at", str(KILL_AT)], hard_exit=False)
    assert os.path.isdir(os.path.join(out, f"checkpoint-{KILL_AT}"))
    script.main(["--out", out, "--batch", str(GLOBAL_BATCH), "--kill_at", str(KILL_AT), "--resume"])
    assert _steps(out, 1) == one_process


def test_two_processes_consume_exactly_what_one_does(one_process, repo_root, tmp_path):
    out = str(tmp_path)
    _launch(repo_root, out)
    assert _steps(out, 2) == one_process
    # rank 0 took the first half of every global batch, rank 1 the second (accelerate's BatchSamplerShard)
    with open(os.path.join(out, "consumed-rank1.jsonl")) as handle:
        assert [json.loads(line)["rows"] for line in handle] == [b[GLOBAL_BATCH // 2 :] for b in one_process]
    history = json.load(open(os.path.join(out, "log_history.json")))
    assert [h["curriculum/open_share"] for h in history if "curriculum/open_share" in h] == sorted(
        h["curriculum/open_share"] for h in history if "curriculum/open_share" in h
    )


def test_two_processes_killed_and_resumed_mid_epoch_is_exact(one_process, repo_root, tmp_path):
    out = str(tmp_path)
    killed = _launch(repo_root, out, "--kill_at", str(KILL_AT), expect_rc=1)
    assert killed.returncode != 0  # the processes really died
    for rank in range(2):
        with open(os.path.join(out, f"consumed-rank{rank}.jsonl")) as handle:
            assert len(handle.readlines()) == KILL_AT
    assert os.path.isdir(os.path.join(out, f"checkpoint-{KILL_AT}"))
    _launch(repo_root, out, "--kill_at", str(KILL_AT), "--resume")
    assert _steps(out, 2) == one_process
