"""Keep the best N checkpoints by `metric_for_best_model` (`keep_best_checkpoints`).

After each save, the main process ranks the `checkpoint-N` folders of `output_dir` by the evaluation logged at
step N (the run's `log_history`, which a resume restores) and deletes all but:

* the N best (ties: the earlier step, as transformers' own "best" is the first to reach a value),
* the checkpoint just saved, the newest: a resume needs it,
* transformers' `best_model_checkpoint` (what `load_best_model_at_end` loads), should its ranking ever differ,
* folders with a later step than the run's (an earlier, longer run's; the run overwrites them when it gets there).

A checkpoint without an evaluation at its step (a SIGTERM or monitor stop between evaluations) ranks below every
evaluated one, so it goes once a newer checkpoint exists. A folder is renamed to a hidden name before it is
removed, so a kill mid-delete never leaves a `checkpoint-N` that looks resumable; leftovers go at the next save.
transformers' `save_total_limit` rotation (newest N plus the best) runs before this and would delete best
checkpoints first, so the two are not combined (`retention_changes`).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from typing import Any, Optional

from transformers import TrainerCallback
from transformers.utils import logging

from .errors import ConfigError

logger = logging.get_logger(__name__)

__all__ = ["BestCheckpointsCallback", "checkpoints_to_delete", "retention_changes"]

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_DELETING_SUFFIX = ".deleting"


def ranking_metric(args: Any) -> tuple[str, bool]:
    """(log key, greater is better) of `metric_for_best_model`, read as transformers reads it; `eval_loss`
    (lower is better) when it is unset."""
    metric = getattr(args, "metric_for_best_model", None) or "loss"
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    greater = getattr(args, "greater_is_better", None)
    return key, (not metric.endswith("loss")) if greater is None else bool(greater)


def step_scores(log_history: list[dict], key: str) -> dict[int, float]:
    """The finite value of `key` logged at each step (the last one, when a rollback logged a step twice)."""
    scores = {}
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            scores[int(entry.get("step", -1))] = float(value)
    return scores


def checkpoints_to_delete(
    steps: list[int], scores: dict[int, float], keep: int, greater: bool, protected: set[int]
) -> list[int]:
    """The checkpoint steps to delete: all but the `keep` best by `scores` and the `protected` steps."""
    scored = [s for s in steps if s in scores]
    ranked = sorted(scored, key=lambda s: (-scores[s] if greater else scores[s], s))
    kept = set(ranked[:keep]) | protected
    return sorted(s for s in steps if s not in kept)


def retention_changes(args: Any, explicit: Optional[frozenset]) -> tuple[dict[str, Any], list[str]]:
    """How `keep_best_checkpoints` settles with upstream's `save_total_limit`, whose rotation (the newest N plus
    the best) runs first and would delete best checkpoints: a limit that came from a recipe's bundled config is set
    aside (with a report line); one the user set is refused."""
    keep, limit = getattr(args, "keep_best_checkpoints", None), getattr(args, "save_total_limit", None)
    if keep is None or limit is None:
        return {}, []
    if explicit is not None and "save_total_limit" not in explicit:
        line = f"keep_best_checkpoints={keep}: the recipe's save_total_limit={limit} set aside (it keeps the newest)"
        return {"save_total_limit": None}, [line]
    raise ConfigError(
        f"keep_best_checkpoints: save_total_limit={limit} would delete the best checkpoints first (it keeps the "
        "newest); remove save_total_limit (keep_best_checkpoints always keeps the newest checkpoint too)"
    )


class BestCheckpointsCallback(TrainerCallback):
    """Deletes, after each save, the checkpoints `keep_best_checkpoints` does not keep (main process only)."""

    def __init__(self, keep: int):
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return  # only the process that writes checkpoints deletes them
        output_dir = args.output_dir
        if not os.path.isdir(os.path.join(output_dir, f"checkpoint-{state.global_step}")):
            return  # saved elsewhere (a search trial's run folder): nothing here to rank against it
        _remove_leftovers(output_dir)
        key, greater = ranking_metric(args)
        scores = step_scores(state.log_history, key)
        if state.global_step not in scores:
            logger.warning(
                f"keep_best_checkpoints: no {key} logged at step {state.global_step}; checkpoint-"
                f"{state.global_step} ranks below every evaluated checkpoint"
            )
        steps = [int(m.group(1)) for m in map(_CHECKPOINT_RE.match, os.listdir(output_dir)) if m]
        protected = {s for s in steps if s >= state.global_step} | _best_step(state)
        for step in checkpoints_to_delete(steps, scores, self.keep, greater, protected):
            _delete(os.path.join(output_dir, f"checkpoint-{step}"))


def _best_step(state: Any) -> set[int]:
    best = getattr(state, "best_model_checkpoint", None)
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(best))) if best else None
    return {int(match.group(1))} if match else set()


def _delete(checkpoint: str) -> None:
    parent, name = os.path.split(checkpoint)
    doomed = os.path.join(parent, f".{name}{_DELETING_SUFFIX}")
    try:
        os.replace(checkpoint, doomed)  # atomic: resume never sees a half-deleted checkpoint-N
    except OSError as exc:
        logger.warning(f"keep_best_checkpoints: could not remove {checkpoint} ({exc})")
        return
    logger.info(f"keep_best_checkpoints: deleting {checkpoint}")
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(output_dir: str) -> None:
    """Folders a kill left half-deleted (hidden names that resume never reads)."""
    for name in os.listdir(output_dir):
        if name.startswith(".checkpoint-") and name.endswith(_DELETING_SUFFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
