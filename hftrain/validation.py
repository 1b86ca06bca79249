"""Checks of the datasets a trainer was given, run by hftrain's trainers at construction (before any training).

Each raises `DataError` naming the dataset, the column and the first bad row, and writes nothing. The catalogue
with fixes is in README.md ("Troubleshooting: the bad-input catalogue").
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any, Iterable, Iterator, Mapping, Optional

from .errors import DataError

__all__ = [
    "PREFERENCE_ROWS",
    "SFT_ROWS",
    "check_data_path",
    "check_rows",
    "check_trainer_datasets",
    "check_training_data",
    "row_problem",
    "validate_dataset",
    "validate_finite",
    "validate_labels",
]


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
        raise DataError(
            f"{name}: missing column(s) {', '.join(missing)}; the dataset has {', '.join(present) or 'none'}"
        )


def validate_labels(
    dataset: Any, name: str = "train_dataset", column: str = "labels", ignore_index: int = -100, max_rows: int = 10_000
) -> None:
    """Fail when every label in the first `max_rows` rows is `ignore_index`: the loss would be 0/0 (NaN)."""
    if column not in _columns(dataset):
        return
    rows = dataset[column][:max_rows] if hasattr(dataset, "column_names") else [r[column] for r in dataset][:max_rows]
    for row in rows:
        values = row if isinstance(row, (list, tuple)) else getattr(row, "tolist", lambda: [row])()
        if any(v != ignore_index for v in _flat(values)):
            return
    raise DataError(
        f"{name}: every label in column '{column}' is masked ({ignore_index}) in the {len(rows)} rows "
        "checked, so there is nothing to learn; check the completion/assistant masking and max_length"
    )


def _flat(values: Any) -> Iterable[Any]:
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def validate_finite(
    dataset: Any, columns: Optional[Iterable[str]] = None, name: str = "train_dataset", max_rows: int = 100_000
) -> None:
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
                raise DataError(
                    f"{name}: column '{column}' holds a non-finite value ({bad}) in row {i}; "
                    "drop or fix such rows before training"
                )


def check_training_data(train_dataset: Any, eval_dataset: Any = None) -> None:
    """The checks every hftrain trainer runs on its (prepared) datasets: not empty, some label not masked, no
    NaN/Inf in float columns. Streaming datasets are checked while they stream, by the parent."""
    for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
        if dataset is None or not hasattr(dataset, "column_names") or isinstance(dataset.column_names, dict):
            continue  # absent, a dict of eval sets, or a plain torch Dataset: nothing to read columns from
        if not hasattr(dataset, "__len__"):
            continue  # streaming: the parent (and the curriculum, which needs a length) say what is wrong
        validate_dataset(dataset, name=name)
        validate_labels(dataset, name=name)
        validate_finite(dataset, name=name)


# --- rows: the type of each value a trainer reads ---------------------------------------------------------------
# A kind checks one non-null value and returns what is wrong with it (None when fine). Recipes and hftrain's
# trainers name the columns they read with a kind each; TRL and the tokenizers otherwise fail deep inside a `map`
# with an AttributeError or a bare KeyError.
def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} ({text[:40]}{'...' if len(text) > 40 else ''})"


def _message_problem(value: list) -> Optional[str]:
    if not value:
        return "is an empty list, expected a list of messages"
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            return f"item {i} is {_shown(message)}, expected a message {{role, content}}"
        role, content = ("from", "value") if "from" in message else ("role", "content")
        if not isinstance(message.get(role), str):
            return f"item {i} has no string '{role}'"
        if not isinstance(message.get(content), (str, list)):
            return f"item {i} has no string '{content}' (it is {_shown(message.get(content))})"
    return None


def _kind_text(value: Any) -> Optional[str]:
    return None if isinstance(value, str) else f"is {_shown(value)}, expected a string"


def _kind_messages(value: Any) -> Optional[str]:
    if not isinstance(value, list):
        return f"is {_shown(value)}, expected a list of messages"
    return _message_problem(value)


def _kind_text_or_messages(value: Any) -> Optional[str]:
    if isinstance(value, str):
        return None
    if isinstance(value, list):
        return _message_problem(value)
    return f"is {_shown(value)}, expected a string or a list of messages"


def _kind_scalar(value: Any) -> Optional[str]:
    if isinstance(value, (list, dict, tuple)):
        return f"is {_shown(value)}, expected a single text or number"
    return None


def _kind_ids(value: Any) -> Optional[str]:
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return None
    return f"is {_shown(value)}, expected a list of token ids"


TEXT, MESSAGES, TEXT_OR_MESSAGES, SCALAR, IDS = (
    _kind_text,
    _kind_messages,
    _kind_text_or_messages,
    _kind_scalar,
    _kind_ids,
)
_CONVERSATIONAL = ("prompt", "completion", "chosen", "rejected")

SFT_ROWS: tuple = (
    {"messages": MESSAGES},
    {"conversations": MESSAGES},
    {"prompt": TEXT_OR_MESSAGES, "completion": TEXT_OR_MESSAGES},
    {"text": TEXT},
)
PREFERENCE_ROWS: tuple = (
    {"prompt": TEXT_OR_MESSAGES, "chosen": TEXT_OR_MESSAGES, "rejected": TEXT_OR_MESSAGES},
    {"chosen": TEXT_OR_MESSAGES, "rejected": TEXT_OR_MESSAGES},
)


def row_problem(row: Mapping, kinds: Mapping[str, Any]) -> Optional[str]:
    """What is wrong with one row (`'completion' is null`), or None. Conversational columns must agree: all
    strings or all lists of messages (TRL renders one or the other)."""
    for column, kind in kinds.items():
        value = row.get(column)
        if value is None:
            return f"'{column}' is {'missing' if column not in row else 'null'}"
        problem = kind(value)
        if problem:
            return f"'{column}' {problem}"
    forms = {c: isinstance(row[c], str) for c in kinds if c in _CONVERSATIONAL}
    if len(set(forms.values())) > 1:
        text = [c for c, is_text in forms.items() if is_text]
        lists = [c for c, is_text in forms.items() if not is_text]
        return f"{', '.join(repr(c) for c in text)} is text but {', '.join(repr(c) for c in lists)} a list of messages"
    return None


def pick_format(columns: Iterable[str], formats: Iterable[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The first format whose columns are all in `columns`, or None."""
    present = set(columns)
    return next((f for f in formats if set(f) <= present), None)


def columns_error(name: str, formats: Iterable[Mapping[str, Any]], present: Iterable[str]) -> DataError:
    """The recipes' words for a dataset without the columns a trainer reads."""
    wanted = " or ".join("+".join(f) for f in formats)
    have = ", ".join(sorted(present)) or "no columns"
    return DataError(f"{name}: needs columns {wanted}; the dataset has {have}")


def check_rows(dataset: Any, kinds: Mapping[str, Any], name: str = "train_dataset", batch: int = 1000) -> None:
    """Fail on the first row whose `kinds` columns are null or of the wrong type, naming the row (0-based)."""
    if not hasattr(dataset, "iter") or not hasattr(dataset, "__len__"):
        return  # streaming, or not a datasets.Dataset: checked while it streams, by the parent
    subset = dataset.select_columns([c for c in kinds if c in dataset.column_names])
    for start, rows in enumerate(subset.iter(batch_size=batch)):
        for offset in range(len(next(iter(rows.values()), []))):
            row = {column: values[offset] for column, values in rows.items()}
            problem = row_problem(row, kinds)
            if problem:
                raise DataError(f"{name}: row {start * batch + offset}: {problem}; fix or drop that row")


# --- local data files: what datasets would report as "not found" or decode lazily ----------------------------
DATA_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow")
_TEXT_EXTENSIONS = (".json", ".jsonl", ".csv", ".txt")


def check_data_path(path: str, formats: Iterable[Mapping[str, Any]] = (), name: str = "dataset_name") -> None:
    """Check a local data file, or the data files of a folder, before `datasets` reads it: not empty, UTF-8 text,
    one JSON object per line (JSON Lines), and, when `formats` are given, each JSON row's values. A saved dataset
    (`save_to_disk`) is left to `datasets`."""
    formats = list(formats)
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "dataset_info.json")):
            return
        files = sorted(
            os.path.join(root, f) for root, _, names in os.walk(path) for f in names if f.endswith(DATA_EXTENSIONS)
        )
        if not files:
            raise DataError(
                f"{name}: {path} holds no data files ({', '.join(DATA_EXTENSIONS)}) and no dataset saved with "
                "save_to_disk"
            )
        for file in files:
            _check_data_file(file, formats, name)
        return
    _check_data_file(path, formats, name)


def _check_data_file(path: str, formats: list, name: str) -> None:
    if os.path.getsize(path) == 0:
        raise DataError(f"{name}: {path} is empty (0 bytes)")
    extension = os.path.splitext(path)[1].lower()
    if extension not in _TEXT_EXTENSIONS:
        return
    with open(path, "rb") as handle:
        lines = _decoded_lines(handle, path, name)
        if extension not in (".json", ".jsonl"):
            for _ in lines:  # CSV and plain text: every line must decode
                pass
            return
        first = next(lines, (1, ""))
        if first[1].lstrip().startswith("["):  # one JSON array: parsed whole
            text = first[1] + "".join(line for _, line in lines)
            try:
                rows = [(0, row) for row in json.loads(text)]
            except ValueError as exc:
                raise DataError(f"{name}: {path} is not valid JSON ({exc})") from exc
        else:
            rows = _json_lines(itertools.chain([first], lines), path, name)
        _check_json_rows(path, rows, formats, name)


def _decoded_lines(handle: Any, path: str, name: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary file, read lazily; a line that is not UTF-8 is a `DataError` naming it."""
    for number, raw in enumerate(handle, start=1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{name}: {path} line {number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}); save the file as UTF-8"
            ) from exc


def _json_lines(lines: Iterable[tuple[int, str]], path: str, name: str) -> Iterator[tuple[int, Any]]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            yield number, json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{name}: {path} line {number} is not valid JSON ({exc.msg} at column {exc.colno})"
            ) from exc


def _check_json_rows(path: str, rows: Iterable[tuple[int, Any]], formats: list, name: str) -> None:
    kinds = None
    for index, (line, row) in enumerate(rows):
        where = f"{path} row {index}" + (f" (line {line})" if line else "")
        if not isinstance(row, dict):
            raise DataError(f"{name}: {where} is {_shown(row)}, expected one JSON object per row")
        if not formats:
            continue
        if kinds is None:
            kinds = pick_format(row, formats)
            if kinds is None:
                raise columns_error(name, formats, row)
        problem = row_problem(row, kinds)
        if problem:
            raise DataError(f"{name}: {where}: {problem}; fix or drop that row")


# --- what the drop-in TRL trainers read -------------------------------------------------------------------------
def trainer_formats(trainer_cls: type, args: Any = None) -> Optional[tuple]:
    """The row formats the TRL trainer `trainer_cls` derives from reads (None: any columns; transformers' own
    trainers take what the collator takes). Found by name in the MRO, so this module never imports TRL."""
    upstream = next((c.__name__ for c in trainer_cls.__mro__ if c.__module__.startswith("trl.")), None)
    if (getattr(args, "dataset_kwargs", None) or {}).get("skip_prepare_dataset"):
        return None  # the user prepares the data and the collator: TRL reads no fixed columns
    if upstream == "SFTTrainer":
        text_field = getattr(args, "dataset_text_field", None) or "text"
        return ({"input_ids": IDS}, *SFT_ROWS[:3], {text_field: TEXT})
    if upstream == "DPOTrainer":
        return ({"prompt_ids": IDS, "chosen_ids": IDS, "rejected_ids": IDS}, *PREFERENCE_ROWS)
    return None


def check_trainer_datasets(trainer_cls: type, args: Any, train_dataset: Any, eval_dataset: Any = None) -> None:
    """Before a TRL trainer prepares its datasets: the columns it needs (in the recipes' words) and the type of
    every value it reads, naming the first bad row. Without this TRL fails deep inside a `map` (a bare KeyError)."""
    formats = trainer_formats(trainer_cls, args)
    if formats is None:
        return
    evals = eval_dataset.items() if isinstance(eval_dataset, Mapping) else [("", eval_dataset)]
    named = [("train_dataset", train_dataset)] + [(f"eval_dataset{f'[{k}]' if k else ''}", d) for k, d in evals]
    for name, dataset in named:
        columns = getattr(dataset, "column_names", None)
        if dataset is None or not isinstance(columns, list):
            continue
        kinds = pick_format(columns, formats)
        if kinds is None:
            raise columns_error(name, formats, columns)
        check_rows(dataset, kinds, name)
