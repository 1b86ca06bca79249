"""Bundled datasets, generated deterministically from a seed (no download, same rows on every machine).

* arithmetic: `prompt`/`completion` pairs such as `"23+45="` → `"68"`, with a `difficulty` column (1-4), or
  `prompt`/`answer` for RL trainers (GRPO drops a column named `completion` before its reward functions see it);
* preferences built from them: `chosen` is the right answer, `rejected` a plausible wrong one;
* number spelling (text-to-text): `"spell: 407"` → `"four hundred seven"`.

Train and eval splits never share a question, so held-out accuracy measures generalisation.
"""

from __future__ import annotations

import random
from typing import Callable

from datasets import Dataset

__all__ = ["arithmetic_splits", "preference_splits", "number_spelling_splits", "spell_number", "FORMATS"]

FORMATS = ("prompt_completion", "prompt_answer", "messages", "text")


def _arithmetic_question(rng: random.Random, difficulty: int) -> tuple[str, str]:
    if difficulty == 1:  # one digit + one digit
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), "+"
    elif difficulty == 2:  # two digits + one digit, or a one-digit difference
        a, b, op = rng.randint(10, 99), rng.randint(0, 9), rng.choice("+-")
    elif difficulty == 3:  # two digits + two digits
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), "+"
    else:  # two-digit difference (non-negative)
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), "-"
        a, b = max(a, b), min(a, b)
    answer = a + b if op == "+" else a - b
    return f"{a}{op}{b}=", str(answer)


def _unique_rows(make: Callable[[random.Random], dict], count: int, seed: int, exclude: set[str]) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    for _ in range(count * 50):  # bounded: the question space is far larger than any default size
        if len(rows) == count:
            break
        row = make(rng)
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    if len(rows) < count:
        raise ValueError(f"could only generate {len(rows)} distinct rows of the {count} asked for")
    return rows


def _arithmetic_row(rng: random.Random) -> dict:
    difficulty = rng.choices([1, 2, 3, 4], weights=[1, 2, 3, 2])[0]
    prompt, completion = _arithmetic_question(rng, difficulty)
    return {"prompt": prompt, "completion": completion, "difficulty": difficulty}


def _format(rows: list[dict], fmt: str) -> Dataset:
    if fmt == "prompt_completion":
        return Dataset.from_list(rows)
    if fmt == "prompt_answer":
        return Dataset.from_list(
            [{"prompt": r["prompt"], "answer": r["completion"], "difficulty": r["difficulty"]} for r in rows]
        )
    if fmt == "messages":
        return Dataset.from_list(
            [
                {
                    "messages": [
                        {"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["completion"]},
                    ],
                    "difficulty": r["difficulty"],
                }
                for r in rows
            ]
        )
    if fmt == "text":
        return Dataset.from_list(
            [{"text": r["prompt"] + r["completion"], "difficulty": r["difficulty"]} for r in rows]
        )
    raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def arithmetic_splits(
    train_size: int = 4000, eval_size: int = 200, seed: int = 0, fmt: str = "prompt_completion"
) -> tuple[Dataset, Dataset]:
    """Arithmetic questions with a `difficulty` column (1 = one-digit sums … 4 = two-digit differences).

    `fmt` picks the layout: `prompt_completion` (`prompt`, `completion`), `prompt_answer` (`prompt`, `answer`: the
    prompts and references of GRPO/RLOO), `messages` (a user/assistant conversation) or `text` (`"23+45=68"`, for
    pretraining). Eval questions never appear in train.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    train = _unique_rows(_arithmetic_row, train_size, seed, exclude=set())
    evaluation = _unique_rows(_arithmetic_row, eval_size, seed + 1, exclude={r["prompt"] for r in train})
    return _format(train, fmt), _format(evaluation, fmt)


def _plausible_wrong(rng: random.Random, answer: str) -> str:
    value = int(answer)
    candidates = {value + 1, value - 1, value + 10, value - 10}
    if len(answer) >= 2 and answer[-1] != answer[-2]:
        candidates.add(int(answer[:-2] + answer[-1] + answer[-2]))  # the last two digits swapped
    candidates = sorted(c for c in candidates if c >= 0 and c != value)
    return str(rng.choice(candidates))


# The arithmetic questions the SFT recipe's default trains on: the first 4,000 of seed 0 (`bundled_train_size`).
SFT_DEFAULT_QUESTIONS = 4000


def preference_splits(train_size: int = 2000, eval_size: int = 200, seed: int = 0) -> tuple[Dataset, Dataset]:
    """`prompt`/`chosen`/`rejected` rows from the arithmetic set: chosen is right, rejected is close but wrong.

    Train holds the first `train_size` arithmetic questions of `seed`. The held-out questions also avoid the first
    4,000 (the SFT recipe's default training set), so a preference recipe that starts from the SFT recipe's output
    is measured on questions neither run has seen: they are the arithmetic set's own held-out questions.
    """
    rng = random.Random(seed + 7)
    pool = _unique_rows(_arithmetic_row, max(train_size, SFT_DEFAULT_QUESTIONS), seed, exclude=set())
    evaluation = _unique_rows(_arithmetic_row, eval_size, seed + 1, exclude={r["prompt"] for r in pool})
    splits = []
    for split in (pool[:train_size], evaluation):
        rows = [
            {
                "prompt": r["prompt"],
                "chosen": r["completion"],
                "rejected": _plausible_wrong(rng, r["completion"]),
                "difficulty": r["difficulty"],
            }
            for r in split
        ]
        splits.append(Dataset.from_list(rows))
    return splits[0], splits[1]


_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split()
)
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell_number(n: int) -> str:
    """English words for 0 ≤ n ≤ 999, e.g. 407 → "four hundred seven"."""
    if not 0 <= n <= 999:
        raise ValueError(f"spell_number: expected 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + spell_number(rest))


def _spelling_row(rng: random.Random) -> dict:
    n = rng.choice([rng.randint(0, 9), rng.randint(10, 99), rng.randint(100, 999)])
    return {"prompt": f"spell: {n}", "completion": spell_number(n), "difficulty": len(str(n))}


def number_spelling_splits(train_size: int = 800, eval_size: int = 100, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Text-to-text pairs `source` → `target` (`"spell: 47"` → `"forty seven"`), with a `difficulty` column.

    There are only 1,000 distinct numbers, so `train_size + eval_size` must stay at or below 1,000.
    """
    if train_size + eval_size > 1000:
        raise ValueError(f"number spelling has 1000 distinct rows; asked for {train_size} + {eval_size}")
    train = _unique_rows(_spelling_row, train_size, seed, exclude=set())
    evaluation = _unique_rows(_spelling_row, eval_size, seed + 1, exclude={r["prompt"] for r in train})

    def to_dataset(rows):
        return Dataset.from_list(
            [{"source": r["prompt"], "target": r["completion"], "difficulty": r["difficulty"]} for r in rows]
        )

    return to_dataset(train), to_dataset(evaluation)
