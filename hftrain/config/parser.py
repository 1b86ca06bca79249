"""`HFTrainParser`: YAML first, then `HFTRAIN_<FIELD>` environment variables, then command-line flags; errors
name the key (or the variable).

YAML values and environment variables become the tokens a user would type, placed before the real command line, so
argparse checks their types and the command line wins. After parsing, `explicit_fields` names every field the user
wrote (even at its default value), which `hftrain.launch` needs to let a preset fill only what the user left open,
and `config_sources` says where each of them came from (recorded with the run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import sys
from typing import Any, Optional

import yaml
from transformers import HfArgumentParser
from transformers.utils import logging

from ..errors import ConfigError
from .environment import ENV_PREFIX, KEPT_VARIABLES, env_values, field_of_variable, hftrain_variables

logger = logging.get_logger(__name__)

__all__ = ["HFTrainParser"]

# transformers' deprecated field names (5.20) and their new names: the bundled configs use the new ones
_RENAMED = (
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
)


class HFTrainParser(HfArgumentParser):
    """`HfArgumentParser` that reads `--config FILE.yaml` first, then `HFTRAIN_<FIELD>` variables, and lets
    command-line flags override both.

    YAML values and variables are turned into the same tokens a user would type, placed before the real command
    line, so argparse checks their types and the command line wins. Errors raise `ConfigError` (one line, naming the
    key or variable) instead of printing usage and exiting.
    """

    def __init__(self, dataclass_types, **kwargs):
        types = list(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        self.explicit_fields: frozenset = frozenset()
        self.config_sources: dict[str, str] = {}
        # HfArgumentParser narrows `field.type` in place (`str | list[str]` becomes `str`) on Field objects that
        # subclasses share, so read the declared types from the class annotations: they say which keys may hold
        # a list or a mapping in YAML.
        self._declared_types = {f.name: _declared_type(t, f.name) for t in types for f in dataclasses.fields(t)}
        # argparse's prefix matching would take `--max_step 4` as `--max_steps`: an unknown flag must stop the run.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(types, **kwargs)
        for action in self._actions:
            # argparse %-formats help texts; a literal "10%" in one would crash `--help` (TypeError: %o format)
            if action.help:
                action.help = re.sub(r"%%|%\(|%", lambda m: "%%" if m.group() == "%" else m.group(), action.help)

    def error(self, message: str):  # argparse calls this for every parse error
        raise ConfigError(message)

    def _parse_dataclass_field(self, parser, field):
        # A field several dataclasses share (e.g. `trust_remote_code` in ModelArguments and SFTConfig) gets one
        # flag; every dataclass that has the field receives its value.
        if f"--{field.name}" in self._option_string_actions:
            return
        super()._parse_dataclass_field(parser, field)

    def parse_args_and_config(self, args: Optional[list[str]] = None, base_config: Optional[str] = None) -> tuple:
        """The dataclasses from `--config FILE`, then `HFTRAIN_<FIELD>` variables, then the flags. `base_config`: a
        YAML read when no `--config` is given (a recipe's bundled defaults); its keys are defaults, not fields the
        user named. Each returned object carries `hftrain_config_sources` (see `config_sources`)."""
        argv = list(sys.argv[1:] if args is None else args)
        config_path, argv = _pop_config_flag(argv)
        user_config = config_path is not None
        config_path = config_path if user_config else base_config
        config_tokens: list[str] = []
        self._yaml_defaults: set[str] = set()
        if config_path is not None:
            config_tokens = self._config_to_tokens(config_path)
        flag_fields = self._given_fields(argv)
        env_tokens, env_fields = self._environment_tokens(skip=flag_fields)
        namespace, remaining = self.parse_known_args(args=config_tokens + env_tokens + argv)
        if remaining:
            raise ConfigError(f"unknown command-line argument(s): {' '.join(remaining)}{self._suggest(remaining[0])}")
        typed = flag_fields | set(env_fields)
        for old, new in _RENAMED:  # else transformers lets a config's new name silently win over a typed old one
            if old in typed and new not in typed and new in vars(namespace):
                setattr(namespace, new, getattr(namespace, old))
        yaml_fields = self._given_fields(config_tokens) | self._yaml_defaults
        self.explicit_fields = frozenset((yaml_fields if user_config else set()) | set(env_fields) | flag_fields)
        sources = {
            **dict.fromkeys(yaml_fields, "yaml" if user_config else "recipe_yaml"),
            **dict.fromkeys(env_fields, "env"),
            **dict.fromkeys(flag_fields, "flag"),
        }
        self.config_sources = dict(sorted(sources.items()))
        outputs = tuple(self._build(dtype, vars(namespace), env_fields) for dtype in self.dataclass_types)
        for output in outputs:
            with contextlib.suppress(AttributeError, TypeError):  # a frozen or slotted dataclass of the caller's
                output.hftrain_config_sources = dict(self.config_sources)
        return outputs

    def _build(self, dtype: type, values: dict[str, Any], env_fields: dict[str, str]) -> Any:
        """`dtype` from the parsed values; a check that fails on a value from the environment names the variable."""
        keys = {f.name for f in dataclasses.fields(dtype) if f.init}
        try:
            return dtype(**{k: v for k, v in values.items() if k in keys})
        except ConfigError as exc:
            raise ConfigError(f"{exc}{_env_hint(str(exc), env_fields)}") from exc
        except (ValueError, TypeError) as exc:  # raised by a dataclass __post_init__
            message = f"{dtype.__name__}: {str(exc).strip().splitlines()[0]}"
            raise ConfigError(f"{message}{_env_hint(message, env_fields)}") from exc

    # -- the environment --------------------------------------------------------------------------------------
    def _environment_tokens(self, skip: set[str]) -> tuple[list[str], dict[str, str]]:
        """The tokens of the `HFTRAIN_<FIELD>` variables (fields in `skip`, given as flags, left out: the flag wins)
        and {field: variable}. Other `HFTRAIN_*` variables, but the kept ones, are named in one warning each: a
        variable exported for another recipe (`HFTRAIN_BETA` for DPO) must not stop this one."""
        tokens: list[str] = []
        fields: dict[str, str] = {}
        for variable in hftrain_variables():
            field = field_of_variable(variable, self._declared_types)
            action = self._option_string_actions.get(f"--{field}") if field else None
            if action is None or action.dest != field:
                self._warn_unknown_variable(variable)
                continue
            values = env_values(variable, field, action)
            if field not in skip:
                tokens += [f"--{field}", *values]
                fields[field] = variable
        return tokens, fields

    def _warn_unknown_variable(self, variable: str) -> None:
        if variable in KEPT_VARIABLES or os.environ.get("RANK", "0") != "0":  # one warning per launch, not per rank
            return
        name = variable[len(ENV_PREFIX) :].lower()
        close = difflib.get_close_matches(name, list(self._declared_types), n=1)
        hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
        logger.warning(f"{variable}: names no field of this recipe; ignored{hint}")

    # -- YAML -------------------------------------------------------------------------------------------------
    def _config_to_tokens(self, path: str) -> list[str]:
        data = read_yaml_mapping(path, "--config") or {}
        self._yaml_defaults = set()
        variables = data.pop("env", None) or {}
        for name, value in variables.items():
            field = field_of_variable(str(name), self._declared_types)
            if field is not None:  # checked before any is set: a refused file changes nothing
                raise ConfigError(
                    f"--config {path}: env: {name} would set field {field}; write `{field}: {value}` as a key "
                    "of the file instead"
                )
        for name, value in variables.items():
            os.environ[str(name)] = str(value)
        tokens: list[str] = []
        for key, value in data.items():
            action = self._option_string_actions.get(f"--{key}")
            if action is None:
                raise ConfigError(f"--config {path}: unknown key '{key}'{self._suggest('--' + str(key))}")
            container = list if isinstance(value, (list, tuple)) else dict if isinstance(value, dict) else None
            if container is not None and action.nargs not in ("+", "*"):
                # Fields such as `report_to` (str | list[str]) or `model_init_kwargs` (dict | str) take a list or
                # a mapping only from YAML: keep the value's type as the parser's default, as TRL's parser does.
                if container.__name__ not in self._declared_types.get(key, ""):
                    kind = "a list" if container is list else "a mapping"
                    raise ConfigError(f"--config {path}: key '{key}' expects a single value, got {kind}: {value!r}")
                self.set_defaults(**{key: value})
                self._yaml_defaults.add(key)
                continue
            tokens += _value_to_tokens(key, value, path)
        return tokens

    def _given_fields(self, tokens: list[str]) -> set[str]:
        """Field names of the flags in `tokens` (`--x`, `--x=1`, `--no_x`)."""
        given = set()
        for token in tokens:
            if not token.startswith("--"):
                continue
            action = self._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                given.add(action.dest)
        return given

    def _suggest(self, flag: str) -> str:
        flag = flag.split("=", 1)[0]
        close = difflib.get_close_matches(flag, list(self._option_string_actions), n=3)
        return f" (did you mean {', '.join(c.lstrip('-') for c in close)}?)" if close else ""


def read_yaml_mapping(path: str, flag: str) -> Optional[dict]:
    """The mapping in the YAML file `path` (None when empty); a `ConfigError` naming `flag` and the file when it is
    missing, a directory, unreadable, not UTF-8, not YAML, or not a mapping."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: is a directory; expected a YAML file")
    if not os.path.isfile(path):
        raise ConfigError(f"{flag}: no such file: {path}")
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        data = yaml.safe_load(raw.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot be read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{flag} {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the file as UTF-8"
        ) from exc
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())  # one line: YAML errors span several
        raise ConfigError(f"{flag} {path}: not valid YAML ({exc.__class__.__name__}: {detail})") from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{flag} {path}: expected a mapping of field: value, got {type(data).__name__}")
    return data


def _env_hint(message: str, env_fields: dict[str, str]) -> str:
    """` (from HFTRAIN_X)` for the first field from the environment that `message` names, else ''."""
    for field, variable in env_fields.items():
        if re.search(rf"(?<![\w]){re.escape(field)}(?![\w])", message):
            return f" (from {variable}={os.environ.get(variable, '')!r})"
    return ""


def _declared_type(dtype: type, name: str) -> str:
    for cls in dtype.__mro__:
        annotation = vars(cls).get("__annotations__", {}).get(name)
        if annotation is not None:
            return str(annotation).lower()
    return ""


def _pop_config_flag(argv: list[str]) -> tuple[Optional[str], list[str]]:
    rest, path = [], None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config: expected a path to a YAML file")
            path, i = argv[i + 1], i + 2
            continue
        if token.startswith("--config="):
            path = token.split("=", 1)[1]
        else:
            rest.append(token)
        i += 1
    return path, rest


def _value_to_tokens(key: str, value: Any, path: str) -> list[str]:
    """The command-line tokens equivalent to `key: value` from a YAML file (argparse then checks the type)."""
    if value is None:
        return []  # keep the field's default (None for optional fields)
    if isinstance(value, (list, tuple)):
        return [f"--{key}", *[_scalar(v, key, path) for v in value]] if value else []
    return [f"--{key}", _scalar(value, key, path)]


def _scalar(value: Any, key: str, path: str) -> str:
    if isinstance(value, (dict, list)):
        raise ConfigError(f"--config {path}: key '{key}' holds a nested {type(value).__name__}, expected a scalar")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
