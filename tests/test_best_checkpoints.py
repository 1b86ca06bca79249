"""`keep_best_checkpoints`: real tiny runs whose eval metric goes up and down, the folders left after each save, a
resume from the newest, the combination with upstream's `save_total_limit`, and two real processes."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from monitor_common import InjectingTrainer, make_args, tiny_model, token_rows  # noqa: E402

import hftrain  # noqa: E402
from hftrain.checkpoints import MARKER, checkpoint_problem, last_valid_checkpoint  # noqa: E402
from hftrain.config import HFTrainParser  # noqa: E402
from hftrain.errors import ConfigError  # noqa: E402
from hftrain.retention import BestCheckpointsCallback, checkpoints_to_delete  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The eval metric ("score", higher is better) at each step: up, down, up, a new best, the worst, ...
SCORES = {1: 0.5, 2: 0.9, 3: 0.3, 4: 0.7, 5: 0.95, 6: 0.1, 7: 0.2, 8: 0.99}


class FoldersAfterSave(TrainerCallback):
    """The checkpoint folders in output_dir right after each save (added last, so after the retention callback)."""

    def __init__(self):
        self.after, self.first_step = {}, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step

    def on_save(self, args, state, control, **kwargs):
        names = [n for n in os.listdir(args.output_dir) if n.startswith("checkpoint-")]
        self.after[state.global_step] = sorted(int(n.split("-")[1]) for n in names)


def scripted_run(out: Path, max_steps: int, resume: bool = False) -> FoldersAfterSave:
    args = make_args(
        str(out),
        max_steps=max_steps,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        keep_best_checkpoints=2,
        metric_for_best_model="score",
        load_best_model_at_end=True,
        tracker=False,
        monitor=False,
        per_device_eval_batch_size=8,
    )
    holder = {}
    trainer = InjectingTrainer(
        model=tiny_model(),
        train_dataset=token_rows(),
        eval_dataset=token_rows(8, seed=1),
        args=args,
        compute_metrics=lambda prediction: {"score": SCORES[holder["trainer"].state.global_step]},
    )
    holder["trainer"] = trainer
    recorder = FoldersAfterSave()
    trainer.add_callback(recorder)
    trainer.train(resume_from_checkpoint=True if resume else None)
    recorder.best = trainer.state.best_model_checkpoint
    return recorder


@pytest.mark.slow
def test_the_best_two_and_the_newest_stay_after_every_save_and_a_resume_continues_the_ranking(tmp_path):
    out = tmp_path / "out"
    first = scripted_run(out, max_steps=6)
    assert first.after == {
        1: [1],
        2: [1, 2],
        3: [1, 2, 3],  # 1 and 2 are the best two; 3 (0.3) stays as the newest
        4: [2, 4],  # 0.9, 0.7: 1 and 3 go
        5: [2, 5],  # 0.95 and 0.9: 4 goes
        6: [2, 5, 6],  # the worst score, kept only as the newest: a resume needs it
    }
    assert first.best == str(out / "checkpoint-5")  # load_best_model_at_end loaded a checkpoint that was kept
    for step in (2, 5, 6):
        assert checkpoint_problem(str(out / f"checkpoint-{step}")) is None  # markers and files intact
        assert (out / f"checkpoint-{step}" / MARKER).exists()
    assert not [n for n in os.listdir(out) if n.endswith(".deleting")]
    assert last_valid_checkpoint(str(out)) == str(out / "checkpoint-6")

    second = scripted_run(out, max_steps=8, resume=True)
    assert second.first_step == 6  # resumed from the newest, which the ranking would have deleted
    # the scores of steps 1-6 came back with the resumed state: 7 (0.2) is no better than 2 and 5
    assert second.after == {7: [2, 5, 7], 8: [5, 8]}
    assert second.best == str(out / "checkpoint-8")


def test_ranking_keeps_the_best_the_protected_and_breaks_ties_by_the_earlier_step():
    scores = {1: 2.0, 2: 1.0, 3: 1.0, 4: 3.0}
    # lower is better (a loss): 2 and 3 tie at 1.0, the earlier wins; 5 has no score; 6 is protected
    assert checkpoints_to_delete([1, 2, 3, 4, 5, 6], scores, 1, greater=False, protected={6}) == [1, 3, 4, 5]
    assert checkpoints_to_delete([1, 2, 3, 4, 5, 6], scores, 2, greater=True, protected={6}) == [2, 3, 5]
    assert checkpoints_to_delete([1, 2], scores, 5, greater=True, protected=set()) == []


def test_only_the_process_that_saves_deletes(tmp_path):
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
    state = SimpleNamespace(
        global_step=3, log_history=[{"step": s, "eval_loss": float(s)} for s in (1, 2, 3)], best_model_checkpoint=None
    )
    args = SimpleNamespace(output_dir=str(tmp_path), metric_for_best_model=None, greater_is_better=None)
    callback = BestCheckpointsCallback(keep=1)
    callback.on_save(SimpleNamespace(**vars(args), should_save=False), state, None)  # rank 1 of a DDP run
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    callback.on_save(SimpleNamespace(**vars(args), should_save=True), state, None)  # rank 0
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-3"]  # eval_loss 1.0 best, 3 newest


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (dict(keep_best_checkpoints=0), "keep_best_checkpoints: expected a whole number >= 1"),
        (dict(eval_strategy="no"), "but eval_strategy is 'no'"),
        (dict(save_strategy="no"), "save_strategy is 'no'"),
        (dict(eval_strategy="epoch"), "save_strategy is 'steps' and eval_strategy 'epoch'"),
        (dict(save_steps=3), "save_steps (3) is not a multiple of eval_steps (2)"),
    ],
)
def test_settings_that_cannot_rank_every_checkpoint_are_refused(tmp_path, overrides, needle):
    values = {**dict(eval_strategy="steps", eval_steps=2, save_steps=4, keep_best_checkpoints=2), **overrides}
    with pytest.raises(ConfigError) as error:
        hftrain.TrainingArguments(str(tmp_path / "out"), report_to="none", use_cpu=True, **values)
    assert needle in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_save_total_limit_is_refused_when_set_and_set_aside_when_a_recipe_default(tmp_path):
    common = ["--output_dir", str(tmp_path / "out"), "--use_cpu", "--report_to", "none", "--eval_strategy", "steps"]
    user = hftrain.TrainingArguments(
        str(tmp_path / "o"), eval_strategy="steps", save_total_limit=3, keep_best_checkpoints=2, report_to="none"
    )
    with pytest.raises(ConfigError, match=r"keep_best_checkpoints: save_total_limit=3 would delete the best"):
        hftrain.resolve_arguments(user)
    bundled = tmp_path / "bundled.yaml"
    bundled.write_text("save_total_limit: 2\n")
    parser = HFTrainParser(hftrain.TrainingArguments)
    (parsed,) = parser.parse_args_and_config([*common, "--keep_best_checkpoints", "2"], base_config=str(bundled))
    resolved = hftrain.resolve_arguments(parsed, parser.explicit_fields)
    assert resolved.save_total_limit is None and resolved.keep_best_checkpoints == 2
    assert any("save_total_limit=2 set aside" in line for line in resolved.hftrain_preset_report)
    assert resolved.hftrain_config_sources["save_total_limit"] == "resolved"
    (mine,) = parser.parse_args_and_config(["--config", str(bundled), *common, "--keep_best_checkpoints", "2"])
    with pytest.raises(ConfigError, match="save_total_limit=2 would delete"):  # the user's own --config: refused
        hftrain.resolve_arguments(mine, parser.explicit_fields)


@pytest.mark.slow
def test_two_processes_keep_the_best_by_eval_loss_set_from_the_environment(tmp_path):
    """The SFT recipe under two real processes, `keep_best_checkpoints` from HFTRAIN_KEEP_BEST_CHECKPOINTS: rank 0
    alone deletes, the recipe's own save_total_limit is set aside, and the run records where the value came from."""
    out = tmp_path / "run"
    small = "--max_steps 8 --eval_steps 2 --save_steps 2 --logging_steps 2 --tiny_hidden_size 32 --tiny_num_layers 1 "
    small += "--bundled_train_size 64 --bundled_eval_size 8 --per_device_train_batch_size 4 --disable_tqdm true"
    command = [
        *[sys.executable, "-m", "hftrain.launch", "--config_file", str(REPO / "accelerate_configs" / "cpu_ddp.yaml")],
        *[str(REPO / "recipes" / "sft.py"), "--output_dir", str(out), *small.split()],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HFTRAIN_KEEP_BEST_CHECKPOINTS": "1", "HFTRAIN_LEARNING_RATE": "0.05"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "save_total_limit=2 set aside" in result.stdout
    history = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]
    losses = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    best = min(sorted(losses), key=lambda step: losses[step])
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == sorted(
        {f"checkpoint-{best}", "checkpoint-8"}
    )
    run = json.loads((out / "run_history" / "run.json").read_text())
    sources = {k.removeprefix("config_source."): v for k, v in run["params"].items() if k.startswith("config_source.")}
    assert sources["keep_best_checkpoints"] == "env" and sources["learning_rate"] == "env"
    assert sources["max_steps"] == "flag" and sources["save_total_limit"] == "resolved"
