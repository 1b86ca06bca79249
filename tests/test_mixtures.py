"""Dataset mixtures (`datasets:`): exact proportions for a seed, per-entry columns/rows/test splits, a real SFT run
on a mixture, every recipe taking one, and bad entries ending in one `error:` line before anything is written."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from hftrain.errors import ConfigError, DataError
from hftrain.recipe_utils import load_dataset_splits
from hftrain.validation import PREFERENCE_ROWS, SFT_ROWS

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("sft", "dpo", "seq2seq", "pretrain", "grpo", "kto", "reward", "diffusion")
TINY = ["--max_steps", "3", "--tiny_hidden_size", "32", "--tiny_num_layers", "1", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--logging_steps", "1", "--eval_steps", "3", "--save_steps", "3",
        "--max_length", "32", "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def two_sources(folder: Path) -> tuple[Path, Path]:
    """a.jsonl (40 rows) and b.jsonl (20 rows); every row says which file and which line it came from."""
    a = write_jsonl(folder / "a.jsonl", [{"prompt": f"a{i}=", "completion": "a"} for i in range(40)])
    b = write_jsonl(folder / "b.jsonl", [{"prompt": f"b{i}=", "completion": "b"} for i in range(20)])
    return a, b


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def recipes():
    return {name: runpy.run_path(str(REPO / "recipes" / f"{name}.py")) for name in ("sft",)}


def sft_script_args(recipes, tmp_path: Path, config: dict, *flags: str):
    path = write_config(tmp_path / "mixture.yaml", config)
    return recipes["sft"]["parse_args"](["--config", str(path), "--output_dir", str(tmp_path / "out"), *flags])[0]


def load(script_args, seed: int = 42, formats=SFT_ROWS):
    return load_dataset_splits(script_args, bundled=None, seed=seed, formats=formats)


# -- proportions ----------------------------------------------------------------------------------------------------
def test_weighted_mixture_has_exact_proportions_for_a_seed(recipes, tmp_path, capsys):
    a, b = two_sources(tmp_path)
    config = {
        "datasets": [
            {"path": str(a), "rows": 30, "weight": 1},  # the first 30 of a, down-sampled to a quarter
            {"path": str(b), "fraction": 0.5, "weight": 3},  # the first 10 of b, up-sampled to three quarters
        ],
        "eval_holdout": 0,
    }
    script_args = sft_script_args(recipes, tmp_path, config)
    assert script_args.dataset_name == "mixture(a.jsonl, b.jsonl)"  # recipes treat it as a named dataset
    train, evaluation = load(script_args)
    assert evaluation is None and len(train) == 40  # the mixture keeps the size of its parts: 30 + 10
    prompts = train["prompt"]
    per_source = Counter(p[0] for p in prompts)
    assert per_source == {"a": 10, "b": 30}
    a_rows = [p for p in prompts if p[0] == "a"]
    assert len(set(a_rows)) == 10 and {int(p[1:-1]) for p in a_rows} <= set(range(30))  # distinct, from the cut
    assert Counter(p for p in prompts if p[0] == "b") == {f"b{i}=": 3 for i in range(10)}  # each row 3 times
    assert prompts[:40] != sorted(prompts)  # shuffled: max_train_samples keeps a mix, not the first dataset
    assert "a.jsonl 10 rows (weight 1, from 30) + b.jsonl 30 rows (weight 3, from 10) = 40" in capsys.readouterr().out

    again, _ = load(script_args)
    other, _ = load(script_args, seed=7)
    assert again["prompt"] == prompts  # the same seed: the same rows in the same order
    assert Counter(p[0] for p in other["prompt"]) == per_source and other["prompt"] != prompts


def test_eval_rows_are_held_out_before_any_row_is_repeated(recipes, tmp_path):
    a, b = two_sources(tmp_path)
    config = {"datasets": [{"path": str(a), "rows": 20, "weight": 1}, {"path": str(b), "rows": 10, "weight": 1}]}
    train, evaluation = load(sft_script_args(recipes, tmp_path, config, "--eval_holdout", "0.2"))
    assert Counter(p[0] for p in evaluation["prompt"]) == {"a": 4, "b": 2}  # 0.2 of each entry's rows, unweighted
    assert Counter(p[0] for p in train["prompt"]) == {"a": 12, "b": 12}  # 16 + 8 rows, weighted 1:1
    assert not set(evaluation["prompt"]) & set(train["prompt"])  # no eval row is trained on, not even a copy


def test_columns_rename_and_keep_and_a_test_split_per_entry(recipes, tmp_path):
    from datasets import Dataset, DatasetDict

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}=", "answer": "q", "id": i} for i in range(6)])
    saved = tmp_path / "saved"
    rows = [{"prompt": f"s{i}=", "completion": "s", "source": "x"} for i in range(8)]
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:3])}).save_to_disk(str(saved))
    config = {
        "datasets": [
            {"path": str(qa), "columns": {"question": "prompt", "answer": "completion"}},
            {"path": str(saved), "columns": ["prompt", "completion"], "rows": 5, "test_split": "test"},
        ],
        "eval_holdout": 0,
    }
    train, evaluation = load(sft_script_args(recipes, tmp_path, config))
    assert sorted(train.column_names) == ["completion", "prompt"]
    assert Counter(train["completion"]) == {"q": 6, "s": 5}  # no weights: the parts concatenated as cut
    assert sorted(evaluation["prompt"]) == ["s0=", "s1=", "s2="]  # the entry's own test split; qa holds none out


def test_a_preference_mixture_is_checked_with_the_recipe_formats(recipes, tmp_path):
    good = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 4)
    bad = write_jsonl(tmp_path / "q.jsonl", [{"q": "1+1=", "yes": "2", "no": None}] * 4)
    columns = {"q": "prompt", "yes": "chosen", "no": "rejected"}
    config = {"datasets": [str(good), {"path": str(bad), "columns": columns}], "eval_holdout": 0}
    with pytest.raises(DataError) as info:
        load(sft_script_args(recipes, tmp_path, config), formats=PREFERENCE_ROWS)
    assert str(info.value) == f"datasets[1]: {bad} row 0 (line 1): 'no' is null; fix or drop that row"  # file names


# -- recipes --------------------------------------------------------------------------------------------------------
def test_sft_recipe_trains_on_a_mixture(recipes, tmp_path, capsys):
    a, b = two_sources(tmp_path)
    config = {"datasets": [{"path": str(a), "rows": 12, "weight": 1}, {"path": str(b), "rows": 4, "weight": 3}]}
    path = write_config(tmp_path / "mixture.yaml", {**config, "eval_holdout": 0.25})
    out = tmp_path / "run"
    trainer, metrics = recipes["sft"]["main"](["--config", str(path), "--output_dir", str(out), *TINY])
    assert trainer.state.global_step == 3 and "eval_loss" in metrics
    assert "a.jsonl 3 rows (weight 1, from 9) + b.jsonl 9 rows (weight 3, from 3) = 12 training rows; 4 eval rows" in (
        capsys.readouterr().out
    )
    assert len(trainer.train_dataset) == 12 and len(trainer.eval_dataset) == 4
    assert (out / "model.safetensors").exists() and "mixture(a.jsonl, b.jsonl)" in (out / "README.md").read_text()


def test_command_line_takes_the_mixture_as_json(recipes, tmp_path):
    a, b = two_sources(tmp_path)
    flag = json.dumps([{"path": str(a), "weight": 2}, {"path": str(b), "weight": 1}])
    script_args = recipes["sft"]["parse_args"](["--datasets", flag, "--output_dir", str(tmp_path / "o")])[0]
    assert [(e.path, e.weight) for e in script_args.datasets] == [(str(a), 2.0), (str(b), 1.0)]
    with pytest.raises(ConfigError, match=r"^datasets: a mixture replaces dataset_name \('trl-lib/Capybara'\)"):
        recipes["sft"]["parse_args"](["--datasets", flag, "--dataset_name", "trl-lib/Capybara"])
    config = tmp_path / "named.yaml"  # a config naming one dataset: the mixture replaces it as the error says
    config.write_text("dataset_name: trl-lib/Capybara\n")
    with pytest.raises(ConfigError, match="--dataset_name ''"):
        recipes["sft"]["parse_args"](["--config", str(config), "--datasets", flag])
    script_args = recipes["sft"]["parse_args"](["--config", str(config), "--datasets", flag, "--dataset_name", ""])[0]
    assert script_args.dataset_name == "mixture(a.jsonl, b.jsonl)" and len(script_args.datasets) == 2


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_takes_a_mixture_from_its_config(name, tmp_path):
    """No recipe has code for mixtures: each parses `datasets:` into ScriptArguments, whose `dataset_name` becomes
    the mixture's label (so none mistakes it for its bundled default), and loads through load_dataset_splits."""
    a, b = two_sources(tmp_path)
    path = write_config(tmp_path / "m.yaml", {"datasets": [{"path": str(a)}, {"path": str(b), "weight": None}]})
    parsed = runpy.run_path(str(REPO / "recipes" / f"{name}.py"))["parse_args"](["--config", str(path)])
    script_args = parsed[0]
    assert [e.path for e in script_args.datasets] == [str(a), str(b)]
    assert script_args.dataset_name == "mixture(a.jsonl, b.jsonl)"
    assert "load_dataset_splits(" in (REPO / "recipes" / f"{name}.py").read_text()


# -- bad entries: one line, exit status 2, nothing written ------------------------------------------------------------
def bad_cases(a: Path, b: Path) -> dict:
    missing = a.parent / "missing.jsonl"
    keys = "path, name, split, columns, rows, fraction, weight, test_split"
    return {
        "unknown-key": (
            [{"path": str(a), "weight": 1}, {"path": str(b), "wieght": 2}],
            f"error: datasets[1].wieght: unknown key (did you mean weight?); an entry takes {keys}",
        ),
        "missing-file": (
            [{"path": str(a)}, {"path": str(missing)}],
            f"error: datasets[1].path: no such file or folder: {missing}",
        ),
        "bad-fraction": (
            [{"path": str(a), "fraction": 1.5}, {"path": str(b)}],
            "error: datasets[0].fraction: expected a share with 0 < fraction <= 1, got 1.5",
        ),
        "missing-column": (
            [{"path": str(a)}, {"path": str(b), "columns": {"question": "prompt", "completion": "completion"}}],
            f"error: datasets[1].columns: 'question' is not a column of {b} (it has: prompt, completion)",
        ),
    }


@pytest.mark.parametrize("case", ["unknown-key", "missing-file", "bad-fraction", "missing-column"])
def test_bad_entry_is_one_error_line_through_the_recipe(case, tmp_path):
    a, b = two_sources(tmp_path)
    entries, expected = bad_cases(a, b)[case]
    config = write_config(tmp_path / "bad.yaml", {"datasets": entries, "output_dir": str(tmp_path / "out")})
    before = {p: p.read_bytes() for p in (a, b, config)}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "sft.py"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [expected]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("[{path: a.jsonl", "datasets: not a JSON list of datasets"),
        ([], "datasets: expected a non-empty list of datasets"),
        ([{"name": "x"}], "datasets[0].path: required"),
        ([{"path": "a.jsonl", "rows": 0}], "datasets[0].rows: expected a positive whole number of rows, got 0"),
        ([{"path": "a.jsonl", "rows": 2, "fraction": 0.5}], "datasets[0].fraction: give rows or fraction, not both"),
        ([{"path": "a.jsonl", "weight": 1}, "b.jsonl"], "datasets[1].weight: missing; give every entry a weight"),
        ([{"path": "a.jsonl", "weight": -1}], "datasets[0].weight: expected a positive number"),
        ([{"path": "a.jsonl", "columns": {"x": "p", "y": "p"}}], "datasets[0].columns: 'p' appears twice as a new"),
        ([{"path": "a.jsonl", "test_split": "train"}], "datasets[0].test_split: 'train' is also the training split"),
    ],
)
def test_bad_values_name_the_entry_and_key(entries, message):
    from hftrain.config import ScriptArguments

    with pytest.raises(ConfigError) as info:
        ScriptArguments(datasets=entries)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_entries_of_different_columns_or_kinds_are_named(recipes, tmp_path):
    a, _ = two_sources(tmp_path)
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}] * 4)
    turn = [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "x"}]
    chat = write_jsonl(tmp_path / "c.jsonl", [{"prompt": turn[0], "completion": turn[1]}] * 4)
    for other, fragment in ((text, "datasets[1].columns: its columns (text) differ from datasets[0]'s"),
                            (chat, "datasets[1]: column 'prompt' holds List(")):  # fmt: skip
        config = {"datasets": [str(a), str(other)], "eval_holdout": 0}
        with pytest.raises(DataError) as info:
            load(sft_script_args(recipes, tmp_path, config))
        assert str(info.value).startswith(fragment), str(info.value)


def test_diffusion_recipe_trains_on_a_mixture_of_image_datasets(tmp_path, capsys):
    """The diffusion recipe loads through the same path: two saved image datasets, not its bundled digits."""
    from hftrain.diffusion.builtin import digits_dataset

    digits = digits_dataset(max_rows=60)
    digits.select(range(40)).save_to_disk(str(tmp_path / "d1"))
    digits.select(range(40, 60)).save_to_disk(str(tmp_path / "d2"))
    entries = [{"path": str(tmp_path / "d1"), "weight": 1}, {"path": str(tmp_path / "d2"), "weight": 1}]
    path = write_config(tmp_path / "m.yaml", {"datasets": entries, "eval_holdout": 0.1, "resolution": 16})
    main = runpy.run_path(str(REPO / "recipes" / "diffusion.py"))["main"]
    flags = ["--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--eval_num_samples", "4",
             "--num_inference_steps", "2", "--per_device_train_batch_size", "8", "--disable_tqdm", "true"]  # fmt: skip
    main(["--config", str(path), "--output_dir", str(tmp_path / "out"), *flags])
    assert "d1 27 rows (weight 1, from 36) + d2 27 rows (weight 1, from 18) = 54 training rows; 6 eval rows" in (
        capsys.readouterr().out
    )
    assert (tmp_path / "out" / "all_results.json").exists()


# -- README -----------------------------------------------------------------------------------------------------------
def readme_mixture_example() -> tuple[str, list[str], str]:
    """(the YAML block of README's "Dataset mixtures", the commands in its comments, the mixture line it shows)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Dataset mixtures") :]
    section = section[: section.index("\n### ")]
    block = section[section.index("```yaml\n") + 8 :]
    block = block[: block.index("```")]
    commands = re.findall(r"^#.*?(python recipes/sft\.py .*)$", block, re.M)
    shown = " ".join(re.search(r"`(\[hftrain\] dataset mixture:[^`]*)`", section).group(1).split())
    return block, commands, shown


def test_readme_mixture_example_runs_as_written(recipes, tmp_path, monkeypatch, capsys):
    block, commands, shown = readme_mixture_example()
    assert len(commands) == 2  # the YAML file and the same list as JSON on the command line
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "chat.jsonl", [{"prompt": f"c{i}?", "completion": "chat"} for i in range(40)])
    qa = "question,answer\n" + "".join(f"q{i}?,answer {i}\n" for i in range(300))
    (tmp_path / "data" / "qa.csv").write_text(qa)
    (tmp_path / "mixture.yaml").write_text(block)
    printed = []
    for command in commands:
        argv = [*shlex.split(command)[2:], *TINY, "--overwrite_output_dir", "true"]
        trainer, _ = recipes["sft"]["main"](argv)
        assert trainer.state.global_step == 3 and len(trainer.train_dataset) == 216
        printed.append(capsys.readouterr().out)
    assert all(shown in text for text in printed), (shown, printed)
