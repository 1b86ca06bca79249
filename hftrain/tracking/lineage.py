"""Lineage: which hftrain run produced the folder a new run starts from.

A run's output folder says who made it in `run_history/run.json` (written at the end of every recipe run); a folder
whose run never got that far (a checkpoint of an interrupted run) is found in the tracker database by its
`output_dir`. A `checkpoint-N` or `merged` folder belongs to the run of the folder above it. Standard library and
the tracker store only: `hftrain runs show` uses it too.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from typing import Any, Optional

from ..errors import TrackerError
from .store import TrackerStore, default_db_path

__all__ = ["PARENT_TAG", "PARENT_PATH_TAG", "find_parent_run", "parent_tags", "run_folder"]

PARENT_TAG = "parent_run"  # tag holding the parent run's uuid
PARENT_PATH_TAG = "parent_path"  # tag holding the folder the run started from
_INSIDE_A_RUN = re.compile(r"^(checkpoint-\d+|merged)$")


def run_folder(path: str) -> str:
    """The output folder of the run that wrote `path`: the folder above a `checkpoint-N` or `merged` folder, else
    `path` itself (absolute)."""
    folder = os.path.abspath(path)
    return os.path.dirname(folder) if _INSIDE_A_RUN.match(os.path.basename(folder)) else folder


def find_parent_run(path: Optional[str], db_path: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The hftrain run whose output `path` is, as `{uuid, id, name, experiment, output_dir, path, found_in}`, or
    None (not a local folder, or no record of a run that wrote it). `db_path`: the tracker database to search
    when the folder has no `run_history` (default: `$HFTRAIN_TRACKER_DB` or `~/.cache/hftrain/runs.db`)."""
    if not path or not os.path.isdir(path):
        return None
    folder = run_folder(path)
    if os.path.isfile(os.path.join(folder, "run_history", "run.json")):  # the folder's own record of its last run:
        found = _from_run_history(folder)  # an untracked run (no uuid) wrote it last, not an older tracked one
    else:
        found = _from_tracker(folder, db_path or default_db_path())
    if found is not None:
        found["path"] = os.path.abspath(path)
    return found


def parent_tags(path: Optional[str], db_path: Optional[str] = None, own_uuid: Optional[str] = None) -> dict:
    """The tracker tags naming the parent of a run started from `path` (empty when there is none, or when the
    run found is `own_uuid`: a run does not descend from itself)."""
    parent = find_parent_run(path, db_path)
    if parent is None or parent["uuid"] == own_uuid:
        return {}
    return {PARENT_TAG: parent["uuid"], PARENT_PATH_TAG: parent["path"]}


def _from_run_history(folder: str) -> Optional[dict[str, Any]]:
    try:
        with open(os.path.join(folder, "run_history", "run.json"), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("uuid"):  # an untracked run records its curves only
        return None
    keys = ("uuid", "id", "name", "experiment", "output_dir")
    return {**{k: record.get(k) for k in keys}, "found_in": os.path.join(folder, "run_history", "run.json")}


def _from_tracker(folder: str, db_path: str) -> Optional[dict[str, Any]]:
    """The newest run recorded with `folder` as its output_dir (a finished one first)."""
    if not os.path.isfile(db_path):
        return None
    try:
        with TrackerStore(db_path, create=False) as store:
            ids = [r[0] for r in store.conn.execute("SELECT id FROM runs WHERE output_dir = ?", (folder,))]
            runs = store.runs(run_ids=ids) if ids else []
    except (TrackerError, sqlite3.Error, OSError):
        return None  # an unreadable database only costs the lineage, never the run
    if not runs:
        return None
    run = next((r for r in runs if r["status"] == "finished"), runs[0])
    keys = ("uuid", "id", "name", "experiment", "output_dir")
    return {**{k: run[k] for k in keys}, "found_in": os.path.abspath(db_path)}
