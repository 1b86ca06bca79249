"""recipes/sft.py: runs on the bundled default, takes YAML + CLI, resumes, rejects bad input before writing."""

import json
import os
import runpy
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hftrain.errors import ConfigError, DataError, HFTrainError, ModelLoadError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "sft.py")
TINY = [
    "--tiny_hidden_size",
    "32",
    "--tiny_num_layers",
    "2",
    "--bundled_train_size",
    "64",
    "--bundled_eval_size",
    "16",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "2",
    "--eval_steps",
    "4",
    "--save_steps",
    "4",
    "--disable_tqdm",
    "true",
]


@pytest.fixture(scope="module")
def sft_main():
    return runpy.run_path(RECIPE)["main"]


def test_default_recipe_trains_saves_and_reloads(sft_main, tmp_path, capsys):
    out = tmp_path / "run"
    trainer, metrics = sft_main(["--output_dir", str(out), "--max_steps", "8", *TINY])
    printed = capsys.readouterr().out
    assert "held-out exact match before training" in printed and "after training" in printed
    assert f"saved to {out}" in printed
    assert trainer.state.global_step == 8
    assert "eval_loss" in metrics
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 4
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer("12+7=").input_ids == trainer.processing_class("12+7=").input_ids
    assert model.config.vocab_size >= len(tokenizer)
    assert json.loads((out / "all_results.json").read_text())["eval_loss"] == pytest.approx(metrics["eval_loss"])


def test_config_file_then_command_line_overrides(sft_main, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'run'}\nmax_steps: 3\nlearning_rate: 0.01\nreport_to: none\n"
        "bundled_train_size: 32\nbundled_eval_size: 8\neval_strategy: 'no'\nsave_strategy: 'no'\n"
        "gradient_checkpointing: false\ntiny_hidden_size: 32\n"
    )
    trainer, _ = sft_main(["--config", str(config), "--max_steps", "2"])
    assert trainer.state.global_step == 2
    assert trainer.args.learning_rate == 0.01


def test_resumes_from_last_checkpoint_in_output_dir(sft_main, tmp_path, capsys):
    from transformers import TrainerCallback

    class StopAt4(TrainerCallback):  # an interrupted run: stops after checkpoint-4 of an 8-step schedule
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 4

    out = tmp_path / "run"
    sft_main(["--output_dir", str(out), "--max_steps", "8", *TINY], callbacks=[StopAt4()])
    assert (out / "checkpoint-4" / "trainer_state.json").exists()
    capsys.readouterr()
    trainer, _ = sft_main(["--output_dir", str(out), "--max_steps", "8", *TINY])
    assert f"resuming from {out / 'checkpoint-4'}" in capsys.readouterr().out
    steps = [e["step"] for e in trainer.state.log_history if "loss" in e]
    assert steps == [2, 4, 6, 8]  # steps 1-4 restored from the checkpoint's history, 5-8 trained now
    assert trainer.state.global_step == 8


def test_auto_resume_off_starts_from_scratch(sft_main, tmp_path, capsys):
    out = tmp_path / "run"
    sft_main(["--output_dir", str(out), "--max_steps", "4", *TINY])
    capsys.readouterr()
    # a previous run's results are never replaced unasked: --auto_resume false alone is refused there ...
    with pytest.raises(ConfigError, match="holds a previous run's results.*--overwrite_output_dir"):
        sft_main(["--output_dir", str(out), "--max_steps", "4", "--auto_resume", "false", *TINY])
    # ... and with --overwrite_output_dir the run starts from scratch
    sft_main(["--output_dir", str(out), "--max_steps", "4", "--overwrite_output_dir", "true", *TINY])
    assert "resuming" not in capsys.readouterr().out


def test_local_dataset_file(sft_main, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(40)))
    trainer, metrics = sft_main(
        [
            "--output_dir",
            str(tmp_path / "run"),
            "--dataset_name",
            str(data),
            "--max_steps",
            "2",
            "--eval_holdout",
            "0.2",
            *TINY,
        ]
    )
    assert len(trainer.train_dataset) == 32 and len(trainer.eval_dataset) == 8
    assert "eval_loss" in metrics
    # the default config's curriculum orders the bundled data by `difficulty`; this file has none: random order
    assert "curriculum off: the dataset has no `difficulty` column" in capsys.readouterr().out
    assert trainer.args.curriculum is None
    with pytest.raises(DataError, match="curriculum_column: no column 'hardness'"):
        sft_main(
            [
                "--output_dir",
                str(tmp_path / "run2"),
                "--dataset_name",
                str(data),
                "--max_steps",
                "2",
                "--curriculum_column",
                "hardness",
                *TINY,
            ]
        )


def test_default_run_follows_the_curriculum(sft_main, tmp_path):
    trainer, _ = sft_main(["--output_dir", str(tmp_path / "run"), "--max_steps", "8", *TINY])
    shares = [e["curriculum/open_share"] for e in trainer.state.log_history if "curriculum/open_share" in e]
    assert len(shares) == 4 and shares[0] < shares[-1] == 1.0


@pytest.mark.parametrize(
    "extra, error, fragment",
    [
        (["--learning_rte", "1e-3"], ConfigError, "learning_rte"),
        (["--max_steps", "ten"], ConfigError, "--max_steps"),
        (["--eval_holdout", "0.9"], ConfigError, "eval_holdout"),
        (["--model_name_or_path", "hftrain-tests/no-such-model"], ModelLoadError, "hftrain-tests/no-such-model"),
        (["--dataset_name", "hftrain-tests/no-such-dataset"], DataError, "hftrain-tests/no-such-dataset"),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], HFTrainError, "resume_from_checkpoint"),
    ],
)
def test_bad_input_fails_before_writing(sft_main, tmp_path, extra, error, fragment):
    out = tmp_path / "run"
    with pytest.raises(error, match=None) as info:
        sft_main(["--output_dir", str(out), *TINY, *extra])
    assert fragment in str(info.value)
    assert not out.exists()


def test_dataset_without_needed_columns(sft_main, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps({"question": "1+1=", "answer": "2"}) + "\n" for _ in range(10)))
    out = tmp_path / "run"
    with pytest.raises(DataError) as info:
        sft_main(["--output_dir", str(out), "--dataset_name", str(data), *TINY])
    message = str(info.value)
    assert "prompt+completion" in message and "messages" in message and "answer, question" in message
    assert not out.exists()


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("max_step: 3\n")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, RECIPE, "--config", str(config), "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        f"error: --config {config}: unknown key 'max_step' (did you mean max_steps, max-steps, save_steps?)"
    ]
    assert "Traceback" not in result.stderr
    assert not out.exists()
