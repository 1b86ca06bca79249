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

import math
import os
from typing import Sequence

from .config.mixture import MixtureEntry, mixture_label, parse_mixture
from .errors import DataError

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

_LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow")


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
