"""The arguments family: YAML + command-line parsing, errors that name the key, settings from any args object."""

import dataclasses
import os

import pytest
import transformers

import hftrain
from hftrain.config import HFTrainArguments, HFTrainParser, ModelArguments, ScriptArguments, hftrain_settings
from hftrain.errors import ConfigError


@pytest.fixture
def parser():
    return HFTrainParser((ScriptArguments, hftrain.TrainingArguments, ModelArguments))


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_then_command_line_wins(parser, tmp_path):
    config = write(
        tmp_path,
        f"output_dir: {tmp_path}\nlearning_rate: 0.01\nmax_steps: 5\nreport_to: [tensorboard]\n"
        "auto_resume: false\nmodel_name_or_path: some/model\nenv: {HFTRAIN_TEST_ENV: 'yes'}\n",
    )
    script, training, model = parser.parse_args_and_config(["--config", config, "--max_steps", "7"])
    assert (training.learning_rate, training.max_steps, training.auto_resume) == (0.01, 7, False)
    assert training.report_to == ["tensorboard"]  # a list from YAML keeps its type
    assert model.model_name_or_path == "some/model"
    assert os.environ.pop("HFTRAIN_TEST_ENV") == "yes"
    assert isinstance(training, HFTrainArguments) and isinstance(training, transformers.TrainingArguments)


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("max_step: 5\n", "unknown key 'max_step' (did you mean max_steps"),
        ("max_steps: five\n", "argument --max_steps/--max-steps: invalid int value: 'five'"),
        ("learning_rate: [1, 2]\n", "key 'learning_rate' expects a single value, got a list"),
        ("max_steps: {a: 1}\n", "key 'max_steps' expects a single value, got a mapping"),
        ("lr_scheduler_type: wavy\n", "invalid choice: 'wavy'"),
        ("eval_holdout: 0.9\n", "eval_holdout: expected a share between 0 and 0.5, got 0.9"),
        ("- just\n- a list\n", "expected a mapping of field: value, got list"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(parser, tmp_path, yaml_text, fragment):
    with pytest.raises(ConfigError) as info:
        parser.parse_args_and_config(["--config", write(tmp_path, yaml_text), "--output_dir", str(tmp_path)])
    assert fragment in str(info.value)


def test_bad_command_line(parser, tmp_path):
    with pytest.raises(ConfigError, match="unknown command-line argument.*--learnig_rate.*did you mean learning_rate"):
        parser.parse_args_and_config(["--output_dir", str(tmp_path), "--learnig_rate", "1"])
    with pytest.raises(ConfigError, match="no such file"):
        parser.parse_args_and_config(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="expected a path"):
        parser.parse_args_and_config(["--config"])


def test_field_shared_by_two_dataclasses_is_one_flag(tmp_path):
    sft_parser = HFTrainParser((ScriptArguments, hftrain.SFTConfig, ModelArguments))
    _, training, model = sft_parser.parse_args_and_config(
        ["--output_dir", str(tmp_path), "--trust_remote_code", "true"]
    )
    assert training.trust_remote_code is True and model.trust_remote_code is True


def test_settings_from_parent_arguments_are_the_defaults(tmp_path):
    parent = transformers.TrainingArguments(output_dir=str(tmp_path))
    assert hftrain_settings(parent) == HFTrainArguments()
    ours = hftrain.TrainingArguments(output_dir=str(tmp_path), auto_resume=False)
    assert hftrain_settings(ours) is ours


def test_every_hftrain_field_has_a_default_and_help():
    for field in dataclasses.fields(HFTrainArguments):
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        assert has_default, field.name
        assert field.metadata.get("help"), f"{field.name} has no help text"


def test_hftrain_fields_never_collide_with_upstream():
    import trl

    ours = {f.name for f in dataclasses.fields(HFTrainArguments)}
    for upstream in (
        transformers.TrainingArguments,
        transformers.Seq2SeqTrainingArguments,
        trl.SFTConfig,
        trl.DPOConfig,
    ):
        assert not ours & {f.name for f in dataclasses.fields(upstream)}, upstream.__name__


def test_lazy_import_keeps_trl_out(tmp_path):
    import subprocess
    import sys

    code = "import sys, hftrain; hftrain.__version__; print('trl' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
