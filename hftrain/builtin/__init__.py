"""Embedded defaults: a tokenizer and tiny models built in code, and datasets generated from a seed.

Nothing here touches the network, so the recipes and tests run offline on any machine.
"""

from .data import arithmetic_splits, number_spelling_splits, preference_splits, spell_number
from .models import build_tiny_causal_lm, build_tiny_reward_model, build_tiny_seq2seq
from .rewards import ARITHMETIC_REWARDS, answer_reward, format_reward
from .tokenizer import build_tokenizer

__all__ = [
    "ARITHMETIC_REWARDS",
    "answer_reward",
    "arithmetic_splits",
    "build_tiny_causal_lm",
    "build_tiny_reward_model",
    "build_tiny_seq2seq",
    "build_tokenizer",
    "format_reward",
    "number_spelling_splits",
    "preference_splits",
    "spell_number",
]
