"""Exceptions hftrain raises for bad input, and the one boundary that turns them into `error: ...` and exit 2."""

import contextlib
import sys
from typing import Iterator


class HFTrainError(Exception):
    """Base class for errors that are the user's to fix (config, data, model, checkpoint, database)."""


class ConfigError(HFTrainError, ValueError):
    """A config key, command-line flag or argument value that is unknown, of the wrong type or out of range."""


class DataError(HFTrainError, ValueError):
    """A dataset that lacks a required column, is empty, or holds values that cannot be trained on."""


class ModelLoadError(HFTrainError, OSError):
    """A model or tokenizer name that cannot be loaded (not on the Hub, not a local path, or no network)."""


class TrackerError(HFTrainError, ValueError):
    """A tracker database that is not an hftrain run store (corrupt, foreign, newer), or a run that does not exist."""


USER_ERROR_STATUS = 2


def report_user_error(exc: HFTrainError) -> int:
    """The command-line boundary for a user's error: one `error: ...` line on stderr; returns the exit status (2).
    Every entry point (recipes, `hftrain runs`, `hftrain tune`, `hftrain push`) ends an `HFTrainError` this way."""
    print(f"error: {exc}", file=sys.stderr)
    return USER_ERROR_STATUS


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Run a script's entry point: an `HFTrainError` becomes `report_user_error`'s line and exit status 2, never a
    traceback."""
    try:
        yield
    except HFTrainError as exc:
        sys.exit(report_user_error(exc))
