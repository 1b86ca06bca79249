"""Crash and resume with real signals: SIGKILL, SIGTERM, a kill during a save; half-written checkpoints."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from monitor_common import InjectingTrainer, make_args, tiny_model, token_rows  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hftrain.checkpoints import MARKER, checkpoint_problem, last_valid_checkpoint  # noqa: E402
from hftrain.errors import ConfigError  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "monitor_kill_resume.py"


def _kill_resume(tmp_path, trainer, modes):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--trainer", trainer, "--modes", modes, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trainer_sigkill_sigterm_and_kill_during_save_resume_to_identical_weights(tmp_path):
    report = _kill_resume(tmp_path, "trainer", "sigkill,sigterm,kill_in_save")
    assert report["reference_steps"] == 8 and report["reference_differs_from_start"]
    kill = report["sigkill"]
    assert kill["signal"] == signal.SIGKILL and kill["resumed_from"] == "checkpoint-4" and kill["equal"]
    term = report["sigterm"]
    # SIGTERM landed at step 3 or a little later: a checkpoint at that step boundary, exit status 128 + 15.
    assert term["exit_code"] == 128 + signal.SIGTERM and term["signal"] is None
    stop_step = int(term["resumed_from"].split("-")[1])
    assert stop_step >= 3 and stop_step % 2 == 1 or stop_step in (4, 6)
    assert term["problems"][term["resumed_from"]] is None and term["equal"] and term["resumed_steps"] == 8
    save = report["kill_in_save"]
    assert save["signal"] == signal.SIGKILL and save["checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    assert "trainer_state.json" in save["problems"]["checkpoint-4"]
    assert save["resumed_from"] == "checkpoint-2" and save["equal"]


@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_trl_trainers_sigkill_resume_to_identical_weights(tmp_path, trainer):
    report = _kill_resume(tmp_path, trainer, "sigkill")
    kill = report["sigkill"]
    assert kill["signal"] == signal.SIGKILL and kill["resumed_from"] == "checkpoint-4"
    assert kill["resumed_steps"] == report["reference_steps"] == 8 and kill["equal"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "out"
    InjectingTrainer(
        model=tiny_model(),
        train_dataset=token_rows(),
        args=make_args(str(out), max_steps=6, save_strategy="steps", save_steps=2, tracker=False),
    ).train()  # module scope: before conftest's per-test tracker db
    return out


def _copy(checkpoints, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(checkpoints, dst)
    return dst


def test_complete_checkpoints_have_marker(checkpoints):
    assert last_valid_checkpoint(str(checkpoints)).endswith("checkpoint-6")
    marker = json.loads((checkpoints / "checkpoint-6" / MARKER).read_text())
    assert marker["files"]["model.safetensors"] == (checkpoints / "checkpoint-6" / "model.safetensors").stat().st_size
    assert marker["signature"]["global_batch_size"] == 4


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda d: (d / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda d: (d / "trainer_state.json").write_text('{"global_step": 6, "log_hi'), "not valid JSON"),
        (lambda d: os.truncate(d / "model.safetensors", 1000), "model.safetensors"),
        (lambda d: os.truncate(d / "optimizer.pt", 100), "optimizer.pt"),
        (lambda d: (d / "scheduler.pt").write_bytes((d / "scheduler.pt").read_bytes() + b"x"), "scheduler.pt"),
    ],
)
def test_half_written_checkpoint_is_skipped(checkpoints, tmp_path, damage, needle):
    out = _copy(checkpoints, tmp_path)
    damage(out / "checkpoint-6")
    assert needle in checkpoint_problem(str(out / "checkpoint-6"))
    assert last_valid_checkpoint(str(out)).endswith("checkpoint-4")


def test_resume_refuses_incomplete_path_and_other_runs_arguments(checkpoints, tmp_path):
    out = _copy(checkpoints, tmp_path)
    (out / "checkpoint-6" / "trainer_state.json").unlink()
    trainer = InjectingTrainer(
        model=tiny_model(),
        train_dataset=token_rows(),
        args=make_args(str(out), max_steps=8, save_strategy="steps", save_steps=2),
    )
    with pytest.raises(ConfigError, match="incomplete.*newest complete one is .*checkpoint-4"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    before = sorted(p.name for p in out.iterdir())
    other = InjectingTrainer(
        model=tiny_model(),
        train_dataset=token_rows(),
        args=make_args(str(out), max_steps=8, per_device_train_batch_size=8, seed=1),
    )
    with pytest.raises(ConfigError, match=r"global_batch_size: 4 in the checkpoint, 8 now; seed: 0 in the "):
        other.train(resume_from_checkpoint=True)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


class RaiseSignal(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3:
            signal.raise_signal(signal.SIGINT)


def test_sigint_saves_then_chains_to_previous_handler(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        trainer = InjectingTrainer(
            model=tiny_model(),
            train_dataset=token_rows(),
            callbacks=[RaiseSignal()],
            args=make_args(str(tmp_path / "out"), max_steps=8),
        )
        trainer.train()  # the previous handler does not exit, so train() returns
        assert calls == [signal.SIGINT], "the previous handler must run once, after the checkpoint"
        assert trainer.state.global_step == 3
        assert checkpoint_problem(str(tmp_path / "out" / "checkpoint-3")) is None
        assert signal.getsignal(signal.SIGINT) is not None and calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigint_with_default_handler_exits_130(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in a plain script
    try:
        trainer = InjectingTrainer(
            model=tiny_model(),
            train_dataset=token_rows(),
            callbacks=[RaiseSignal()],
            args=make_args(str(tmp_path / "out"), max_steps=8, tracker=False),
        )
        with pytest.raises(SystemExit) as exit_info:
            trainer.train()
        assert exit_info.value.code == 130 and trainer.state.global_step == 3
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
