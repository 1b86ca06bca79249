"""The `datasets:` mixture setting as configuration: each entry's keys and values parsed and checked purely (no
file or dataset touched), one `ConfigError` naming `datasets[i].key`. Loading, cutting and weighting the parts is
`hftrain.mixtures`."""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..errors import ConfigError

__all__ = ["KEYS", "MixtureEntry", "mixture_label", "parse_mixture"]

KEYS = ("path", "name", "split", "columns", "rows", "fraction", "weight", "test_split")


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
