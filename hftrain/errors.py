"""Exceptions hftrain raises for bad input. Recipes print them as one line and exit with status 2."""


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
