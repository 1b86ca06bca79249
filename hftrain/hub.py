"""Results out: the model card hftrain writes after training, the run history, and the push to the Hub.

TRL rewrites README.md at every checkpoint with a template that has no eval results (UPSTREAM_NOTES §8), and the
Trainer's own push happens per checkpoint. So a recipe given `--push_to_hub` turns the trainer's pushing off
(`prepare_push`), and after training writes its own card (`hftrain.model_card.write_model_card`) and the run
history (`export_run_history`), and pushes the output directory once (`push_results`). A failed push leaves
everything on disk and says how to retry: `hftrain push OUTPUT_DIR`.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
from typing import Any, Optional

from .errors import ConfigError, HFTrainError
from .model_card import final_and_best_metrics, write_model_card  # the card has a module of its own

__all__ = [
    "check_push_settings",
    "prepare_push",
    "resolve_token",
    "export_run_history",
    "final_and_best_metrics",
    "write_model_card",
    "files_to_push",
    "push_results",
    "PUSH_RECORD",
]

PUSH_RECORD = "hftrain_push.json"  # repo id and options of the push, so `hftrain push OUTPUT_DIR` can retry
# Never uploaded: checkpoints (the final model is at the top level), private files, TensorBoard event files.
EXCLUDE = ("checkpoint-*", "_*", ".*", "runs", PUSH_RECORD, "*.lock")


def resolve_token(explicit: Optional[str] = None) -> Optional[str]:
    """The Hub token: the explicit one, else `HF_TOKEN` / the token `hf auth login` stored."""
    if explicit:
        return explicit
    from huggingface_hub import get_token

    return get_token()


def check_push_settings(args: Any) -> None:
    """With `push_to_hub`, refuse a missing repo id or token at start (nothing trained, nothing written)."""
    if not getattr(args, "push_to_hub", False):
        return
    if not getattr(args, "hub_model_id", None):
        raise ConfigError("push_to_hub: needs --hub_model_id USER_OR_ORG/NAME (the Hub repo to push the results to)")
    if not resolve_token(getattr(args, "hub_token", None)):
        raise ConfigError(
            "push_to_hub: no Hub token; set HF_TOKEN, run `hf auth login`, or pass --hub_token "
            "(the variable is safer: arguments are saved with every checkpoint)"
        )


def prepare_push(training_args: Any) -> Optional[dict]:
    """The push target of a run, or None; turns the trainer's own per-checkpoint pushes and TRL's card off."""
    if not training_args.push_to_hub:
        return None
    target = {
        "repo_id": training_args.hub_model_id,
        "private": training_args.hub_private_repo,
        "revision": getattr(training_args, "hub_revision", None),
        "token": training_args.hub_token,
    }
    training_args.push_to_hub = False  # hftrain pushes once, after its card is written
    return target


# -- run history ---------------------------------------------------------------------------------------------
def export_run_history(trainer: Any, output_dir: str, parent: Optional[dict] = None) -> Optional[str]:
    """Copy the tracker's record of this run (run.json, history.csv) into `output_dir/run_history`; returns the
    folder. Falls back to the trainer's `log_history` without a tracker. `parent`: the hftrain run whose output
    this run started from (`hftrain.tracking.lineage.find_parent_run`), kept in run.json as `parent` (a run that
    starts from this output finds its own parent by the `uuid` there)."""
    folder = os.path.join(output_dir, "run_history")
    run, points = None, None
    try:
        from .tracking.callback import find_tracker
        from .tracking.store import TrackerStore

        tracker = find_tracker(trainer)
        if tracker is not None and tracker.run_id is not None:
            with TrackerStore(tracker.db_path, create=False) as store:
                run, points = store.run_details(tracker.run_id), store.history(tracker.run_id)
    except (ImportError, HFTrainError, OSError):
        run = None  # a tracker problem must not cost the card; log_history below still records the curves
    if run is None:
        points = [
            {"key": k, "step": e.get("step"), "value": v, "epoch": e.get("epoch"), "wall_time": None}
            for e in trainer.state.log_history
            for k, v in e.items()
            if k not in ("step", "epoch") and isinstance(v, (int, float))
        ]
        run = {"source": "trainer_state.log_history (the run was not tracked)"}
    if parent is not None:
        run["parent"] = parent
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "run.json"), "w", encoding="utf-8") as handle:
        json.dump(run, handle, indent=1, default=str)
    with open(os.path.join(folder, "history.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "step", "value", "epoch", "wall_time"])
        writer.writerows([p["key"], p["step"], p["value"], p["epoch"], p["wall_time"]] for p in points)
    return folder


# -- push ----------------------------------------------------------------------------------------------------
def files_to_push(output_dir: str) -> list[str]:
    """The exact files (relative paths, sorted) a push of `output_dir` uploads."""
    chosen = []
    for root, dirs, names in os.walk(output_dir):
        rel_root = os.path.relpath(root, output_dir)
        dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch(d, p) for p in EXCLUDE))
        for name in names:
            if not any(fnmatch.fnmatch(name, p) for p in EXCLUDE):
                chosen.append(os.path.normpath(os.path.join(rel_root, name)))
    return sorted(chosen)


def _record_push(output_dir: str, target: dict) -> None:
    # The token is never written: arguments and records are often shared.
    record = {k: v for k, v in target.items() if k != "token"}
    with open(os.path.join(output_dir, PUSH_RECORD), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)


def push_results(
    output_dir: str,
    repo_id: Optional[str] = None,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    revision: Optional[str] = None,
    commit_message: str = "hftrain: results of training",
) -> str:
    """Upload `files_to_push(output_dir)` to `repo_id` (created if needed); returns the repo URL.

    `repo_id`/`private`/`revision` default to what the run recorded in `hftrain_push.json`. Any failure raises an
    `HFTrainError` that says the local results are intact and how to retry.
    """
    from huggingface_hub import HfApi

    if not os.path.isdir(output_dir):
        raise ConfigError(f"push: no such output directory: {output_dir}")
    record_path = os.path.join(output_dir, PUSH_RECORD)
    record = json.load(open(record_path, encoding="utf-8")) if os.path.isfile(record_path) else {}
    repo_id = repo_id or record.get("repo_id")
    private = record.get("private") if private is None else private
    revision = revision or record.get("revision")
    if not repo_id:
        raise ConfigError(f"push: no repo id; pass --repo_id USER_OR_ORG/NAME (no {PUSH_RECORD} in {output_dir})")
    token = resolve_token(token)
    if not token:
        raise ConfigError("push: no Hub token; set HF_TOKEN, run `hf auth login`, or pass --token")
    _record_push(output_dir, {"repo_id": repo_id, "private": private, "revision": revision})
    files = files_to_push(output_dir)
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=output_dir,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            allow_patterns=files,
            commit_message=commit_message,
        )
    except Exception as exc:  # network, auth, quota: any of them must leave a clear way forward
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise HFTrainError(
            f"push to {repo_id} failed ({type(exc).__name__}: {first}); the results are safe in "
            f"{os.path.abspath(output_dir)}; retry with: hftrain push {output_dir}"
        ) from exc
    return str(url)
