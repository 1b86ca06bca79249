"""Verifiable rewards for the bundled arithmetic prompts, in TRL's reward-function form.

TRL's GRPO and RLOO call each function with the prompts, the completions and every other dataset column as keyword
lists, and sum the returned scores (weighted by `reward_weights`). The names of the functions are the names TRL
logs (`rewards/answer_reward/mean`) and hftrain writes into the eval samples and the model card.
"""

from __future__ import annotations

import re
from typing import Any, Optional

__all__ = ["answer_reward", "format_reward", "ARITHMETIC_REWARDS"]

_NUMBER = re.compile(r"-?\d+")


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: the assistant turn(s)
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def answer_reward(completions: list, answer: list, **kwargs: Any) -> list[Optional[float]]:
    """1.0 when the completion, stripped, is exactly the reference answer, else 0.0."""
    return [1.0 if _text(c).strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def format_reward(completions: list, **kwargs: Any) -> list[float]:
    """0.1 when the completion is one whole number and nothing else (the answer's format), else 0.0.

    Small next to `answer_reward`, so it shapes the format without paying more than a right answer."""
    return [0.1 if _NUMBER.fullmatch(_text(c).strip()) else 0.0 for c in completions]


ARITHMETIC_REWARDS = (answer_reward, format_reward)
