"""Shared stages of the recipes: load data and models (bundled default or Hub), check them, find the checkpoint
to resume from, and report. Each function fails with one clear `HFTrainError` line before any work starts.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Optional, Sequence

from .errors import DataError, HFTrainError, ModelLoadError

__all__ = [
    "run_main",
    "load_dataset_splits",
    "require_columns",
    "load_tokenizer",
    "load_causal_lm",
    "find_resume_checkpoint",
    "greedy_exact_match",
    "is_main_process",
]

SFT_FORMATS = (("messages",), ("conversations",), ("prompt", "completion"), ("text",))


def run_main(main: Callable[[Optional[list[str]]], object]) -> None:
    """Run a recipe's `main()`; an `HFTrainError` becomes one line on stderr and exit status 2, not a traceback."""
    try:
        main(None)
    except HFTrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def is_main_process() -> bool:
    """True on world rank 0 (or when not distributed): the process that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


# -- data ----------------------------------------------------------------------------------------------------
def load_dataset_splits(script_args, bundled: Callable[[], tuple], seed: int = 42):
    """(train, eval) datasets: the bundled default when `dataset_name` is empty, else a Hub id, a directory or a
    data file. Without a test split, `eval_holdout` of train is held out."""
    if not script_args.dataset_name:
        train, evaluation = bundled()
    else:
        splits = _load_named_dataset(script_args)
        train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split
        if train_split not in splits:
            raise DataError(
                f"dataset_train_split: '{train_split}' is not a split of {script_args.dataset_name!r} "
                f"(it has: {', '.join(splits)})"
            )
        train = splits[train_split]
        if test_split in splits:
            evaluation = splits[test_split]
        elif script_args.eval_holdout > 0:
            parts = train.train_test_split(test_size=script_args.eval_holdout, seed=seed)
            train, evaluation = parts["train"], parts["test"]
        else:
            evaluation = None
    if script_args.max_train_samples:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if evaluation is not None and script_args.max_eval_samples:
        evaluation = evaluation.select(range(min(script_args.max_eval_samples, len(evaluation))))
    if len(train) == 0:
        raise DataError(f"dataset_name: the training split of {script_args.dataset_name or 'the bundled data'} is empty")
    return train, evaluation


def _load_named_dataset(script_args):
    import datasets

    name = script_args.dataset_name
    try:
        if os.path.isfile(name):
            extension = os.path.splitext(name)[1].lstrip(".").lower()
            builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "txt": "text"}.get(extension)
            if builder is None:
                raise DataError(f"dataset_name: unsupported file type '.{extension}' (use .json, .jsonl, .csv, .parquet, .txt)")
            return datasets.load_dataset(builder, data_files={script_args.dataset_train_split: name})
        if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_dict.json")):
            return datasets.load_from_disk(name)
        if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_info.json")):
            return datasets.DatasetDict({script_args.dataset_train_split: datasets.load_from_disk(name)})
        return datasets.load_dataset(name, script_args.dataset_config)
    except HFTrainError:
        raise
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError)
        raise DataError(
            f"dataset_name: could not load {name!r}: it is not a local file or directory, and the Hub could not "
            f"provide it ({_first_line(exc)}){_offline_hint()}"
        ) from exc


def require_columns(dataset, alternatives: Sequence[Sequence[str]], what: str) -> tuple[str, ...]:
    """The first group of columns in `alternatives` that `dataset` has; a `DataError` naming them all if none."""
    columns = set(dataset.column_names)
    for group in alternatives:
        if set(group) <= columns:
            return tuple(group)
    wanted = " or ".join("+".join(group) for group in alternatives)
    raise DataError(f"{what}: needs columns {wanted}; the dataset has {', '.join(sorted(columns)) or 'no columns'}")


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

    if not model_args.model_name_or_path:
        return (build_default or build_tiny_causal_lm)(tokenizer)
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    if model_args.dtype:
        kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    except Exception as exc:
        raise _model_error(model_args.model_name_or_path, exc) from exc


def _model_error(name: str, exc: Exception) -> ModelLoadError:
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
def find_resume_checkpoint(training_args) -> Optional[str]:
    """The checkpoint to resume from: `resume_from_checkpoint` when set (it must exist), else the newest complete
    `checkpoint-N` in `output_dir` when `auto_resume` is on, else None."""
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not os.path.isdir(explicit):
            raise HFTrainError(f"resume_from_checkpoint: no such checkpoint directory: {explicit}")
        return explicit
    if not getattr(training_args, "auto_resume", True) or not os.path.isdir(training_args.output_dir):
        return None
    candidates = []
    for name in os.listdir(training_args.output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        path = os.path.join(training_args.output_dir, name)
        # trainer_state.json is written last by Trainer._save_checkpoint: without it the save was cut short.
        if match and os.path.isfile(os.path.join(path, "trainer_state.json")):
            candidates.append((int(match.group(1)), path))
    return max(candidates)[1] if candidates else None


# -- quick check of what the model learned -------------------------------------------------------------------
def greedy_exact_match(model, tokenizer, prompts: Sequence[str], references: Sequence[str], batch_size: int = 64,
                       max_new_tokens: int = 8) -> float:
    """Share of prompts whose greedy continuation (stripped) equals the reference: batched, left-padded."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            with torch.no_grad():
                output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += sum(t.strip() == r.strip() for t, r in zip(texts, references[start:start + batch_size]))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return correct / max(1, len(prompts))
