"""Shared stages of the recipes: load data and models (bundled default or Hub), check them, find the checkpoint
to resume from, and report. Each function fails with one clear `HFTrainError` line before any work starts.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator, Mapping, Optional, Sequence

from .errors import DataError, HFTrainError, ModelLoadError, report_user_error
from .model_card import Headline
from .validation import SFT_ROWS

__all__ = [
    "run_main",
    "load_dataset_splits",
    "require_columns",
    "default_curriculum_only_for_bundled_data",
    "load_tokenizer",
    "load_causal_lm",
    "find_resume_checkpoint",
    "greedy_exact_match",
    "is_main_process",
    "parse_recipe_args",
    "start_run",
    "load_seq2seq_lm",
    "apply_peft",
    "finish_run",
    "finish_diffusion_run",
    "Headline",
    "record_parent_run",
    "push_if_asked",
    "untracked",
]

SFT_FORMATS = tuple(tuple(columns) for columns in SFT_ROWS)
# How long a rank other than 0 waits after a user error before printing it: every rank meets a bad input, and
# the launcher stops the others as soon as rank 0 exits (ranks start seconds apart on a loaded machine).
PEER_GRACE_SECONDS = 60.0


def run_main(main: Callable[[Optional[list[str]]], object]) -> None:
    """Run a recipe's `main()`; an `HFTrainError` becomes one line on stderr and exit status 2, not a traceback.
    After a successful run the process group is destroyed, so no process exits with it still alive.

    Under a multi-process launch every rank meets the same bad input: rank 0 prints the line at once, the others
    wait for the launcher to stop them (it does when rank 0 exits), so one line is printed. An error only another
    rank meets is still printed by it, after `PEER_GRACE_SECONDS`."""
    try:
        main(None)
    except HFTrainError as exc:
        if not is_main_process():
            time.sleep(PEER_GRACE_SECONDS)
        sys.exit(report_user_error(exc))
    end_distributed()


def end_distributed() -> None:
    """Destroy the default process group if one is up. A process that exits with a gloo group alive can abort at
    interpreter shutdown ("terminate called without an active exception", SIGABRT; seen once in CI on a rank that
    had finished cleanly). Called only after success: after an exception another rank may still be inside a
    collective, and destroying then can hang (torchtitan#1342)."""
    distributed = sys.modules.get("torch.distributed")  # never imports torch just to find nothing to do
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def is_main_process() -> bool:
    """True on world rank 0 (or when not distributed): the process that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


# -- data ----------------------------------------------------------------------------------------------------
def load_dataset_splits(script_args, bundled: Callable[[], tuple], seed: int = 42, formats: Sequence[Mapping] = ()):
    """(train, eval) datasets: a mixture when `datasets` is set (`hftrain.mixtures`), else the bundled default when
    `dataset_name` is empty, else a Hub id, a directory or a data file. Without a test split, `eval_holdout` of
    train is held out. `formats`: the column groups the recipe can train on, each column with its kind
    (`hftrain.validation`); a named dataset (each dataset of a mixture) must have one of them, and every row's
    values are checked (the first bad row is named) before anything is split or tokenised."""
    if getattr(script_args, "datasets", None):  # an arguments class of a recipe's own may not have the field
        train, evaluation = _load_mixture(script_args, seed, formats)
    elif not script_args.dataset_name:
        train, evaluation = bundled()
    else:
        train, evaluation = _load_single_dataset(script_args, seed, formats)
    if script_args.max_train_samples:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if evaluation is not None and script_args.max_eval_samples:
        evaluation = evaluation.select(range(min(script_args.max_eval_samples, len(evaluation))))
    if len(train) == 0:
        raise DataError(
            f"dataset_name: the training split of {script_args.dataset_name or 'the bundled data'} is empty"
        )
    return train, evaluation


def _load_single_dataset(script_args, seed: int, formats: Sequence[Mapping]):
    name = script_args.dataset_name
    splits = _load_named_dataset(name, script_args.dataset_config, script_args.dataset_train_split, formats)
    train = _pick_split(splits, script_args.dataset_train_split, name, "dataset_train_split")
    _check_split_rows(name, train, "dataset_name", formats)
    if script_args.dataset_test_split in splits:
        evaluation = splits[script_args.dataset_test_split]
        _check_split_rows(name, evaluation, "dataset_test_split", formats)
        return train, evaluation
    if script_args.eval_holdout > 0:
        parts = train.train_test_split(test_size=script_args.eval_holdout, seed=seed)
        return parts["train"], parts["test"]
    return train, None


def _pick_split(splits, split: str, name: str, what: str):
    if split not in splits:
        raise DataError(f"{what}: '{split}' is not a split of {name!r} (it has: {', '.join(splits)})")
    return splits[split]


def _load_mixture(script_args, seed: int, formats: Sequence[Mapping]):
    """Every entry checked (paths first, then columns and rows), cut and held out, then combined by weight."""
    from .mixtures import combine_parts, describe, looks_local

    entries = script_args.datasets
    for entry in entries:  # every local path before any dataset loads: a typo in the last one fails at once
        if looks_local(entry.path) and not os.path.exists(entry.path):
            raise DataError(f"{entry.label}.path: no such file or folder: {entry.path}")
    trains, evals = zip(*(_load_mixture_entry(entry, script_args.eval_holdout, seed, formats) for entry in entries))
    train, evaluation = combine_parts(entries, trains, evals, seed)
    if is_main_process():
        print(f"[hftrain] {describe(entries, trains, train, evaluation)} (seed {seed})")
    return train, evaluation


def _load_mixture_entry(entry, eval_holdout: float, seed: int, formats: Sequence[Mapping]):
    """(train, eval or None) of one mixture entry: its columns kept/renamed and checked, cut, eval held out."""
    from .mixtures import cut_rows, hold_out, keep_columns

    # its rows are checked once its columns are known: by the names they are trained under (`columns:` renames)
    splits = _load_named_dataset(entry.path, entry.name, entry.split, what=f"{entry.label}.path")
    train = keep_columns(entry, _pick_split(splits, entry.split, entry.path, f"{entry.label}.split"))
    _check_split_rows(entry.path, train, entry.label, formats, entry.source_names)
    train = cut_rows(entry, train)
    if entry.test_split is None:
        return hold_out(entry, train, eval_holdout, seed)
    evaluation = keep_columns(entry, _pick_split(splits, entry.test_split, entry.path, f"{entry.label}.test_split"))
    _check_split_rows(entry.path, evaluation, entry.label, formats, entry.source_names)
    return train, evaluation


def _check_split_rows(
    source: str, split, what: str, formats: Sequence[Mapping], file_names: Optional[Mapping[str, str]] = None
) -> None:
    """Columns and row values of a loaded split of `source`. Local JSON files are checked in the file, not the
    split (`datasets` turns a column of mixed types into JSON values, so their types are only right in the file):
    a single dataset's before loading; a mixture entry's here, by `file_names` (column -> its name in the file)."""
    from .validation import check_data_path, check_rows, columns_error, pick_format

    if not formats:
        return
    kinds = pick_format(split.column_names, formats)
    if kinds is None:
        raise columns_error(f"{what}.columns" if file_names is not None else what, formats, split.column_names)
    if not _is_local_json(source):
        check_rows(split, kinds, what)
    elif file_names is not None:
        check_data_path(source, [{file_names.get(c, c): kind for c, kind in kinds.items()}], what)


def _is_local_json(name: str) -> bool:
    if os.path.isfile(name):
        return name.lower().endswith((".json", ".jsonl"))
    return os.path.isdir(name) and not any(
        os.path.exists(os.path.join(name, f)) for f in ("dataset_dict.json", "dataset_info.json")
    )


def _load_named_dataset(
    name: str, config: Optional[str], train_split: str, formats: Sequence[Mapping] = (), what: str = "dataset_name"
):
    """All splits of a local file or folder (a file is split `train_split`) or of a Hub dataset; `what` names the
    field in errors."""
    import datasets

    from .validation import check_data_path

    if os.path.exists(name):
        check_data_path(name, formats, what)  # empty, not UTF-8, a bad JSON line, a wrong value: before loading
        return _load_local_dataset(name, config, train_split, what)
    try:
        return datasets.load_dataset(name, config)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError)
        raise DataError(
            f"{what}: could not load {name!r}: it is not a local file or directory, and the Hub could not "
            f"provide it ({_first_line(exc)}){_offline_hint()}"
        ) from exc


def _load_local_dataset(name: str, config: Optional[str], train_split: str, what: str):
    import datasets

    try:
        if os.path.isfile(name):
            extension = os.path.splitext(name)[1].lstrip(".").lower()
            builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "txt": "text"}.get(
                extension
            )
            if builder is None:
                raise DataError(
                    f"{what}: unsupported file type '.{extension}' (use .json, .jsonl, .csv, .parquet, .txt)"
                )
            return datasets.load_dataset(builder, data_files={train_split: name})
        if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_dict.json")):
            return datasets.load_from_disk(name)
        if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_info.json")):
            return datasets.DatasetDict({train_split: datasets.load_from_disk(name)})
        return datasets.load_dataset(name, config)
    except HFTrainError:
        raise
    except Exception as exc:  # a local path datasets cannot read: say what it said, not "not found"
        cause = exc.__cause__ or exc.__context__ or exc
        detail = _first_line(cause if type(exc).__name__ == "DatasetGenerationError" else exc)
        raise DataError(f"{what}: {name} exists but could not be read as a dataset ({detail})") from exc


def require_columns(dataset, alternatives: Sequence[Sequence[str]], what: str) -> tuple[str, ...]:
    """The first group of columns in `alternatives` that `dataset` has; a `DataError` naming them all if none."""
    columns = set(dataset.column_names)
    for group in alternatives:
        if set(group) <= columns:
            return tuple(group)
    wanted = " or ".join("+".join(group) for group in alternatives)
    raise DataError(f"{what}: needs columns {wanted}; the dataset has {', '.join(sorted(columns)) or 'no columns'}")


def default_curriculum_only_for_bundled_data(training_args, train_dataset) -> None:
    """The default configs order the bundled data by its `difficulty` column; a named dataset without that column
    trains in random order (said on rank 0). Any other `curriculum_column` the user names must exist (an error)."""
    if (
        getattr(training_args, "curriculum", None) == "column"
        and training_args.curriculum_column == "difficulty"
        and "difficulty" not in train_dataset.column_names
    ):
        training_args.curriculum = None
        if is_main_process():
            print(
                "[hftrain] curriculum off: the dataset has no `difficulty` column (the default config orders the "
                "bundled data by it); set --curriculum_column to a numeric column of yours to order by it"
            )


# -- models --------------------------------------------------------------------------------------------------
def load_tokenizer(model_args):
    """The tokenizer of `model_name_or_path`, or the embedded byte-level one; a pad token is always set."""
    from transformers import AutoTokenizer

    from .builtin import build_tokenizer

    if not model_args.model_name_or_path:
        return build_tokenizer()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
    except Exception as exc:
        raise _model_error(model_args.model_name_or_path, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_args, tokenizer, build_default: Optional[Callable] = None):
    """The causal LM of `model_name_or_path`, or the embedded tiny Llama built from a config."""
    from transformers import AutoModelForCausalLM

    from .builtin import build_tiny_causal_lm

    _check_attention(model_args)
    if not model_args.model_name_or_path:
        if build_default is not None:
            return _with_attention(build_default(tokenizer), model_args)
        heads = max(1, model_args.tiny_hidden_size // 32)
        model = build_tiny_causal_lm(
            tokenizer, hidden_size=model_args.tiny_hidden_size, num_layers=model_args.tiny_num_layers, num_heads=heads
        )
        return _with_attention(model, model_args)
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    if model_args.dtype:
        kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    kwargs.update(_quantization_kwargs(model_args))
    try:
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    except Exception as exc:
        raise _model_error(model_args.model_name_or_path, exc) from exc


def _check_attention(model_args) -> None:
    from .machine import cuda_usable
    from .preflight import check_attn_implementation

    check_attn_implementation(getattr(model_args, "attn_implementation", None), cuda_usable())


def _with_attention(model, model_args):
    """The embedded model with the `attn_implementation` asked for (loading from the Hub passes it to
    `from_pretrained`; a model built in code would otherwise silently keep its default)."""
    name = getattr(model_args, "attn_implementation", None)
    if name and getattr(model.config, "_attn_implementation", None) != name:
        try:
            model.set_attn_implementation(name)
        except (ValueError, ImportError) as exc:
            raise ModelLoadError(f"attn_implementation: {name!r} cannot be used here ({_first_line(exc)})") from exc
    return model


def _model_error(name: str, exc: Exception) -> ModelLoadError:
    if os.path.isdir(name):  # a local folder: say what went wrong with it, not that it was not found
        what = "" if os.path.isfile(os.path.join(name, "config.json")) else " (it has no config.json)"
        return ModelLoadError(f"model_name_or_path: could not load the model in {name}{what}: {_first_line(exc)}")
    return ModelLoadError(
        f"model_name_or_path: could not load {name!r}: not a local directory with a model, and the Hub could not "
        f"provide it ({_first_line(exc)}){_offline_hint()}"
    )


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return "; HF_HUB_OFFLINE=1 is set, so only files already in the local cache can load"
    return "; check the name, your network, and HF_TOKEN for gated or private repos"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# -- resume --------------------------------------------------------------------------------------------------
def reference_scores_in_one_process_only(training_args) -> None:
    """TRL 1.16 precomputes the reference log-probs into a cache file that several processes write and read at once
    (each process then fails in `concatenate_datasets`), so under several processes the frozen reference scores
    each batch as it trains instead; one process keeps the bundled configs' precomputation."""
    if getattr(training_args, "precompute_ref_log_probs", False) and training_args.world_size > 1:
        training_args.precompute_ref_log_probs = False
        if is_main_process():
            print("[hftrain] precompute_ref_log_probs: off under several processes (TRL's cache file is shared)")


def holds_model(path: Optional[str]) -> bool:
    """A folder with a model's config and its weights (a save killed after the config is not a model)."""
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "config.json"))
        and any(os.path.isfile(os.path.join(path, name)) for name in weights)
    )


def start_from_sft_output(model_args, sft_output_dir: Optional[str]) -> None:
    """Without a named model: start from the SFT recipe's output when it holds a model (the preference recipes'
    default), by setting `model_args.model_name_or_path`; else leave the embedded default."""
    if model_args.model_name_or_path or not holds_model(sft_output_dir):
        return
    model_args.model_name_or_path = sft_output_dir
    if is_main_process():
        print(f"[hftrain] starting from the SFT recipe's output: {os.path.abspath(sft_output_dir)}")


def run_recipe_steps(recipe_file: str, flags: list[str], steps: int) -> None:
    """The first `steps` optimizer steps of another recipe's run (its `main(flags)`), as a stage of this one (the
    GRPO recipe's SFT warm-up). The user's `HFTRAIN_<FIELD>` variables are meant for the calling recipe (a GRPO
    `loss_type` would be refused by SFT, a push setting would publish the stage), so the stage runs without them."""
    import runpy

    from transformers import TrainerCallback

    from .config.environment import KEPT_VARIABLES

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = control.should_training_stop or state.global_step >= steps

    env = os.environ
    saved = {k: env.pop(k) for k in list(env) if k.startswith("HFTRAIN_") and k not in KEPT_VARIABLES}
    try:
        runpy.run_path(recipe_file)["main"](flags, callbacks=[StopAt()])
    finally:
        env.update(saved)


def find_resume_checkpoint(training_args, model=None) -> Optional[str]:
    """The checkpoint to resume from (`hftrain.checkpoints.resume_checkpoint`): `resume_from_checkpoint` when set
    (it must be complete), else the newest complete `checkpoint-N` in `output_dir` when `auto_resume` is on (and
    `overwrite_output_dir` off), else None. Then the pre-flight (`hftrain.preflight.check_run`): `output_dir`
    writable with room for a checkpoint of `model`, and no previous run's results replaced unasked. Pass the model
    so a checkpoint of another shape is refused before any work."""
    from .checkpoints import resume_checkpoint
    from .preflight import check_run

    requested = training_args.resume_from_checkpoint
    policy = training_args
    if getattr(training_args, "overwrite_output_dir", False) and not requested:
        policy = _StartingOver(training_args)  # overwrite_output_dir: resume nothing
    checkpoint = resume_checkpoint(policy, model, requested)
    check_run(training_args, model, checkpoint)
    return checkpoint


class _StartingOver:
    """The arguments as the resume policy should read them when the user asked to start over."""

    auto_resume = False

    def __init__(self, args):
        self._args = args

    def __getattr__(self, name: str):
        return getattr(self._args, name)


def train_with_resume(trainer, checkpoint: Optional[str]):
    """Stage 5 of every transformers-based recipe: train, resuming from `checkpoint` when `find_resume_checkpoint`
    found one (said on rank 0), and record the train metrics (log and `train_results.json`). Starting over with
    `overwrite_output_dir`, the previous run's checkpoints are removed first (`preflight.clear_previous_checkpoints`)."""
    from .preflight import clear_previous_checkpoints

    if checkpoint and is_main_process():
        print(f"[hftrain] resuming from {checkpoint}")
    if not checkpoint and trainer.is_world_process_zero():
        for folder in clear_previous_checkpoints(trainer.args):
            print(f"[hftrain] overwrite_output_dir: removed the previous run's {folder}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    return result


# -- quick check of what the model learned -------------------------------------------------------------------
def greedy_exact_match(
    model, tokenizer, prompts: Sequence[str], references: Sequence[str], batch_size: int = 64, max_new_tokens: int = 8
) -> float:
    """Share of prompts whose greedy continuation (stripped) equals the reference: batched, left-padded."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            with torch.no_grad():
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += sum(t.strip() == r.strip() for t, r in zip(texts, references[start : start + batch_size]))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return correct / max(1, len(prompts))


# -- stages shared by every recipe: arguments, start report, LoRA, the end (save, card, push, where) -----------
def parse_recipe_args(argv: Optional[list[str]], dataclass_types: Sequence, default_config: str) -> tuple:
    """Parse YAML + command line into `dataclass_types` (with no `--config`, `default_config` is the base), then
    resolve hftrain's arguments for this machine (`hftrain.launch`: presets, global batch, checks)."""
    from .config import HFTrainArguments, HFTrainParser, ModelArguments
    from .launch import check_launch_environment, resolve_arguments
    from .peft_utils import check_model_arguments

    argv = list(sys.argv[1:] if argv is None else argv)
    check_launch_environment()  # before parsing: transformers' classes import deepspeed under a DeepSpeed launch
    parser = HFTrainParser(tuple(dataclass_types))
    # the bundled config's values are the recipe's defaults, not fields the user named: a preset may change them
    parsed = parser.parse_args_and_config(argv, base_config=default_config)
    for value in parsed:
        if isinstance(value, ModelArguments):
            check_model_arguments(value)  # k-bit loading needs a CUDA GPU: refused before anything loads
            _check_attention(value)  # flash attention's package and GPU, before the tokenizer or model loads
    return tuple(
        resolve_arguments(value, parser.explicit_fields) if isinstance(value, HFTrainArguments) else value
        for value in parsed
    )


def start_run(training_args, model_args=None) -> Optional[dict]:
    """Print the preset's choices and the effective global batch (rank 0); returns the push target, if any,
    with the trainer's own pushes turned off (hftrain pushes once, with its card, at the end)."""
    from .hub import prepare_push
    from .launch import global_batch
    from .machine import world_size_from_env

    if is_main_process():
        for line in getattr(training_args, "hftrain_preset_report", []):
            print(f"[hftrain] {line}")
        world = world_size_from_env()
        print(
            f"[hftrain] effective batch size {global_batch(training_args, world)} = "
            f"{training_args.per_device_train_batch_size} per device x {training_args.gradient_accumulation_steps} "
            f"accumulation x {world} process(es)"
            + (f" (global_batch_size={training_args.global_batch_size})" if training_args.global_batch_size else "")
        )
        if model_args is not None and model_args.use_peft:
            quant = (
                " on 4-bit weights (QLoRA)"
                if model_args.load_in_4bit
                else " on 8-bit weights"
                if model_args.load_in_8bit
                else ""
            )
            print(
                f"[hftrain] LoRA r={model_args.lora_r} alpha={model_args.lora_alpha} dropout={model_args.lora_dropout} "
                f"targets={' '.join(model_args.lora_target_modules) or 'all-linear'}{quant}"
            )
    return prepare_push(training_args)


def _quantization_kwargs(model_args) -> dict:
    from .peft_utils import quantization_config

    config = quantization_config(model_args)
    return {} if config is None else {"quantization_config": config}


def load_seq2seq_lm(model_args, tokenizer):
    """The encoder-decoder of `model_name_or_path` (e.g. a T5), or the embedded tiny T5 built from a config."""
    from transformers import AutoModelForSeq2SeqLM

    from .builtin import build_tiny_seq2seq

    _check_attention(model_args)
    if not model_args.model_name_or_path:
        model = build_tiny_seq2seq(
            tokenizer, d_model=min(64, model_args.tiny_hidden_size), num_layers=model_args.tiny_num_layers
        )
        return _with_attention(model, model_args)
    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
        **_quantization_kwargs(model_args),
    }
    if model_args.dtype:
        kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    except Exception as exc:
        raise _model_error(model_args.model_name_or_path, exc) from exc


def apply_peft(model, model_args, training_args, task_type: str = "CAUSAL_LM"):
    """The model with a LoRA adapter when `use_peft` is set (peft's get_peft_model), else unchanged."""
    from .peft_utils import apply_lora

    model = apply_lora(model, model_args, task_type=task_type, training_args=training_args)
    if model_args.use_peft and is_main_process():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(f"[hftrain] LoRA adapter: {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})")
    return model


def finish_run(
    trainer,
    *,
    model_args,
    recipe: str,
    dataset: str,
    task: str,
    push_target: Optional[dict],
    evaluate: bool = True,
    headline: Optional[Headline] = None,
) -> dict:
    """Save the model (or adapter) and tokenizer, evaluate, measure the recipe's `headline` metric (its `value` is
    set), merge the adapter if asked, record the run this one started from, export the run history, write hftrain's
    model card, push when asked, and print where everything is. Returns the eval metrics."""
    from .model_card import write_model_card
    from .peft_utils import merge_and_save

    args = trainer.args
    output_dir = args.output_dir
    trainer.save_model(output_dir)
    trainer.save_state()
    metrics: dict = {}
    if evaluate and trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if headline is not None:
        headline.resolve(metrics)  # on every process: a measurement may generate, as the one before training did
    if not trainer.is_world_process_zero():
        return metrics
    # the card first: it counts the adapter's parameters, which merging folds away
    merging = model_args.merge_adapter and hasattr(trainer.model, "merge_and_unload")
    parent, history = _lineage_and_history(trainer, model_args, output_dir)
    card = write_model_card(
        trainer,
        output_dir,
        recipe=recipe,
        dataset=dataset,
        task=task,
        model_args=model_args,
        final_metrics=metrics or None,
        history_dir=history,
        repo_id=push_target["repo_id"] if push_target else None,
        headline=headline,
        parent=parent,
        merged_dir=os.path.join(output_dir, "merged") if merging else None,
    )
    merged = merge_and_save(trainer.model, trainer.processing_class, output_dir) if merging else None
    print(f"[hftrain] model and tokenizer saved to {os.path.abspath(output_dir)}")
    if merged:
        print(f"[hftrain] merged model (adapter folded in): {os.path.abspath(merged)}")
    print(f"[hftrain] metrics: {os.path.abspath(os.path.join(output_dir, 'all_results.json'))}")
    print(f"[hftrain] model card: {os.path.abspath(card)}")
    _print_run_record(trainer, history, parent)
    push_if_asked(output_dir, push_target)
    return metrics


def finish_diffusion_run(
    trainer, output_dir: str, *, model_args, dataset: str, metrics: dict, push_target: Optional[dict], headline=None
) -> str:
    """The diffusion recipe's end on rank 0, after its pipeline is saved: record the run it started from, export
    the run history, write the card (with the last sample grid), push when asked. Returns the card's path."""
    from .model_card import write_diffusion_card

    if headline is not None:
        headline.resolve(metrics)
    parent, history = _lineage_and_history(trainer, model_args, output_dir)
    card = write_diffusion_card(
        trainer,
        output_dir,
        dataset=dataset,
        model_args=model_args,
        final_metrics=metrics,
        history_dir=history,
        repo_id=push_target["repo_id"] if push_target else None,
        headline=headline,
        parent=parent,
    )
    _print_run_record(trainer, history, parent)
    push_if_asked(output_dir, push_target)
    return card


def _lineage_and_history(trainer, model_args, output_dir: str) -> tuple[Optional[dict], Optional[str]]:
    from .hub import export_run_history

    parent = record_parent_run(trainer, getattr(model_args, "model_name_or_path", None))
    return parent, export_run_history(trainer, output_dir, parent)


def record_parent_run(trainer, starting_path: Optional[str]) -> Optional[dict]:
    """The hftrain run whose output folder `starting_path` is (`hftrain.tracking.lineage.find_parent_run`), or
    None; recorded in this run's tracker tags. The tracker already tagged the folder the model was loaded from when
    the run began; this names the folder the recipe was given, which differs for an adapter (a model loaded from an
    adapter folder reports its base's folder)."""
    try:
        from .tracking.callback import find_tracker
        from .tracking.lineage import find_parent_run, parent_tags
        from .tracking.store import TrackerStore
    except ImportError:
        return None
    tracker = find_tracker(trainer)
    db_path = tracker.db_path if tracker is not None else None
    parent = find_parent_run(starting_path, db_path)
    if parent is None or (tracker is not None and parent["uuid"] == tracker.run_uuid):
        return None
    if tracker is not None and tracker.run_id is not None:
        try:
            with TrackerStore(db_path, create=False) as store:
                store.set_tags(tracker.run_id, parent_tags(starting_path, db_path, tracker.run_uuid))
        except (HFTrainError, OSError) as exc:  # the card and run history still name the parent
            print(f"[hftrain] warning: could not record the parent run in {db_path} ({exc})", file=sys.stderr)
    return parent


def push_if_asked(output_dir: str, push_target: Optional[dict]) -> None:
    """Upload `output_dir` when the run asked for it (rank 0). A failed upload is reported with the retry command,
    never raised: the local results are complete and nothing is lost."""
    from .hub import push_results

    if not push_target:
        return
    try:
        url = push_results(
            output_dir,
            repo_id=push_target["repo_id"],
            token=push_target["token"],
            private=push_target["private"],
            revision=push_target["revision"],
        )
        print(f"[hftrain] pushed to {url}")
    except HFTrainError as exc:
        print(f"[hftrain] error: {exc}", file=sys.stderr)


@contextlib.contextmanager
def untracked(trainer) -> Iterator[None]:
    """Run something (an evaluation before training) without the tracker recording it as a run of its own: an
    `evaluate()` outside `train()` is otherwise a finished 0-step run beside the real one."""
    try:
        from .tracking.callback import TrackerCallback
    except ImportError:
        yield
        return
    handler = trainer.callback_handler
    trackers = [(i, cb) for i, cb in enumerate(handler.callbacks) if isinstance(cb, TrackerCallback)]
    for _, tracker in trackers:
        handler.callbacks.remove(tracker)
    try:
        yield
    finally:
        for index, tracker in trackers:
            handler.callbacks.insert(index, tracker)


def _print_run_record(trainer, history: Optional[str], parent: Optional[dict] = None) -> None:
    try:
        from .tracking.callback import find_tracker

        tracker = find_tracker(trainer)
    except ImportError:
        tracker = None
    if tracker is not None and tracker.run_uuid:
        print(
            f"[hftrain] run record: {tracker.db_path} (run {tracker.run_uuid[:8]}; `hftrain runs show "
            f"{tracker.run_uuid[:8]}`)"
        )
    if parent:
        print(
            f"[hftrain] started from {parent['path']}: the output of run {parent['uuid'][:8]} ({parent.get('name')}, "
            f"experiment {parent.get('experiment')})"
        )
    if history:
        print(f"[hftrain] run history: {os.path.abspath(history)}")
