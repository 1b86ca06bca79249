"""The bad-input catalogue: checks that recipes and trainers run before any work, each failing with one clear line.

Every function raises `ConfigError` (arguments, tokenizer, output directory) or `DataError` (datasets) naming the
field, the value and what is allowed, and writes nothing. They take plain values, so recipes, trainers and other
hftrain modules (the metrics module, the curriculum) can call them without building a trainer. The catalogue with
fixes is in README.md ("Troubleshooting: the bad-input catalogue").
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

from .errors import ConfigError, DataError

__all__ = [
    "ACTIONS",
    "check_monitor_args",
    "validate_dataset",
    "validate_labels",
    "validate_finite",
    "validate_lengths",
    "validate_tokenizer",
    "validate_generation_metrics",
    "validate_output_dir",
    "run_signature",
]

ACTIONS = ("warn", "skip", "stop", "rollback")
PROMPT_COLUMNS = ("prompt", "messages", "source", "input_ids", "prompt_ids")
# Arguments that decide which sample lands in which step, and model shapes: a checkpoint written with other values
# cannot continue this run. Learning rate, max_steps, logging and saving may change between runs.
# The global batch, not its factors: resuming on another process count with gradient accumulation adjusted to
# keep the same global batch is allowed (see hftrain.batching).
_SIGNATURE_ARGS = ("seed", "data_seed", "train_sampling_strategy")
_SIGNATURE_CONFIG = ("model_type", "vocab_size", "hidden_size", "d_model", "num_hidden_layers", "num_layers",
                     "num_attention_heads", "num_heads", "intermediate_size", "d_ff")


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


def check_monitor_args(args: Any) -> None:
    """Validate the monitor, alert and early-stopping fields of an hftrain arguments object (before any work)."""
    for name in ("monitor_nonfinite_action", "monitor_loss_spike_action", "monitor_grad_explosion_action"):
        _choice(name, getattr(args, name), ACTIONS)
    for name in ("monitor_stall_action", "overfit_action"):
        _choice(name, getattr(args, name), ("warn", "stop"))
    _choice("alert_format", args.alert_format, ("auto", "json", "slack", "discord"))
    for name in ("monitor", "graceful_signals", "signal_exit"):
        if not isinstance(getattr(args, name), bool):
            raise ConfigError(f"{name}: expected true or false, got {getattr(args, name)!r}")
    for name, low in (("monitor_window", 3), ("monitor_min_history", 2), ("monitor_max_skips", 1),
                      ("monitor_stall_logs", 0), ("monitor_max_rollbacks", 0), ("overfit_patience", 0),
                      ("early_stopping_patience", 0), ("alert_retries", 0)):
        value = getattr(args, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name}: expected a whole number >= {low}, got {value!r}")
    if args.monitor_min_history > args.monitor_window:
        raise ConfigError(f"monitor_min_history: expected at most monitor_window ({args.monitor_window}), "
                          f"got {args.monitor_min_history}")
    for name, positive in (("monitor_spike_threshold", True), ("alert_timeout", True), ("overfit_gap", False),
                           ("early_stopping_threshold", False)):
        value = getattr(args, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ConfigError(f"{name}: expected a {'positive' if positive else 'non-negative'} number, got {value!r}")
    if not (0 < args.monitor_rollback_lr_factor <= 1):
        raise ConfigError(f"monitor_rollback_lr_factor: expected a number in (0, 1], got {args.monitor_rollback_lr_factor!r}")
    if args.alert_webhook_url is not None and not str(args.alert_webhook_url).startswith(("http://", "https://")):
        raise ConfigError(f"alert_webhook_url: expected an http:// or https:// URL, got {args.alert_webhook_url!r}")

    save_strategy = str(getattr(args, "save_strategy", "steps"))
    actions = {args.monitor_nonfinite_action, args.monitor_loss_spike_action, args.monitor_grad_explosion_action}
    if "rollback" in actions and save_strategy.endswith("no"):
        raise ConfigError("monitor_*_action: 'rollback' reloads the last checkpoint, but save_strategy is 'no'; "
                          "set save_strategy to steps or epoch, or pick warn, skip or stop")

    if args.early_stopping_patience:
        _check_early_stopping(args)
    elif args.early_stopping_metric is not None or args.early_stopping_mode is not None:
        raise ConfigError("early_stopping_metric / early_stopping_mode: set early_stopping_patience (> 0) to turn "
                          "early stopping on")


def _check_early_stopping(args: Any) -> None:
    if args.early_stopping_mode is not None:
        _choice("early_stopping_mode", args.early_stopping_mode, ("min", "max"))
    if not hasattr(args, "eval_strategy"):
        return  # not a transformers arguments class: the trainer-less caller handles evaluation itself
    if str(args.eval_strategy).endswith("no"):
        raise ConfigError("early_stopping_patience: early stopping needs evaluations, but eval_strategy is 'no'; "
                          "set eval_strategy to steps or epoch")
    metric = args.early_stopping_metric or args.metric_for_best_model or "eval_loss"
    plain = metric[5:] if metric.startswith("eval_") else metric
    best = args.metric_for_best_model
    if best is not None and (best[5:] if best.startswith("eval_") else best) != plain:
        # EarlyStoppingCallback compares against state.best_metric, which tracks metric_for_best_model.
        raise ConfigError(f"early_stopping_metric: {metric!r} differs from metric_for_best_model {best!r}; "
                          "early stopping watches metric_for_best_model, so set them to the same metric")
    if args.early_stopping_mode is not None:
        greater = args.early_stopping_mode == "max"
        if args.greater_is_better is not None and args.greater_is_better != greater:
            raise ConfigError(f"early_stopping_mode: {args.early_stopping_mode!r} contradicts greater_is_better="
                              f"{args.greater_is_better}")
        args.greater_is_better = greater
    args.metric_for_best_model = metric


# --- datasets ---------------------------------------------------------------------------------------------------
def _columns(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        names = next(iter(names.values()), [])
    if names is None and len(dataset):
        first = dataset[0]
        names = list(first) if isinstance(first, Mapping) else []
    return list(names or [])


def validate_dataset(dataset: Any, required_columns: Iterable[str] = (), name: str = "train_dataset") -> None:
    """Fail when `dataset` is missing, empty, or lacks any of `required_columns`."""
    if dataset is None:
        raise DataError(f"{name}: no dataset given")
    try:
        size = len(dataset)
    except TypeError:
        return  # an IterableDataset: size and columns are known only while streaming
    if size == 0:
        raise DataError(f"{name}: the dataset is empty (0 rows); check the split name and any filtering")
    present = _columns(dataset)
    missing = [c for c in required_columns if c not in present]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)}; the dataset has {', '.join(present) or 'none'}")


def validate_labels(dataset: Any, name: str = "train_dataset", column: str = "labels", ignore_index: int = -100,
                    max_rows: int = 10_000) -> None:
    """Fail when every label in the first `max_rows` rows is `ignore_index`: the loss would be 0/0 (NaN)."""
    if column not in _columns(dataset):
        return
    rows = dataset[column][:max_rows] if hasattr(dataset, "column_names") else [r[column] for r in dataset][:max_rows]
    for row in rows:
        values = row if isinstance(row, (list, tuple)) else getattr(row, "tolist", lambda: [row])()
        if any(v != ignore_index for v in _flat(values)):
            return
    raise DataError(f"{name}: every label in column '{column}' is masked ({ignore_index}) in the {len(rows)} rows "
                    "checked, so there is nothing to learn; check the completion/assistant masking and max_length")


def _flat(values: Any) -> Iterable[Any]:
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def validate_finite(dataset: Any, columns: Optional[Iterable[str]] = None, name: str = "train_dataset",
                    max_rows: int = 100_000) -> None:
    """Fail when a float column (or list-of-floats column) holds NaN or Inf; names the column and the first row."""
    features = getattr(dataset, "features", None)
    names = list(columns) if columns is not None else _columns(dataset)
    for column in names:
        if column not in _columns(dataset):
            raise DataError(f"{name}: no column '{column}' to check; the dataset has {', '.join(_columns(dataset))}")
        if features is not None and "float" not in repr(features[column]):
            continue
        for i, value in enumerate(dataset[column][:max_rows]):
            items = _flat(value) if isinstance(value, (list, tuple)) else (value,)
            bad = next((v for v in items if isinstance(v, float) and not math.isfinite(v)), None)
            if bad is not None:
                raise DataError(f"{name}: column '{column}' holds a non-finite value ({bad}) in row {i}; "
                                "drop or fix such rows before training")


def validate_lengths(dataset: Any, max_length: Optional[int], name: str = "train_dataset", column: str = "input_ids",
                     truncation: bool = False) -> None:
    """Fail when truncation is off and a row of `column` is longer than `max_length` (the model's limit)."""
    if truncation or max_length is None or column not in _columns(dataset):
        return
    for i, row in enumerate(dataset[column]):
        if len(row) > max_length:
            raise DataError(f"{name}: row {i} has {len(row)} tokens in '{column}', more than the model allows "
                            f"({max_length}) and truncation is off; turn truncation on (max_length) or drop long rows")


def validate_tokenizer(tokenizer: Any, needs_padding: bool = True, name: str = "processing_class") -> None:
    """Fail when batches need padding and the tokenizer has no pad token."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
    if needs_padding and getattr(tokenizer, "pad_token", None) is None:
        raise ConfigError(f"{name}: the tokenizer has no pad token, and batches of different lengths need one; set "
                          "`tokenizer.pad_token = tokenizer.eos_token` (or add a pad token and resize the embeddings)")


def validate_generation_metrics(metrics: Iterable[str], generation_metrics: Iterable[str], columns: Iterable[str],
                                name: str = "eval_dataset", prompt_columns: Sequence[str] = PROMPT_COLUMNS) -> None:
    """Fail when a metric that needs generated text (`generation_metrics`) is asked for on a dataset without prompts.

    The metrics module passes its own set of generation metrics, so this stays independent of the registry.
    """
    wanted = [m for m in metrics if m in set(generation_metrics)]
    columns = list(columns)
    if wanted and not any(c in columns for c in prompt_columns):
        raise DataError(f"{name}: metric(s) {', '.join(wanted)} generate text from a prompt, but the dataset has no "
                        f"prompt column ({' / '.join(prompt_columns)}); it has {', '.join(columns) or 'none'}")


# --- output directory -------------------------------------------------------------------------------------------
def run_signature(args: Any, model: Any = None) -> dict[str, Any]:
    """The values a checkpoint must share with a run to be resumed by it (batch layout, seeds, model shape)."""
    signature = {k: getattr(args, k, None) for k in _SIGNATURE_ARGS}
    signature = {k: (str(v) if v is not None and not isinstance(v, (int, float, bool)) else v)
                 for k, v in signature.items()}
    world_size = int(getattr(args, "world_size", 1) or 1)
    per_device = int(getattr(args, "per_device_train_batch_size", 1) or 1)
    accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    signature["global_batch_size"] = per_device * accumulation * world_size
    config = getattr(model, "config", None)
    if config is not None:
        for key in _SIGNATURE_CONFIG:
            if getattr(config, key, None) is not None:
                signature[f"model.{key}"] = getattr(config, key)
    return signature


def signature_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: saved -> current` for every key both signatures have and that differs."""
    return [f"{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now"
            for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]


def validate_output_dir(output_dir: str, args: Any, model: Any = None) -> Optional[str]:
    """The checkpoint in `output_dir` to resume from, None when there is none; `ConfigError` when it is another
    run's (its batch layout, seeds or model shape differ: the message lists each difference)."""
    from .resilience import last_valid_checkpoint, saved_signature

    checkpoint = last_valid_checkpoint(output_dir)
    if checkpoint is None:
        return None
    saved = saved_signature(checkpoint)
    differences = signature_differences(saved, run_signature(args, model))
    if differences:
        raise ConfigError(f"output_dir {output_dir}: holds {os.path.basename(checkpoint)} of a run with other "
                          f"arguments ({'; '.join(differences)}); use another output_dir or the same arguments")
    return checkpoint
