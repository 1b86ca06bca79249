"""Checkpoint retention by quality (`keep_best_checkpoints`), a settings group of `HFTrainArguments`.

transformers' `save_total_limit` keeps the newest N checkpoints plus the best one; this group keeps the N best by
`metric_for_best_model` (plus the newest, which a resume needs). The checks here are pure, like every group's; the
combination with `save_total_limit`, which depends on whether the user named it, is settled by
`hftrain.launch.resolve_arguments` (see `hftrain.retention.retention_changes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ConfigError

__all__ = ["RetentionArguments"]


@dataclass(kw_only=True)
class RetentionArguments:
    """Which checkpoints stay in `output_dir` (`hftrain.retention`)."""

    keep_best_checkpoints: Optional[int] = field(
        default=None,
        metadata={
            "help": "Keep the N best checkpoints by `metric_for_best_model` (default `eval_loss`, lower is better), "
            "plus the newest (a resume needs it), and delete the others after each save. Needs an evaluation at "
            "every save; replaces `save_total_limit`. None: off (upstream's rotation)."
        },
    )

    def _check_retention(self) -> None:
        keep = self.keep_best_checkpoints
        if keep is None:
            return
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ConfigError(f"keep_best_checkpoints: expected a whole number >= 1 or None, got {keep!r}")
        save, evaluate = (
            _strategy(getattr(self, "save_strategy", "steps")),
            _strategy(getattr(self, "eval_strategy", "steps")),
        )
        if save == "no":
            raise ConfigError("keep_best_checkpoints: save_strategy is 'no', so there are no checkpoints to keep")
        if evaluate == "no":
            raise ConfigError(
                "keep_best_checkpoints: checkpoints are ranked by their evaluation, but eval_strategy is 'no'; "
                "set eval_strategy to the save_strategy"
            )
        if save != "best" and save != evaluate:
            raise ConfigError(
                f"keep_best_checkpoints: each checkpoint needs an evaluation at its step, but save_strategy is "
                f"{save!r} and eval_strategy {evaluate!r}; use the same strategy for both"
            )
        if save == "steps":
            _check_aligned_steps(self)


def _check_aligned_steps(args: Any) -> None:
    """save_steps must be a multiple of eval_steps (None: logging_steps), or a checkpoint would have no metric."""
    save_steps = getattr(args, "save_steps", None)
    eval_steps = getattr(args, "eval_steps", None)
    eval_steps = getattr(args, "logging_steps", None) if eval_steps is None else eval_steps
    whole = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 for v in (save_steps, eval_steps))
    if whole and save_steps % eval_steps:
        raise ConfigError(
            f"keep_best_checkpoints: save_steps ({save_steps:g}) is not a multiple of eval_steps ({eval_steps:g}), "
            "so some checkpoints would have no evaluation to rank them by; make save_steps a multiple of eval_steps"
        )


def _strategy(value: Any) -> str:
    return str(getattr(value, "value", value))
