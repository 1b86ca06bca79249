"""The bad-input catalogue: each entry fails early with a message naming the problem, and writes nothing."""

import sys
from pathlib import Path

import pytest
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from monitor_common import TOKENIZER, InjectingTrainer, make_args, tiny_model, token_rows  # noqa: E402

from hftrain.checkpoints import resume_checkpoint  # noqa: E402
from hftrain.errors import ConfigError, DataError  # noqa: E402
from hftrain.validation import validate_dataset, validate_finite, validate_labels  # noqa: E402


def test_empty_dataset():
    with pytest.raises(DataError, match=r"train_dataset: the dataset is empty \(0 rows\)"):
        validate_dataset(Dataset.from_dict({"text": []}), ["text"])


def test_missing_columns_names_them_and_what_is_there():
    data = Dataset.from_dict({"prompt": ["1+1="], "answer": ["2"]})
    with pytest.raises(DataError, match="eval_dataset: missing column.s. completion; the dataset has prompt, answer"):
        validate_dataset(data, ["prompt", "completion"], name="eval_dataset")
    validate_dataset(data, ["prompt"])  # fine


def test_all_masked_labels():
    data = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[-100, -100, -100], [-100, -100]]})
    with pytest.raises(DataError, match="every label in column 'labels' is masked"):
        validate_labels(data)
    validate_labels(Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[-100, 2]]}))  # one real label is enough


def test_non_finite_numeric_column():
    data = Dataset.from_dict({"text": ["a", "b", "c"], "weight": [1.0, float("nan"), 0.5]})
    with pytest.raises(DataError, match=r"column 'weight' holds a non-finite value \(nan\) in row 1"):
        validate_finite(data)
    validate_finite(Dataset.from_dict({"text": ["a"], "weight": [1.0]}))


def test_output_dir_with_another_runs_checkpoints(tmp_path):
    out = tmp_path / "out"
    InjectingTrainer(
        model=tiny_model(),
        train_dataset=token_rows(),
        args=make_args(str(out), max_steps=2, save_strategy="steps", save_steps=2),
    ).train()
    listing = sorted(p.relative_to(out) for p in out.rglob("*"))
    same = make_args(str(out), max_steps=4)
    assert resume_checkpoint(same, tiny_model()).endswith("checkpoint-2")
    # the same global batch split differently (as on another process count) may resume ...
    regrouped = make_args(str(out), max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert resume_checkpoint(regrouped, tiny_model()).endswith("checkpoint-2")
    # ... another global batch may not
    other = make_args(str(out), per_device_train_batch_size=4, gradient_accumulation_steps=2)
    with pytest.raises(
        ConfigError,
        match="checkpoint-2 belongs to a run with other arguments .global_batch_size: 4 in the checkpoint, 8 now",
    ):
        resume_checkpoint(other, tiny_model())
    from hftrain.builtin import build_tiny_causal_lm

    with pytest.raises(ConfigError, match="model.hidden_size: 32 in the checkpoint, 64 now"):
        resume_checkpoint(same, build_tiny_causal_lm(TOKENIZER, hidden_size=64, num_layers=2))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == listing  # nothing written
    assert resume_checkpoint(make_args(str(tmp_path / "fresh"), max_steps=4)) is None
