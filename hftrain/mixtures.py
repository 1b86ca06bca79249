"""Dataset mixtures: several datasets, each cut to a number or a share of its rows and weighted, trained as one.

A recipe's `datasets:` list (YAML, or `--datasets` with the same list as JSON) replaces `dataset_name`. Each entry
is loaded and checked like a single dataset (`hftrain.recipe_utils.load_dataset_splits`); this module holds what
is particular to a mixture, all of it pure except the `datasets` operations it composes (`select_columns`,
`rename_columns`, `select`, `train_test_split`, `concatenate_datasets`, `shuffle`):

1. parse: every entry's keys and values (`parse_mixture`), one `ConfigError` naming `datasets[i].key`;
2. per entry: keep/rename `columns`, cut to the first `rows` or `fraction` of them, hold out the eval rows
   (`test_split`, else `eval_holdout` of the cut), before anything is repeated so no eval row is trained on;
3. combine: with weights, each part is resampled to its weight's share of the parts' total (down: a seeded random
   subset; up: every row repeated, then a seeded random subset for the remainder); without, the parts are
   concatenated as cut. The result is shuffled with the seed, so a seed gives the same rows and order everywhere.

TRL's `get_dataset`/`DatasetMixtureConfig` (same key names for `path`, `name`, `split`, `columns`) loads, selects
columns and concatenates; its `fraction` is a share of the mixture (this module's `weight`), it cannot rename,
check rows, weight up or hold out per dataset, and importing it would load TRL in the recipes that never use it.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .errors import ConfigError, DataError

__all__ = [
    "MixtureEntry",
    "combine_parts",
    "cut_rows",
    "describe",
    "hold_out",
    "keep_columns",
    "looks_local",
    "mixture_label",
    "parse_mixture",
    "resample",
    "weighted_counts",
]

KEYS = ("path", "name", "split", "columns", "rows", "fraction", "weight", "test_split")
_LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow")


@dataclass(frozen=True)
class MixtureEntry:
    """One dataset of a mixture, as parsed from `datasets[index]`."""

    index: int
    path: str
    name: Optional[str] = None
    split: str = "train"
    columns: Optional[tuple[tuple[str, str], ...]] = None  # (column in the data, column trained on), in order
    rows: Optional[int] = None
    fraction: Optional[float] = None
    weight: Optional[float] = None
    test_split: Optional[str] = None

    @property
    def label(self) -> str:
        return f"datasets[{self.index}]"

    @property
    def source_names(self) -> dict[str, str]:
        """Column trained on -> its name in the data (the data files' rows are checked by their own names)."""
        return {target: source for source, target in self.columns or ()}


# -- parsing ----------------------------------------------------------------------------------------------------
def parse_mixture(value: Any) -> tuple[MixtureEntry, ...]:
    """The entries of a `datasets` value: a list from YAML, a JSON (or YAML flow) list from the command line, or
    entries already parsed. A bare string entry is a `path`. Raises `ConfigError` naming `datasets[i].key`."""
    if isinstance(value, str):
        import yaml  # JSON is YAML: `--datasets '[{"path": "a.jsonl"}]'` and `'[{path: a.jsonl}]'` both read

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"datasets: not a JSON list of datasets ({detail})") from exc
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(
            f"datasets: expected a non-empty list of datasets (mappings with at least `path`), got {value!r}"
        )
    entries = tuple(raw if isinstance(raw, MixtureEntry) else _parse_entry(i, raw) for i, raw in enumerate(value))
    weighted = [entry.weight is not None for entry in entries]
    if any(weighted) and not all(weighted):
        missing = entries[weighted.index(False)]
        raise ConfigError(
            f"{missing.label}.weight: missing; give every entry a weight, or none (the datasets are then "
            "concatenated as they are)"
        )
    return entries


def _parse_entry(index: int, raw: Any) -> MixtureEntry:
    label = f"datasets[{index}]"
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a mapping with at least `path`, got {raw!r}")
    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{label}.{key}: unknown key{hint}; an entry takes {', '.join(KEYS)}")
    if not raw.get("path"):
        raise ConfigError(f"{label}.path: required (a Hub dataset id, or a local data file or folder)")
    fields = {key: _text(label, key, raw.get(key)) for key in ("path", "name", "split", "test_split")}
    fields["split"] = fields["split"] or "train"
    if fields["test_split"] == fields["split"]:
        raise ConfigError(f"{label}.test_split: '{fields['split']}' is also the training split; name another split")
    if raw.get("rows") is not None and raw.get("fraction") is not None:
        raise ConfigError(f"{label}.fraction: give rows or fraction, not both")
    return MixtureEntry(
        index=index,
        columns=_columns(label, raw.get("columns")),
        rows=_rows(label, raw.get("rows")),
        fraction=_share(label, "fraction", raw.get("fraction"), upper=1.0),
        weight=_share(label, "weight", raw.get("weight"), upper=math.inf),
        **fields,
    )


def _text(label: str, key: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{label}.{key}: expected a non-empty string, got {value!r}")
    return value


def _columns(label: str, value: Any) -> Optional[tuple[tuple[str, str], ...]]:
    """A list keeps those columns; a mapping {in the data: trained on} keeps and renames them."""
    if value is None:
        return None
    pairs = (
        list(value.items()) if isinstance(value, dict) else [(c, c) for c in value] if isinstance(value, list) else []
    )
    if not pairs or not all(isinstance(n, str) and n for pair in pairs for n in pair):
        raise ConfigError(
            f"{label}.columns: expected a list of column names to keep, or a mapping of column: new name, got {value!r}"
        )
    for side, names in (("", [s for s, _ in pairs]), (" as a new name", [t for _, t in pairs])):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{label}.columns: {', '.join(map(repr, repeated))} appears twice{side}")
    return tuple(pairs)


def _rows(label: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{label}.rows: expected a positive whole number of rows, got {value!r}")
    return value


def _share(label: str, key: str, value: Any, upper: float) -> Optional[float]:
    if value is None:
        return None
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value)  # a string too: YAML reads `1e-1` (no dot) as text
        except (TypeError, ValueError):
            pass
    if number is None or not 0 < number <= upper or math.isinf(number):
        allowed = "a share with 0 < fraction <= 1" if upper == 1.0 else "a positive number (relative to the others)"
        raise ConfigError(f"{label}.{key}: expected {allowed}, got {value!r}")
    return number


def mixture_label(entries: Sequence[MixtureEntry]) -> str:
    """What a mixture is called where a dataset's name goes (the model card, the recipes' 'named dataset' test)."""
    names = [os.path.basename(e.path.rstrip("/")) if os.path.exists(e.path) else e.path for e in entries]
    return f"mixture({', '.join(names)})"


def looks_local(path: str) -> bool:
    """A path meant as a local file or folder (so a missing one is 'no such file', not a Hub lookup)."""
    return path.lower().endswith(_LOCAL_SUFFIXES) or path.startswith(("/", "./", "../", "~"))


# -- one entry ---------------------------------------------------------------------------------------------------
def keep_columns(entry: MixtureEntry, split):
    """`split` with only the entry's `columns`, renamed as asked (all columns when it names none)."""
    if entry.columns is None:
        return split
    missing = [source for source, _ in entry.columns if source not in split.column_names]
    if missing:
        raise DataError(
            f"{entry.label}.columns: {', '.join(map(repr, missing))} is not a column of {entry.path} "
            f"(it has: {', '.join(split.column_names)})"
        )
    kept = split.select_columns([source for source, _ in entry.columns])
    renames = {source: target for source, target in entry.columns if source != target}
    return kept.rename_columns(renames) if renames else kept


def cut_rows(entry: MixtureEntry, split):
    """The first `rows` rows, or the first `fraction` of them (the data's order, as `max_train_samples`)."""
    total = len(split)
    if total == 0:
        raise DataError(f"{entry.label}.split: the '{entry.split}' split of {entry.path} is empty")
    if entry.rows is not None and entry.rows > total:
        raise DataError(
            f"{entry.label}.rows: {entry.rows} asked, but {entry.path} has {total} rows in '{entry.split}' "
            "(use weight to repeat a dataset)"
        )
    keep = entry.rows if entry.rows is not None else round(total * entry.fraction) if entry.fraction else total
    if keep == 0:
        raise DataError(f"{entry.label}.fraction: {entry.fraction} of {total} rows keeps none; raise it")
    return split if keep == total else split.select(range(keep))


def hold_out(entry: MixtureEntry, split, share: float, seed: int) -> tuple:
    """(train, eval) of one entry without a `test_split`: `share` of its rows held out (seeded), or no eval."""
    if share <= 0:
        return split, None
    if len(split) < 2 or math.ceil(share * len(split)) >= len(split):
        raise DataError(
            f"{entry.label}: {len(split)} row(s) are too few to hold out eval_holdout={share} of them; add rows, "
            "give the entry a test_split, or set eval_holdout to 0"
        )
    parts = split.train_test_split(test_size=share, seed=seed)
    return parts["train"], parts["test"]


# -- the mixture -------------------------------------------------------------------------------------------------
def weighted_counts(entries: Sequence[MixtureEntry], sizes: Sequence[int]) -> list[int]:
    """Rows each part contributes: its own size without weights; with weights, its weight's share of the parts'
    total (the mixture keeps the size of its parts), rounded half up."""
    if entries[0].weight is None:
        return list(sizes)
    total, weights = sum(sizes), sum(entry.weight for entry in entries)
    counts = [math.floor(total * entry.weight / weights + 0.5) for entry in entries]
    for entry, count in zip(entries, counts):
        if count == 0:
            raise DataError(
                f"{entry.label}.weight: {entry.weight} of a total weight {weights:g} gives it no rows of the "
                f"{total}-row mixture; raise its weight"
            )
    return counts


def resample(split, count: int, seed: Sequence[int]):
    """`count` rows of `split`: all of them `count // len` times, then a seeded random subset for the remainder."""
    import numpy as np

    if count == len(split):
        return split
    repeats, rest = divmod(count, len(split))
    rng = np.random.default_rng(list(seed))
    indices = np.concatenate([np.tile(np.arange(len(split)), repeats), rng.permutation(len(split))[:rest]])
    return split.select(indices)


def combine_parts(entries: Sequence[MixtureEntry], trains: Sequence, evals: Sequence, seed: int) -> tuple:
    """(train, eval or None): the train parts resampled to their weights, concatenated and shuffled with `seed`;
    the eval parts (not reweighted) concatenated and shuffled. Parts must share their columns (a `DataError`
    naming the entry that differs); their types are cast to the first part's when they can be."""
    import datasets

    first = trains[0]
    trains = [_aligned(entry, part, entries[0], first) for entry, part in zip(entries, trains)]
    counts = weighted_counts(entries, [len(part) for part in trains])
    parts = [resample(part, count, (seed, entry.index)) for entry, part, count in zip(entries, trains, counts)]
    train = datasets.concatenate_datasets(parts).shuffle(seed=seed)
    held = [_aligned(entry, part, entries[0], first) for entry, part in zip(entries, evals) if part is not None]
    evaluation = datasets.concatenate_datasets(held).shuffle(seed=seed) if held else None
    return train, evaluation


def _aligned(entry: MixtureEntry, part, first_entry: MixtureEntry, first):
    if set(part.column_names) != set(first.column_names):
        raise DataError(
            f"{entry.label}.columns: its columns ({', '.join(sorted(part.column_names))}) differ from "
            f"{first_entry.label}'s ({', '.join(sorted(first.column_names))}); give every entry the same columns "
            "with `columns:` (a list keeps, a mapping renames)"
        )
    part = part.select_columns(first.column_names)  # one column order: `cast` and the concatenation expect it
    if part.features == first.features:
        return part
    try:
        return part.cast(first.features)
    except (ValueError, TypeError) as exc:
        column = next(c for c in first.column_names if part.features[c] != first.features[c])
        raise DataError(
            f"{entry.label}: column '{column}' holds {part.features[column]} but {first_entry.label}'s holds "
            f"{first.features[column]}; make them the same kind (text, or lists of messages)"
        ) from exc


def describe(entries: Sequence[MixtureEntry], trains: Sequence, train, evaluation) -> str:
    """One line for the log: what each dataset gave the mixture."""
    counts = weighted_counts(entries, [len(part) for part in trains])
    parts = [
        f"{os.path.basename(e.path.rstrip('/')) or e.path} {count} rows"
        + (f" (weight {e.weight:g}, from {len(part)})" if e.weight is not None else "")
        for e, part, count in zip(entries, trains, counts)
    ]
    held = f"; {len(evaluation)} eval rows" if evaluation is not None else "; no eval rows"
    return f"dataset mixture: {' + '.join(parts)} = {len(train)} training rows{held}"
