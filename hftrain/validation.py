"""Checks of the datasets a trainer was given, run by hftrain's trainers at construction (before any training).

Each raises `DataError` naming the dataset, the column and the first bad row, and writes nothing. The catalogue
with fixes is in README.md ("Troubleshooting: the bad-input catalogue").
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

from .errors import DataError

__all__ = ["check_training_data", "validate_dataset", "validate_finite", "validate_labels"]


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
        validate_dataset(dataset, name=name)
        validate_labels(dataset, name=name)
        validate_finite(dataset, name=name)
