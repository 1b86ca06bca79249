"""Fields from the environment: `HFTRAIN_<FIELD>` sets any field of a recipe's dataclasses.

Precedence: YAML < environment < command-line flags. Each variable becomes the tokens a user would type
(`HFTRAIN_MAX_STEPS=50` is `--max_steps 50`), placed between the YAML's tokens and the real command line, so
argparse and the dataclasses check it as they check the rest. Each value is checked here first by the flag's own
type and choices, so a bad one is reported naming its variable, not a flag the user never typed.
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Any, Optional

from ..errors import ConfigError

__all__ = ["ENV_PREFIX", "KEPT_VARIABLES", "env_values", "field_of_variable"]

ENV_PREFIX = "HFTRAIN_"
# Variables hftrain read before fields could come from the environment; each keeps its meaning and is never a field
# override. HFTRAIN_TRACKER_DB, HFTRAIN_EXPERIMENT and HFTRAIN_ALERT_WEBHOOK_URL stay fallbacks read where they are
# used, for an empty field: a YAML or flag `tracker_db` still wins over the variable, and a webhook URL stays out of
# the arguments saved with every checkpoint. The others belong to the scripts (install, Slurm, the GPU check).
KEPT_VARIABLES = frozenset(
    {
        "HFTRAIN_TRACKER_DB",
        "HFTRAIN_EXPERIMENT",
        "HFTRAIN_ALERT_WEBHOOK_URL",
        "HFTRAIN_TRACKER_COPY_DIR",
        "HFTRAIN_SLURM_DRY_RUN",
        "HFTRAIN_TORCH",
        "HFTRAIN_GPU_WHEELS",
        "HFTRAIN_GPU_SITE",
        "HFTRAIN_GPU_CUDA",
    }
)
_EXPECTED = {int: "a whole number", float: "a number"}


def field_of_variable(variable: str, fields: Any) -> Optional[str]:
    """The field `variable` sets (`HFTRAIN_MAX_STEPS` -> `max_steps`) when it is one of `fields`; None for other
    variables, and for the kept ones (`KEPT_VARIABLES`)."""
    if not variable.startswith(ENV_PREFIX) or variable in KEPT_VARIABLES:
        return None
    name = variable[len(ENV_PREFIX) :].lower()
    return name if name in fields else None


def hftrain_variables() -> list[str]:
    """The environment's `HFTRAIN_*` variables with a value (an empty one counts as unset), sorted."""
    return sorted(k for k, v in os.environ.items() if k.startswith(ENV_PREFIX) and v.strip())


def env_values(variable: str, field: str, action: argparse.Action) -> list[str]:
    """The command-line values `variable` stands for, each checked by `action`'s type and choices. A list field's
    value is split as a shell splits words (`HFTRAIN_EVAL_METRICS="bleu chrf"`, quotes keep spaces)."""
    value = os.environ[variable]
    if action.nargs in ("+", "*"):
        try:
            values = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"{variable}={value!r}: field {field} expects a list of words ({exc})") from exc
    else:
        values = [value]
    for item in values:
        _check_value(variable, field, action, item)
    return values


def _check_value(variable: str, field: str, action: argparse.Action, value: str) -> None:
    try:
        converted = action.type(value) if callable(action.type) else value
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        expected = _EXPECTED.get(action.type) or ("true or false" if action.const is True else None)
        detail = f"expects {expected}" if expected else f"rejects it ({str(exc).strip().splitlines()[0]})"
        raise ConfigError(f"{variable}={value!r}: field {field} {detail}") from exc
    if action.choices is not None and converted not in action.choices:
        allowed = ", ".join(str(c) for c in action.choices)
        raise ConfigError(f"{variable}={value!r}: field {field} expects one of {allowed}")
