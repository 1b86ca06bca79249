"""Fields from the environment: `HFTRAIN_<FIELD>` between YAML and flags, checked like the rest, the existing
variables unchanged, and where each value came from recorded with the run."""

import json
import os
import sys
from pathlib import Path

import pytest

import hftrain
from hftrain.config import HFTrainParser, ModelArguments, ScriptArguments
from hftrain.errors import ConfigError
from hftrain.tracking.store import TrackerStore


@pytest.fixture
def parser():
    return HFTrainParser((ScriptArguments, hftrain.TrainingArguments, ModelArguments))


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nlearning_rate: 0.001\nmax_steps: 5\nwarmup_steps: 2\n")
    return str(path)


def test_yaml_then_environment_then_flags(parser, config, monkeypatch):
    monkeypatch.setenv("HFTRAIN_LEARNING_RATE", "0.002")  # over the YAML's 0.001
    monkeypatch.setenv("HFTRAIN_MAX_STEPS", "7")  # under the flag's 9
    monkeypatch.setenv("HFTRAIN_SEED", "3")  # only here
    _, training, _ = parser.parse_args_and_config(["--config", config, "--max_steps", "9", "--use_cpu"])
    assert (training.learning_rate, training.max_steps, training.seed, training.warmup_steps) == (0.002, 9, 3, 2)
    assert parser.config_sources == {
        "learning_rate": "env",
        "max_steps": "flag",
        "output_dir": "yaml",
        "seed": "env",
        "use_cpu": "flag",
        "warmup_steps": "yaml",
    }
    assert training.hftrain_config_sources == parser.config_sources
    # a preset never overrides a field the user named, in the environment too
    assert {"learning_rate", "seed", "max_steps"} <= parser.explicit_fields


def test_every_kind_of_field_from_the_environment(parser, tmp_path, monkeypatch):
    monkeypatch.setenv("HFTRAIN_EVAL_SECTIONS", "'Title:' 'Steps:::^\\s*1\\.'")  # a list, split as a shell does
    monkeypatch.setenv("HFTRAIN_EVAL_METRICS", "exact_match sections")
    monkeypatch.setenv("HFTRAIN_AUTO_RESUME", "false")  # a bool that defaults to true
    monkeypatch.setenv("HFTRAIN_LR_SCHEDULER_TYPE", "cosine")  # an upstream enum
    monkeypatch.setenv("HFTRAIN_LORA_R", "8")  # ModelArguments
    monkeypatch.setenv("HFTRAIN_TRUST_REMOTE_CODE", "true")  # a bool that defaults to false
    monkeypatch.setenv("HFTRAIN_BUNDLED_TRAIN_SIZE", "40")  # ScriptArguments
    monkeypatch.setenv("HFTRAIN_RUN_NAME", "")  # empty: unset, the default stays
    script, training, model = parser.parse_args_and_config(["--output_dir", str(tmp_path)])
    assert training.eval_sections == ["Title:", "Steps:::^\\s*1\\."]
    assert training.eval_metrics == ["exact_match", "sections"] and training.auto_resume is False
    assert str(getattr(training.lr_scheduler_type, "value", training.lr_scheduler_type)) == "cosine"
    assert model.lora_r == 8 and model.trust_remote_code is True
    assert script.bundled_train_size == 40 and training.run_name is None
    assert "run_name" not in parser.config_sources


@pytest.mark.parametrize(
    "variable, value, needle",
    [
        ("HFTRAIN_MAX_STEPS", "ten", "HFTRAIN_MAX_STEPS='ten': field max_steps expects a whole number"),
        ("HFTRAIN_LEARNING_RATE", "fast", "HFTRAIN_LEARNING_RATE='fast': field learning_rate expects a number"),
        ("HFTRAIN_AUTO_RESUME", "maybe", "HFTRAIN_AUTO_RESUME='maybe': field auto_resume expects true or false"),
        ("HFTRAIN_OPTIMIZATION_LEVEL", "fast", "field optimization_level expects one of light, standard"),
        (
            "HFTRAIN_EVAL_METRICS",
            "bleu 'chrf",
            'HFTRAIN_EVAL_METRICS="bleu \'chrf": field eval_metrics expects a list',
        ),
        # range checks of the dataclasses name the variable the value came from
        (
            "HFTRAIN_LEARNING_RATE",
            "-1",
            "learning_rate: expected a non-negative number, got -1.0 (from HFTRAIN_LEARNING_RATE='-1')",
        ),  # fmt: skip
        (
            "HFTRAIN_KEEP_BEST_CHECKPOINTS",
            "0",
            "keep_best_checkpoints: expected a whole number >= 1 or None, got 0 "
            "(from HFTRAIN_KEEP_BEST_CHECKPOINTS='0')",
        ),  # fmt: skip
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_the_field(
    parser, tmp_path, monkeypatch, variable, value, needle
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        parser.parse_args_and_config(["--output_dir", str(tmp_path / "out")])
    assert needle in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_bad_value_is_refused_even_under_a_flag_as_a_bad_yaml_value_is(parser, tmp_path, monkeypatch):
    monkeypatch.setenv("HFTRAIN_MAX_STEPS", "ten")
    with pytest.raises(ConfigError, match="HFTRAIN_MAX_STEPS='ten'"):
        parser.parse_args_and_config(["--output_dir", str(tmp_path), "--max_steps", "3"])


def test_the_existing_variables_keep_their_meaning(parser, tmp_path, monkeypatch, caplog):
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path}\ntracker_db: {tmp_path / 'from-yaml.db'}\n")
    monkeypatch.setenv("HFTRAIN_TRACKER_DB", str(tmp_path / "from-env.db"))  # a fallback: the YAML still wins
    monkeypatch.setenv("HFTRAIN_ALERT_WEBHOOK_URL", "https://hooks.example/secret")  # never copied into the args
    monkeypatch.setenv("HFTRAIN_EXPERIMENT", "ablation")
    monkeypatch.setenv("HFTRAIN_TORCH", "torch")  # the install scripts'
    _, training, _ = parser.parse_args_and_config(["--config", str(config)])
    assert training.tracker_db == str(tmp_path / "from-yaml.db")
    assert training.alert_webhook_url is None and training.tracker_experiment is None
    assert set(parser.config_sources) == {"output_dir", "tracker_db"}
    assert "HFTRAIN_" not in caplog.text  # no warning about them either


def test_a_variable_that_names_no_field_is_ignored_with_a_warning(parser, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HFTRAIN_LEARNIG_RATE", "1")  # a typo
    monkeypatch.setenv("HFTRAIN_BETA", "0.5")  # a DPO field, exported while running SFT's dataclasses
    _, training, _ = parser.parse_args_and_config(["--output_dir", str(tmp_path)])
    assert training.learning_rate == hftrain.TrainingArguments(str(tmp_path)).learning_rate
    err = caplog.text
    assert "HFTRAIN_LEARNIG_RATE: names no field of this recipe; ignored (did you mean HFTRAIN_LEARNING_RATE?)" in err
    assert "HFTRAIN_BETA: names no field of this recipe; ignored" in err
    assert parser.config_sources == {"output_dir": "flag"}


def test_a_yaml_env_entry_that_would_set_a_field_is_refused_before_any_is_set(parser, tmp_path, monkeypatch):
    monkeypatch.delenv("HFTRAIN_H3_OTHER", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path}\nenv: {{HFTRAIN_H3_OTHER: x, HFTRAIN_MAX_STEPS: 4}}\n")
    with pytest.raises(ConfigError, match=r"env: HFTRAIN_MAX_STEPS would set field max_steps; write `max_steps: 4`"):
        parser.parse_args_and_config(["--config", str(config)])
    assert "HFTRAIN_H3_OTHER" not in os.environ


def test_values_hftrain_replaces_are_recorded_as_resolved(parser, tmp_path, monkeypatch):
    monkeypatch.setenv("HFTRAIN_GLOBAL_BATCH_SIZE", "16")
    args = ["--output_dir", str(tmp_path), "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"]
    _, training, _ = parser.parse_args_and_config(args)
    resolved = hftrain.resolve_arguments(training, parser.explicit_fields)
    assert resolved.gradient_accumulation_steps == 4
    sources = resolved.hftrain_config_sources
    assert sources["global_batch_size"] == "env" and sources["gradient_accumulation_steps"] == "resolved"
    assert training.hftrain_config_sources["gradient_accumulation_steps"] == "flag"  # the parsed object unchanged


@pytest.mark.slow
def test_a_tracked_run_records_where_each_value_came_from(parser, tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from monitor_common import tiny_model, token_rows

    monkeypatch.setenv("HFTRAIN_LEARNING_RATE", "0.02")
    monkeypatch.setenv("HFTRAIN_TRACKER_TAGS", "source=env")
    argv = ["--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--use_cpu", "--report_to", "none"]
    _, training, _ = parser.parse_args_and_config([*argv, "--per_device_train_batch_size", "4"])
    trainer = hftrain.Trainer(model=tiny_model(), args=training, train_dataset=token_rows(16))
    trainer.train()
    with TrackerStore(str(tmp_path / "hftrain_runs.db")) as store:  # conftest's database for this test
        (run,) = store.runs()
        params, tags = store.params(run["id"]), store.tags(run["id"])
        config = json.loads(
            store.conn.execute("SELECT config_json FROM runs WHERE id = ?", (run["id"],)).fetchone()[0]
        )
    assert tags["source"] == "env"
    assert params["config_source.learning_rate"] == "env" and params["config_source.max_steps"] == "flag"
    assert float(params["args.learning_rate"]) == 0.02
    assert config["config_sources"]["tracker_tags"] == "env"
