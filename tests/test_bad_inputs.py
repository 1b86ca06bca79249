"""The bad-input catalogue, table-driven: every case ends in one `error:` line (exit status 2) that names the field or
file, before training starts, and leaves every file that existed (a previous run's output_dir, the tracker database,
the data) byte-identical. Cases run the recipes' `main`, the drop-in trainers' constructors, `hftrain runs` and
`hftrain tune` in-process through the same boundary the command line uses (`errors.report_user_error`); a few
launch real processes (tests/test_readme_commands.py). The last tests check the false signals the catalogue found
(early stop, DPO's extra run, a restarted run, an ignored SIGINT)."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import shutil
import signal
import sqlite3
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
from transformers import TrainerCallback

from hftrain.errors import HFTrainError, report_user_error

REPO = Path(__file__).resolve().parents[1]
TINY = ["--tiny_hidden_size", "32", "--tiny_num_layers", "1", "--bundled_train_size", "32", "--bundled_eval_size"]
TINY += ["8", "--max_steps", "2", "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]
SFT_ROWS = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(12)]


# -- files the cases read -------------------------------------------------------------------------------------------
def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def with_row(rows, index, row):
    rows = list(rows)
    rows[index] = row
    return jsonl(rows)


FILES: dict[str, bytes] = {
    "empty.jsonl": b"",
    "malformed.jsonl": jsonl(SFT_ROWS[:3]) + b'{"prompt": "9+1=", "completion": \n',
    "latin1.jsonl": '{"prompt": "café=", "completion": "2"}\n'.encode("latin-1"),
    "null.jsonl": with_row(SFT_ROWS, 2, {"prompt": "2+1=", "completion": None}),
    "int.jsonl": with_row(SFT_ROWS, 1, {"prompt": "1+1=", "completion": 2}),
    "badmsg.jsonl": with_row(SFT_ROWS, 0, {"prompt": [{"role": "user"}], "completion": [{"role": "assistant"}]}),
    "mixed.jsonl": with_row(SFT_ROWS, 3, {"prompt": "3+1=", "completion": [{"role": "assistant", "content": "4"}]}),
    "columns.jsonl": jsonl([{"question": "1+1=", "answer": "2"}] * 4),
    "nocontent.jsonl": jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}]),
    "data.xlsx": b"not really a spreadsheet",
    "prefs_null.jsonl": jsonl(
        [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "2+2=", "chosen": None, "rejected": "5"}]
    ),
    "s2s_list.jsonl": jsonl([{"source": "spell: 1", "target": "one"}, {"source": "spell: 2", "target": ["two"]}]),
    "text_int.jsonl": jsonl([{"text": "a docstring"}, {"text": 7}]),
    "bad.yaml": b"max_step: 3\n",
    "latin1.yaml": "output_dir: caf\xe9\n".encode("latin-1"),
    "list.yaml": b"- a\n- b\n",
    "broken.yaml": b"a: [unclosed\n",
    "afile": b"a file, not a folder\n",
    "space_latin1.yaml": "params: {learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}\n# caf\xe9\n".encode(
        "latin-1"
    ),
    "space_bad.yaml": b"params: {learning_rate: {type: gaussian, low: 0, high: 1}}\n",
    "space_field.yaml": b"params: {learnig_rate: {type: uniform, low: 0.001, high: 0.01}}\n",
    "space.yaml": b"params: {learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}\n",
}


def write_parquet_with_null(path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list([{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+1=", "completion": None}]).to_parquet(
        str(path)
    )


def write_csv_with_empty_text(path: Path) -> None:
    path.write_text("text,other\nhello,1\n,2\n")


def previous_run(out: Path) -> None:
    """What a previous run left: final weights and two checkpoints whose trainer_state.json is damaged."""
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (out / "all_results.json").write_text('{"eval_loss": 1.0}')
    for step in (2, 4):
        checkpoint = out / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text('{"global_step": ')
        (checkpoint / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")


def make_tracker_database(path: Path) -> Path:
    """A tracker database holding one finished run."""
    from hftrain.tracking.store import TrackerStore

    with TrackerStore(str(path)) as store:
        run = store.create_run("default", "earlier-run", params={"args.learning_rate": 1e-3})
        store.log_metrics(run, 1, {"loss": 2.0})
        store.set_status(run, "finished")
    return path


def build_world(tmp: Path, tracker_database: Path, monkeypatch) -> Path:
    """The data files, a previous run's output_dir (`prev`) and a copy of `tracker_database` in `tmp`; cwd there."""
    for name, content in FILES.items():
        (tmp / name).write_bytes(content)
    for folder in ("emptydir", "configdir", "modeldir"):
        (tmp / folder).mkdir()
    (tmp / "modeldir" / "notes.txt").write_text("no model here")
    write_parquet_with_null(tmp / "null.parquet")
    write_csv_with_empty_text(tmp / "empty_text.csv")
    previous_run(tmp / "prev")
    (tmp / "tracker").mkdir()
    shutil.copy(tracker_database, tmp / "tracker" / "runs.db")
    monkeypatch.setenv("HFTRAIN_TRACKER_DB", str(tmp / "tracker" / "runs.db"))
    monkeypatch.chdir(tmp)
    return tmp


@pytest.fixture(scope="module")
def tracker_template(tmp_path_factory) -> Path:
    return make_tracker_database(tmp_path_factory.mktemp("tracker") / "runs.db")


@pytest.fixture
def world(tmp_path, tracker_template, monkeypatch):
    return build_world(tmp_path, tracker_template, monkeypatch)


def snapshot(root: Path) -> dict[str, Optional[str]]:
    """Every file and folder under `root` with its content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        state[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return state


# -- the cases ------------------------------------------------------------------------------------------------------
@dataclass
class C:
    """One bad input: `target` (a recipe, `runs`, `tune`), its command line (`{tmp}`: the case's folder, `{repo}`),
    fragments the one `error:` line must hold, and an optional `prepare(tmp, monkeypatch)`."""

    id: str
    target: str
    argv: str
    expect: tuple
    prepare: Optional[Callable] = field(default=None, repr=False)


def read_only(tmp: Path, monkeypatch) -> None:
    folder = tmp / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:  # root writes anywhere: the check asks os.access, so answer as a read-only mount would
        import hftrain.preflight

        real = os.access
        monkeypatch.setattr(
            hftrain.preflight.os, "access", lambda p, m: False if str(p) == str(folder) else real(p, m)
        )


def tiny_model_folder(tmp: Path, monkeypatch) -> None:
    from hftrain.builtin import build_tiny_causal_lm, build_tokenizer

    tokenizer = build_tokenizer()
    build_tiny_causal_lm(tokenizer, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(tmp / "tinymodel")
    tokenizer.save_pretrained(tmp / "tinymodel")


def disk_nearly_full(tmp: Path, monkeypatch) -> None:
    import hftrain.preflight

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hftrain.preflight.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))


def unavailable_integration() -> str:
    from transformers.integrations import get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    return next(n for n in ("clearml", "comet_ml", "neptune", "dvclive", "wandb") if n not in available)


RECIPE_CASES = [
    # flags and values (hftrain.config; parsed before anything is loaded)
    C("type", "sft", "--max_steps ten", ("argument --max_steps/--max-steps: invalid int value: 'ten'",)),
    C("prefix-max_step", "sft", "--max_step 4", ("unknown command-line argument(s): --max_step 4",)),
    C("prefix-learning_rat", "sft", "--learning_rat 5e-4", ("--learning_rat", "did you mean")),
    C("lr-negative", "sft", "--learning_rate -1", ("learning_rate: expected a non-negative number, got -1",)),
    C("lr-nan", "sft", "--learning_rate nan", ("learning_rate:", "got nan")),
    C("batch-zero", "sft", "--per_device_train_batch_size 0", ("per_device_train_batch_size: expected a whole",)),
    C("accumulation-zero", "sft", "--gradient_accumulation_steps 0", ("gradient_accumulation_steps:",)),
    C("max_steps-negative", "sft", "--max_steps -5", ("max_steps: expected -1",)),
    C("beta2", "sft", "--adam_beta2 1.5", ("adam_beta2: expected a number in [0, 1)",)),
    C("weight_decay", "sft", "--weight_decay -1", ("weight_decay:",)),
    C("seed", "sft", "--seed -1", ("seed: expected a whole number >= 0",)),
    C("logging_steps", "sft", "--logging_steps 0", ("logging_steps: expected a positive number",)),
    C("save_steps", "sft", "--save_steps 0", ("save_steps: expected a positive number",)),
    C("max_length", "sft", "--max_length 0", ("max_length: expected a whole number >= 1",)),
    C("warmup", "sft", "--warmup_steps -10", ("warmup_steps:",)),
    C(
        "report_to-typo",
        "sft",
        "--report_to tensorbord",
        ("report_to: unknown integration 'tensorbord'", "tensorboard"),
    ),
    C("report_to-missing", "sft", "--report_to {missing}", ("report_to:", "is not available here")),
    C("choice", "sft", "--optimization_level turbo", ("--optimization_level", "invalid choice: 'turbo'")),
    C("holdout", "sft", "--eval_holdout 0.9", ("eval_holdout: expected a share between 0 and 0.5",)),
    C("monitor-action", "sft", "--monitor_loss_spike_action boom", ("monitor_loss_spike_action: expected one of",)),
    C("early-stop-no-eval", "sft", "--early_stopping_patience 2 --eval_strategy no", ("early_stopping_patience:",)),
    C("global-batch", "sft", "--global_batch_size 7", ("global_batch_size: 7 is not a multiple",)),
    C("tracker-db-dir", "sft", "--tracker_db {tmp}/emptydir", ("tracker_db:", "is a directory")),
    C("curriculum-start", "sft", "--curriculum_start 0", ("curriculum_start: expected a", "in (0, 1], got 0")),
    C("lora-dropout", "sft", "--use_peft true --lora_dropout 1.5", ("lora_dropout:",)),
    C("qlora-no-gpu", "sft", "--use_peft true --load_in_4bit true --model_name_or_path x/y", ("load_in_4bit",)),
    C("config-dir", "sft", "--config {tmp}/configdir", ("--config", "configdir: is a directory")),
    C("config-latin1", "sft", "--config {tmp}/latin1.yaml", ("latin1.yaml: not UTF-8 text (byte 0xe9 on line 1)",)),
    C("config-missing", "sft", "--config {tmp}/nope.yaml", ("--config: no such file",)),
    C("config-key", "sft", "--config {tmp}/bad.yaml", ("unknown key 'max_step' (did you mean max_steps",)),
    C("config-list", "sft", "--config {tmp}/list.yaml", ("expected a mapping of field: value, got list",)),
    C("config-yaml", "sft", "--config {tmp}/broken.yaml", ("broken.yaml: not valid YAML",)),
    # models (recipe_utils, preflight)
    C("flash-bundled", "sft", "--attn_implementation flash_attention_2", ("attn_implementation: flash_attention_2",)),
    C(
        "flash-local",
        "sft",
        "--model_name_or_path {tmp}/tinymodel --attn_implementation flash_attention_2",
        ("attn_implementation: flash_attention_2 needs",),
        tiny_model_folder,
    ),
    C("model-dir", "sft", "--model_name_or_path {tmp}/modeldir", ("could not load the model in", "no config.json")),
    C("expand-negative", "reward", "--expand_layers -1", ("expand_layers: expected 0 or more new layers, got -1",)),
    C(
        "expand-no-model",
        "reward",
        "--expand_layers 2 --sft_output_dir {tmp}/emptydir",
        ("expand_layers: needs a trained model to grow", "emptydir' holds no model"),
    ),
    # data (validation: before anything is split or tokenised)
    C("jsonl-empty", "sft", "--dataset_name {tmp}/empty.jsonl", ("empty.jsonl is empty (0 bytes)",)),
    C("jsonl-malformed", "sft", "--dataset_name {tmp}/malformed.jsonl", ("malformed.jsonl line 4 is not valid JSON",)),
    C("dir-empty", "sft", "--dataset_name {tmp}/emptydir", ("emptydir holds no data files",)),
    C(
        "jsonl-latin1",
        "sft",
        "--dataset_name {tmp}/latin1.jsonl",
        ("latin1.jsonl line 1 is not UTF-8 text (byte 0xe9",),
    ),
    C("row-null", "sft", "--dataset_name {tmp}/null.jsonl", ("null.jsonl row 2 (line 3): 'completion' is null",)),
    C("row-int", "sft", "--dataset_name {tmp}/int.jsonl", ("row 1 (line 2): 'completion' is int (2), expected",)),
    C("row-message", "sft", "--dataset_name {tmp}/badmsg.jsonl", ("row 0 (line 1): 'prompt' item 0 has no string",)),
    C("row-mixed", "sft", "--dataset_name {tmp}/mixed.jsonl", ("row 3 (line 4): 'prompt' is text but 'completion'",)),
    C(
        "columns",
        "sft",
        "--dataset_name {tmp}/columns.jsonl",
        ("needs columns messages or conversations or prompt+completion or text; the dataset has answer, question",),
    ),
    C(
        "messages-content",
        "sft",
        "--dataset_name {tmp}/nocontent.jsonl",
        ("'messages' item 1 has no string 'content'",),
    ),
    C("file-type", "sft", "--dataset_name {tmp}/data.xlsx", ("unsupported file type '.xlsx'",)),
    C("max-train-samples", "sft", "--max_train_samples 0", ("max_train_samples: expected a positive number",)),
    C("parquet-null", "sft", "--dataset_name {tmp}/null.parquet", ("dataset_name: row 1: 'completion' is null",)),
    C("csv-null", "pretrain", "--dataset_name {tmp}/empty_text.csv", ("dataset_name: row 1: 'text' is null",)),
    C("dpo-null", "dpo", "--dataset_name {tmp}/prefs_null.jsonl", ("row 1 (line 2): 'chosen' is null",)),
    C("dpo-sft-data", "dpo", "--dataset_name {tmp}/int.jsonl", ("needs columns prompt+chosen+rejected or chosen+",)),
    C("dpo-beta", "dpo", "--beta -1", ("beta: expected a non-negative number, got -1.0",)),
    C("s2s-list", "seq2seq", "--dataset_name {tmp}/s2s_list.jsonl", ("row 1 (line 2): 'target' is list",)),
    C("s2s-columns", "seq2seq", "--dataset_name {tmp}/columns.jsonl", ("needs columns source+target",)),
    C("pretrain-block", "pretrain", "--block_size 4", ("block_size: expected at least 8 tokens",)),
    C("pretrain-text-int", "pretrain", "--dataset_name {tmp}/text_int.jsonl", ("row 1 (line 2): 'text' is int (7)",)),
    # output_dir (preflight, once the model exists)
    C("out-file", "sft", "--output_dir {tmp}/afile", ("output_dir:", "afile is a file")),
    C("out-parent-file", "sft", "--output_dir {tmp}/afile/run", ("cannot be created", "afile is a file")),
    C("out-readonly", "sft", "--output_dir {tmp}/readonly", ("output_dir:", "readonly is not writable"), read_only),
    C(
        "out-disk-full",
        "sft",
        "--output_dir {tmp}/fresh",
        ("free on the disk", "one checkpoint of this model"),
        disk_nearly_full,
    ),
    C(
        "out-damaged",
        "sft",
        "--output_dir {tmp}/prev",
        (
            "holds a previous run's results",
            "checkpoint-2 (trainer_state.json is not valid JSON",
            "checkpoint-4",
            "model.safetensors",
            "--overwrite_output_dir true",
        ),
    ),
    C("out-no-resume", "seq2seq", "--output_dir {tmp}/prev --auto_resume false", ("holds a previous run's results",)),
    C("resume-incomplete", "sft", "--resume_from_checkpoint {tmp}/prev/checkpoint-4", ("checkpoint-4 is incomplete",)),
    C("resume-missing", "sft", "--resume_from_checkpoint {tmp}/no/such", ("resume_from_checkpoint",)),
    # hftrain runs (standard library only)
    C("runs-report-dir", "runs", "report -o {tmp}/missing_dir/r.html", ("missing_dir/r.html: no such folder",)),
    C("runs-report-folder", "runs", "report -o {tmp}/emptydir", ("emptydir: is a folder",)),
    C("runs-export-file", "runs", "export --out {tmp}/afile", ("--out", "afile: is a file")),
    C("runs-show", "runs", "show nosuchrun", ("run 'nosuchrun': no run matches",)),
    C("runs-param", "runs", "list --param garbage", ("--param 'garbage': expected KEY<op>VALUE",)),
    C("runs-status", "runs", "list --status weird", ("--status: expected one of",)),
    C("runs-smooth", "runs", "report --smooth 2", ("--smooth: expected a value from 0 to 0.99",)),
    C("runs-db-text", "runs", "--db {tmp}/bad.yaml list", ("bad.yaml",)),
    C("runs-gc", "runs", "gc", ("gc: name runs or give a filter",)),
    # hftrain tune (checked before any trial, study file or trial folder)
    C("tune-no-space", "tune", "{repo}/recipes/sft.py", ("the following arguments are required: --search_space",)),
    C("tune-space-missing", "tune", "{repo}/recipes/sft.py --search_space {tmp}/nope.yaml", ("no such file",)),
    C("tune-space-dir", "tune", "{repo}/recipes/sft.py --search_space {tmp}/configdir", ("is a directory",)),
    C("tune-space-latin1", "tune", "{repo}/recipes/sft.py --search_space {tmp}/space_latin1.yaml", ("not UTF-8",)),
    C("tune-distribution", "tune", "{repo}/recipes/sft.py --search_space {tmp}/space_bad.yaml", ("gaussian",)),
    C("tune-field", "tune", "{repo}/recipes/sft.py --search_space {tmp}/space_field.yaml", ("--learnig_rate",)),
    C("tune-n_trials", "tune", "{repo}/recipes/sft.py --search_space {tmp}/space.yaml --n_trials 0", ("--n_trials",)),
    C(
        "tune-recipe-flag",
        "tune",
        "{repo}/recipes/sft.py --search_space {tmp}/space.yaml --max_steps ten",
        ("--max_steps", "invalid int value: 'ten'"),
    ),
    C("tune-prefix", "tune", "{repo}/recipes/sft.py --search_space {tmp}/space.yaml --n_trial 3", ("--n_trial 3",)),
    C(
        "tune-storage",
        "tune",
        "{repo}/recipes/sft.py --search_space {tmp}/space.yaml --storage {tmp}/emptydir",
        ("--storage", "is a folder"),
    ),
    C("tune-recipe", "tune", "{tmp}/nope.py --search_space {tmp}/space.yaml", ("recipe: no such file",)),
]


# -- running a case -------------------------------------------------------------------------------------------------
_RECIPES: dict[str, Callable] = {}


def recipe_main(name: str) -> Callable:
    if name not in _RECIPES:
        _RECIPES[name] = runpy.run_path(str(REPO / "recipes" / f"{name}.py"))["main"]
    return _RECIPES[name]


class TrainingStarted(TrainerCallback):
    started = False

    def on_train_begin(self, args, state, control, **kwargs):
        TrainingStarted.started = True


def run_case(case: C, tmp: Path) -> int:
    """The case through the command-line boundary; returns the exit status."""
    import shlex

    argv = shlex.split(
        case.argv.format(tmp=tmp, repo=REPO, missing=unavailable_integration() if "{missing" in case.argv else "")
    )
    if case.target == "runs":
        from hftrain.cli import main

        return main(["runs", *argv])
    if case.target == "tune":
        from hftrain.tune import main

        return main(argv)
    if "--output_dir" not in argv:
        argv = ["--output_dir", str(tmp / "prev"), *argv]
    try:
        recipe_main(case.target)([*TINY, *argv], callbacks=[TrainingStarted()])
    except HFTrainError as exc:
        return report_user_error(exc)
    return 0


def assert_one_line_nothing_changed(status, captured, before, after, expect) -> str:
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert status == 2, captured.err[-2000:]
    assert len(errors) == 1, captured.err[-2000:]
    for fragment in expect:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in captured.err
    assert after == before, "files changed: " + ", ".join(
        k for k in set(before) | set(after) if before.get(k) != after.get(k)
    )
    return errors[0]


@pytest.mark.parametrize("case", RECIPE_CASES, ids=[c.id for c in RECIPE_CASES])
def test_bad_input(case, world, monkeypatch, capsys):
    if case.prepare is not None:
        case.prepare(world, monkeypatch)
    before = snapshot(world)
    TrainingStarted.started = False
    capsys.readouterr()
    status = run_case(case, world)
    captured = capsys.readouterr()
    assert_one_line_nothing_changed(status, captured, before, snapshot(world), case.expect)
    assert not TrainingStarted.started


# -- the drop-in trainers: checked at construction, before the parent prepares any data ---------------------------
def _common():
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    import monitor_common

    return monitor_common


def sft_config(out: Path, **overrides):
    from hftrain import SFTConfig

    values = dict(output_dir=str(out), report_to="none", use_cpu=True, max_length=16, max_steps=2, disable_tqdm=True)
    return SFTConfig(**{**values, **overrides})


def sft_trainer(tmp: Path, rows, eval_rows=None, args=None, **config):
    from datasets import Dataset

    from hftrain import SFTTrainer

    common = _common()
    evaluation = eval_rows if isinstance(eval_rows, dict) or eval_rows is None else Dataset.from_list(eval_rows)
    SFTTrainer(
        model=common.tiny_model(),
        args=args if args is not None else sft_config(tmp / "prev", **config),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=evaluation,
        processing_class=common.TOKENIZER,
    )


def dpo_trainer(tmp: Path, rows):
    from datasets import Dataset

    from hftrain import DPOConfig, DPOTrainer

    common = _common()
    model = common.tiny_model()
    DPOTrainer(
        model=model,
        ref_model=common.tiny_model(),
        args=DPOConfig(output_dir=str(tmp / "prev"), report_to="none", use_cpu=True, max_length=16, max_steps=2),
        train_dataset=Dataset.from_list(rows),
        processing_class=common.TOKENIZER,
    )


def plain_trainer(tmp: Path, out: str, **overrides):
    common = _common()
    args = common.make_args(str(tmp / out), max_steps=2, **overrides)
    common.Trainer(model=common.tiny_model(), args=args, train_dataset=common.token_rows(8))


def parent_config_sft(tmp: Path):
    import trl

    sft_trainer(tmp, [{"conversation": "hi"}], args=trl.SFTConfig(output_dir=str(tmp / "prev"), use_cpu=True))


def nan_config(tmp: Path):
    sft_config(tmp / "prev", learning_rate=float("nan"))


def disk_full_trainer(tmp: Path):
    import hftrain.preflight

    usage = namedtuple("usage", "total used free")
    real, hftrain.preflight.shutil.disk_usage = hftrain.preflight.shutil.disk_usage, lambda p: usage(1, 1, 0)
    try:
        plain_trainer(tmp, "fresh")
    finally:
        hftrain.preflight.shutil.disk_usage = real


PREFS = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 4
TRAINER_CASES = [
    (
        "sft-conversation",
        lambda t: sft_trainer(t, [{"conversation": [{"role": "user", "content": "hi"}]}] * 4),
        (
            "train_dataset: needs columns input_ids or messages or conversations or prompt+completion or text; the "
            "dataset has conversation",
        ),
    ),
    ("sft-parent-config", parent_config_sft, ("train_dataset: needs columns", "the dataset has conversation")),
    ("sft-text-field", lambda t: sft_trainer(t, [{"text": "a"}] * 4, dataset_text_field="body"), ("or body;",)),
    (
        "sft-null",
        lambda t: sft_trainer(t, SFT_ROWS[:1] + [{"prompt": "x", "completion": None}]),
        ("train_dataset: row 1: 'completion' is null",),
    ),
    ("sft-int", lambda t: sft_trainer(t, [{"text": i} for i in range(3)]), ("row 0: 'text' is int (0)",)),
    (
        "sft-eval-columns",
        lambda t: sft_trainer(t, SFT_ROWS, eval_rows=[{"question": "q"}]),
        ("eval_dataset: needs columns", "the dataset has question"),
    ),
    (
        "sft-eval-dict",
        lambda t: sft_trainer(t, SFT_ROWS, eval_rows={"a": _dataset([{"q": 1}])}),
        ("eval_dataset[a]: needs columns",),
    ),
    (
        "sft-report_to",
        lambda t: sft_trainer(t, SFT_ROWS, report_to="tensorbord"),
        ("report_to: unknown integration 'tensorbord'",),
    ),
    ("sft-config-nan", nan_config, ("learning_rate:", "got nan")),
    (
        "dpo-sft-data",
        lambda t: dpo_trainer(t, SFT_ROWS),
        (
            "needs columns prompt_ids+chosen_ids+rejected_ids or prompt+chosen+rejected or chosen+rejected; the dataset "
            "has completion, prompt",
        ),
    ),
    (
        "dpo-int",
        lambda t: dpo_trainer(t, [{"prompt": "2+2=", "chosen": 4, "rejected": 5}] * 2),
        ("train_dataset: row 0: 'chosen' is int (4)",),
    ),
    (
        "dpo-null",
        lambda t: dpo_trainer(t, PREFS + [{"prompt": "2+2=", "chosen": "4", "rejected": None}]),
        ("train_dataset: row 4: 'rejected' is null",),
    ),
    ("trainer-out-file", lambda t: plain_trainer(t, "afile"), ("output_dir:", "afile is a file")),
    ("trainer-disk-full", disk_full_trainer, ("output_dir:", "one checkpoint of this model needs about")),
]


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


@pytest.mark.parametrize("case_id, build, expect", TRAINER_CASES, ids=[c[0] for c in TRAINER_CASES])
def test_bad_input_to_a_drop_in_trainer(case_id, build, expect, world, capsys):
    before = snapshot(world)
    capsys.readouterr()
    try:
        build(world)
        status = 0
    except HFTrainError as exc:
        status = report_user_error(exc)
    assert_one_line_nothing_changed(status, capsys.readouterr(), before, snapshot(world), expect)


# -- false signals --------------------------------------------------------------------------------------------------
def tracker_rows(sql: str) -> list:
    connection = sqlite3.connect(os.environ["HFTRAIN_TRACKER_DB"])
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def tracked_runs() -> list[tuple]:
    """(status, last step) of every run in the tracker database, newest first."""
    from hftrain.tracking.store import TrackerStore

    with TrackerStore(os.environ["HFTRAIN_TRACKER_DB"], create=False) as store:
        return [(run["status"], run["last_step"]) for run in store.runs()]


def test_reaching_max_steps_with_early_stopping_is_not_an_early_stop(tmp_path):
    common = _common()
    args = common.make_args(
        str(tmp_path / "out"),
        max_steps=4,
        learning_rate=0.0,
        eval_strategy="steps",
        eval_steps=2,
        early_stopping_patience=2,
        tracker_system_interval=0,
    )
    trainer = common.Trainer(
        model=common.tiny_model(),
        args=args,
        train_dataset=common.token_rows(16),
        eval_dataset=common.token_rows(8, seed=1),
    )
    trainer.train()
    trainer.evaluate()  # a recipe's evaluation after training: no improvement again (the weights never moved)
    assert trainer.state.global_step == 4
    assert tracker_rows("SELECT kind FROM events WHERE kind = 'early_stop'") == []


def test_restart_after_a_kill_before_the_first_checkpoint_is_the_same_run(tmp_path):
    common = _common()

    class Interrupted(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    out = str(tmp_path / "out")
    first = common.Trainer(
        model=common.tiny_model(),
        args=common.make_args(out, max_steps=4),
        train_dataset=common.token_rows(16),
        callbacks=[Interrupted()],
    )
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert [status for status, _ in tracked_runs()] == ["killed"]
    common.Trainer(
        model=common.tiny_model(), args=common.make_args(out, max_steps=4), train_dataset=common.token_rows(16)
    ).train()
    assert tracked_runs() == [("finished", 4)]
    steps = tracker_rows("SELECT m.step FROM metrics m JOIN metric_keys k ON k.id = m.key_id WHERE k.name = 'loss'")
    assert sorted(s for (s,) in steps) == [1, 2, 3, 4]  # the killed start's steps replaced, none doubled


def test_an_ignored_sigint_does_not_stop_training(tmp_path):
    common = _common()

    class SendSigint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup or a shell's `&`
    try:
        trainer = common.Trainer(
            model=common.tiny_model(),
            args=common.make_args(str(tmp_path / "out"), max_steps=4),
            train_dataset=common.token_rows(16),
            callbacks=[SendSigint()],
        )
        trainer.train()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # put back as it was
    finally:
        signal.signal(signal.SIGINT, previous)
    assert trainer.state.global_step == 4 and not (tmp_path / "out" / "checkpoint-2").exists()
    assert tracked_runs() == [("finished", 4)]
    assert tracker_rows("SELECT kind FROM events WHERE kind = 'signal'") == []


def test_dpo_recipe_is_one_run_and_prints_its_accuracy_before_training(tmp_path, capsys):
    argv = [
        "--output_dir",
        str(tmp_path / "dpo"),
        "--sft_output_dir",
        "",
        *TINY,
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--per_device_eval_batch_size",
        "8",
    ]
    recipe_main("dpo")(argv)
    printed = capsys.readouterr().out
    assert "held-out preference accuracy before training:" in printed
    assert "held-out preference accuracy after training:" in printed
    assert tracked_runs() == [("finished", 2)]


@pytest.mark.parametrize("level", ["standard", "aggressive"])
def test_presets_run_on_the_default_sft_recipe(level, tmp_path, capsys):
    argv = [
        "--output_dir",
        str(tmp_path / "sft"),
        *TINY,
        "--optimization_level",
        level,
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
    ]
    trainer, _ = recipe_main("sft")(argv)
    printed = capsys.readouterr().out
    assert "activation checkpointing: activation_checkpointing=True" in printed  # applied, not "kept your ...=None"
    assert "packing (bfd, padding-free): refused (curriculum=column" in printed
    assert trainer.args.activation_checkpointing and not trainer.args.packing and trainer.state.global_step == 2
