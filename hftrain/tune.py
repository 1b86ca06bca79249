"""Hyperparameter search over a recipe with Optuna, every trial recorded as a tracker run.

`hftrain tune recipes/sft.py --search_space space.yaml --n_trials 8 [recipe flags...]` runs an Optuna study whose
trials each call the recipe's own `main()` with the sampled values as command-line overrides, so a trial trains
exactly what `accelerate launch recipes/sft.py --learning_rate ...` would. Why not `Trainer.hyperparameter_search`:
TRL's `SFTTrainer`/`DPOTrainer` have no `model_init` and patch the model in their constructor (fused LM head), so one
trainer per trial is the only correct way for them; doing the same for every recipe keeps one code path (see
README.md, "Hyperparameter search"). The pieces are Optuna's own: samplers (grid, random, TPE), pruners (median, successive halving),
`RDBStorage` on a SQLite file with heartbeats (interrupted trials are failed and retried), `MaxTrialsCallback`
(the trial budget is the study's, shared by every worker) and the parameter-importance evaluator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError, HFTrainError, report_user_error

__all__ = ["SearchSpec", "load_search_space", "parse_search_space", "open_study", "run_study", "write_results", "main"]

DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")
METHODS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "successive_halving")
DIRECTIONS = ("minimize", "maximize")
_PARAM_KEYS = {
    "loguniform": {"low", "high"},
    "uniform": {"low", "high", "step"},
    "int": {"low", "high", "step", "log"},
    "categorical": {"choices"},
}
_PRUNER_KEYS = {
    "none": set(),
    "median": {"n_startup_trials", "n_warmup_steps"},
    "successive_halving": {"min_resource", "reduction_factor"},
}
_TOP_KEYS = {"study_name", "metric", "direction", "method", "pruner", "seed", "params", "enqueue"}


@dataclass
class SearchSpec:
    """A validated search space: what to sample, how, and what to optimise."""

    params: dict[str, dict[str, Any]]
    metric: str = "eval_loss"
    direction: str = "minimize"
    method: str = "tpe"
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    seed: Optional[int] = 0
    study_name: Optional[str] = None
    enqueue: list[dict[str, Any]] = field(default_factory=list)

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every parameter for `trial` with Optuna's `suggest_*`."""
        values = {}
        for name, spec in self.params.items():
            kind = spec["type"]
            if kind == "categorical":
                values[name] = trial.suggest_categorical(name, spec["choices"])
            elif kind == "int":
                values[name] = trial.suggest_int(
                    name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
                )
            else:
                values[name] = trial.suggest_float(
                    name, spec["low"], spec["high"], log=kind == "loguniform", step=spec.get("step")
                )
        return values

    def grid(self) -> dict[str, list]:
        """Every value of every parameter, for the grid sampler (categorical and int parameters only)."""
        grid = {}
        for name, spec in self.params.items():
            if spec["type"] == "categorical":
                grid[name] = list(spec["choices"])
            elif spec["type"] == "int" and not spec.get("log"):
                grid[name] = list(range(spec["low"], spec["high"] + 1, spec.get("step", 1)))
            else:
                raise ConfigError(
                    f"search space params.{name}: method grid needs categorical or int parameters, "
                    f"got {spec['type']} (use categorical choices for a grid over floats)"
                )
        return grid


def _number(value: Any, where: str, integer: bool = False) -> float:
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and math.isnan(value))
    ):
        raise ConfigError(f"search space {where}: expected a number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"search space {where}: expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _check_param(name: str, spec: Any) -> dict[str, Any]:
    where = f"params.{name}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(
            f"search space {where}: expected a mapping with 'type' (one of {', '.join(DISTRIBUTIONS)}), got {spec!r}"
        )
    kind = spec["type"]
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"search space {where}.type: unknown distribution {kind!r} (allowed: {', '.join(DISTRIBUTIONS)})"
        )
    unknown = set(spec) - _PARAM_KEYS[kind] - {"type"}
    if unknown:
        raise ConfigError(
            f"search space {where}: unknown key(s) {', '.join(sorted(unknown))} for {kind} "
            f"(allowed: {', '.join(sorted(_PARAM_KEYS[kind]))})"
        )
    out: dict[str, Any] = {"type": kind}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"search space {where}.choices: expected a non-empty list, got {choices!r}")
        if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
            raise ConfigError(f"search space {where}.choices: expected numbers, strings or booleans, got {choices!r}")
        out["choices"] = choices
        return out
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"search space {where}: {kind} needs 'low' and 'high'")
    integer = kind == "int"
    low, high = _number(spec["low"], f"{where}.low", integer), _number(spec["high"], f"{where}.high", integer)
    if kind == "int" and low > high or kind != "int" and low >= high:
        rule = "low <= high" if kind == "int" else "low < high"
        raise ConfigError(f"search space {where}: empty range low={spec['low']} high={spec['high']} (need {rule})")
    if (kind == "loguniform" or spec.get("log")) and low <= 0:
        raise ConfigError(f"search space {where}.low: a log scale needs low > 0, got {spec['low']}")
    out.update(low=low, high=high)
    if "step" in spec:
        step = _number(spec["step"], f"{where}.step", integer)
        if step <= 0:
            raise ConfigError(f"search space {where}.step: expected > 0, got {spec['step']}")
        out["step"] = step
    if "log" in spec:
        if not isinstance(spec["log"], bool):
            raise ConfigError(f"search space {where}.log: expected true or false, got {spec['log']!r}")
        if spec["log"] and "step" in spec and out["step"] != 1:
            raise ConfigError(f"search space {where}: log and step cannot be combined (Optuna's rule)")
        out["log"] = spec["log"]
    return out


def parse_search_space(data: Any, source: str = "search space") -> SearchSpec:
    """A `SearchSpec` from the YAML mapping; `ConfigError` naming the field and what is allowed for anything else."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'params', got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(
            f"search space: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_TOP_KEYS))})"
        )
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError("search space params: expected a non-empty mapping of recipe field -> distribution")
    spec = SearchSpec(params={str(k): _check_param(str(k), v) for k, v in params.items()})
    if "metric" in data:
        if not isinstance(data["metric"], str) or not data["metric"].strip():
            raise ConfigError(
                f"search space metric: expected an eval metric name such as eval_loss, got {data['metric']!r}"
            )
        spec.metric = data["metric"].strip()
    if not spec.metric.startswith("eval_"):  # Trainer.evaluate prefixes every metric with eval_
        spec.metric = f"eval_{spec.metric}"
    for key, allowed in (("direction", DIRECTIONS), ("method", METHODS)):
        if key in data:
            if data[key] not in allowed:
                raise ConfigError(f"search space {key}: expected one of {', '.join(allowed)}, got {data[key]!r}")
            setattr(spec, key, data[key])
    if "pruner" in data:
        spec.pruner = _check_pruner(data["pruner"])
    if "seed" in data:
        spec.seed = None if data["seed"] is None else int(_number(data["seed"], "seed", integer=True))
    if "study_name" in data:
        if not isinstance(data["study_name"], str) or not data["study_name"].strip():
            raise ConfigError(f"search space study_name: expected a non-empty string, got {data['study_name']!r}")
        spec.study_name = data["study_name"].strip()
    enqueue = data.get("enqueue") or []
    if not isinstance(enqueue, list) or any(not isinstance(e, dict) for e in enqueue):
        raise ConfigError(f"search space enqueue: expected a list of param mappings, got {enqueue!r}")
    for i, entry in enumerate(enqueue):
        extra = set(entry) - set(spec.params)
        if extra:
            raise ConfigError(
                f"search space enqueue[{i}]: {', '.join(sorted(extra))} not in params ({', '.join(spec.params)})"
            )
    spec.enqueue = enqueue
    if spec.method == "grid":
        spec.grid()  # raises for parameters a grid cannot enumerate
    return spec


def _check_pruner(value: Any) -> dict[str, Any]:
    pruner = {"type": value} if isinstance(value, str) or value is None else value
    if not isinstance(pruner, dict) or pruner.get("type", "none") not in PRUNERS:
        shown = pruner.get("type") if isinstance(pruner, dict) else pruner
        raise ConfigError(f"search space pruner: expected one of {', '.join(PRUNERS)}, got {shown!r}")
    pruner = {"type": pruner.get("type") or "none", **{k: v for k, v in pruner.items() if k != "type"}}
    unknown = set(pruner) - {"type"} - _PRUNER_KEYS[pruner["type"]]
    if unknown:
        raise ConfigError(
            f"search space pruner: unknown key(s) {', '.join(sorted(unknown))} for {pruner['type']} "
            f"(allowed: {', '.join(sorted(_PRUNER_KEYS[pruner['type']])) or 'none'})"
        )
    for key in set(pruner) - {"type"}:
        if _number(pruner[key], f"pruner.{key}", integer=key != "reduction_factor") < (
            2 if key == "reduction_factor" else 0
        ):
            raise ConfigError(f"search space pruner.{key}: out of range, got {pruner[key]!r}")
    return pruner


def load_search_space(path: str) -> SearchSpec:
    """Read and validate a search-space YAML file."""
    from .config.parser import read_yaml_mapping

    if not os.path.exists(path):
        raise ConfigError(f"--search_space: no such file {path!r}")
    # a folder, unreadable, not UTF-8, not YAML: one line naming the file
    return parse_search_space(read_yaml_mapping(path, "--search_space"), f"--search_space {path}")


# -- Optuna objects ------------------------------------------------------------------------------------------------
def _sampler(spec: SearchSpec):
    import optuna

    if spec.method == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=spec.seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def _pruner(spec: SearchSpec):
    import optuna

    options = {k: v for k, v in spec.pruner.items() if k != "type"}
    if spec.pruner["type"] == "median":
        return optuna.pruners.MedianPruner(**options)
    if spec.pruner["type"] == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    return optuna.pruners.NopPruner()


def open_study(storage_path: str, study_name: str, spec: SearchSpec, heartbeat_interval: int = 30):
    """Create or load the study in a SQLite file. Heartbeats let a later worker fail (and retry once) the trials of
    a worker that was killed; the 60 s busy timeout lets several worker processes share the file."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    os.makedirs(os.path.dirname(os.path.abspath(storage_path)), exist_ok=True)
    last_error: Optional[Exception] = None
    # Heartbeats and stale-trial retry are marked experimental by Optuna; they are what makes resume work.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(5):  # two workers creating a fresh file at once can race on its schema; retry that
        try:
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{os.path.abspath(storage_path)}",
                engine_kwargs={"connect_args": {"timeout": 60}},
                heartbeat_interval=heartbeat_interval,
                grace_period=2 * heartbeat_interval,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
            study = optuna.create_study(
                storage=storage,
                study_name=study_name,
                direction=spec.direction,
                sampler=_sampler(spec),
                pruner=_pruner(spec),
                load_if_exists=True,
            )
            break
        except (OperationalError, IntegrityError) as exc:  # locked, or lost the schema-creation race
            last_error = exc
            time.sleep(0.5 * (attempt + 1))
    else:
        raise HFTrainError(f"--storage {storage_path}: could not open the study database ({last_error})")
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(
            f"direction: study {study_name!r} in {storage_path} was created with "
            f"{study.direction.name.lower()}, the search space says {spec.direction}"
        )
    if spec.enqueue and not study.trials:  # only the first worker of a fresh study enqueues the starting points
        for params in spec.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


# -- one trial = one run of the recipe ---------------------------------------------------------------------------
def _trial_callback(trial, metric: str):
    """A `TrainerCallback` that names the run after the trial (so the tracker records `trial.*` params and the
    `trial` tag), reports `metric` at each evaluation, and stops training when Optuna prunes the trial."""
    from transformers import TrainerCallback

    class OptunaTrialCallback(TrainerCallback):
        pruned = False
        values: dict[int, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            # Runs before the tracker's on_train_begin (constructor callbacks come first), which reads these.
            state.trial_name = f"trial-{trial.number}"
            state.trial_params = dict(trial.params)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not metrics or metric not in metrics or not state.is_world_process_zero:
                return
            if state.global_step in self.values:  # the recipe's final evaluate repeats the last step's
                return
            value = float(metrics[metric])
            self.values[state.global_step] = value
            trial.report(value, state.global_step)
            if trial.should_prune():
                # Stop cleanly (the recipe still saves and the tracker closes the run); TrialPruned comes after.
                self.pruned = True
                control.should_training_stop = True

    callback = OptunaTrialCallback()
    callback.values = {}
    return callback


def _recipe_main(recipe: str):
    import inspect
    import runpy

    if not os.path.isfile(recipe):
        raise ConfigError(f"recipe: no such file {recipe!r} (e.g. recipes/sft.py)")
    namespace = runpy.run_path(recipe)
    main = namespace.get("main")
    if main is None or "callbacks" not in inspect.signature(main).parameters:
        raise ConfigError(
            f"recipe: {recipe} has no main(argv, callbacks=...) to tune (recipes/sft.py, dpo.py, seq2seq.py and pretrain.py have one)"
        )
    return namespace


def _recipe_overrides(argv: list[str]) -> dict[str, Any]:
    """`--key value` / `--key=value` pairs of the recipe's command line, values read as YAML scalars."""
    import yaml

    out, i = {}, 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            elif not eq:
                value = "true"
            out[key] = yaml.safe_load(value) if value != "" else ""
        i += 1
    return out


def _flag(name: str, value: Any) -> list[str]:
    return [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]


def run_study(
    recipe: str,
    spec: SearchSpec,
    *,
    n_trials: int,
    recipe_argv: list[str],
    output_dir: str,
    storage: str,
    study_name: str,
    heartbeat_interval: int = 30,
    log=print,
):
    """Run trials of the study until it holds `n_trials` finished (complete or pruned) trials, counting those of
    earlier and concurrent workers. Returns the study."""
    import optuna

    namespace = _recipe_main(recipe)
    recipe_main = namespace["main"]
    _check_recipe_fields(namespace, spec, recipe_argv)  # a misspelt field fails here, before any trial
    study = open_study(storage, study_name, spec, heartbeat_interval)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done >= n_trials:
        log(f"[hftrain] tune: study {study_name!r} already has {done} finished trials (n_trials={n_trials})")
        return study
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial):
        values = spec.suggest(trial)
        trial_dir = os.path.join(output_dir, f"trial-{trial.number}")
        trial.set_user_attr("output_dir", os.path.abspath(trial_dir))
        trial.set_user_attr("worker", worker)
        argv = list(recipe_argv)
        for name, value in values.items():
            argv += _flag(name, value)
        # Later flags win: each trial gets its own folder, never resumes another trial's checkpoint, and lands in
        # the study's experiment with tags that say which study and trial it is.
        argv += [
            "--output_dir",
            trial_dir,
            "--auto_resume",
            "false",
            "--tracker_experiment",
            study_name,
            "--tracker_tags",
            f"study={study_name},trial_number={trial.number},study_metric={spec.metric},"
            f"study_direction={spec.direction}",
        ]
        callback = _trial_callback(trial, spec.metric)
        log(f"[hftrain] tune: trial {trial.number} {values}")
        trainer, metrics = recipe_main(argv, callbacks=[callback])
        if callback.pruned:
            value = callback.values[max(callback.values)]
        elif spec.metric in (metrics or {}):
            value = float(metrics[spec.metric])
        elif callback.values:
            value = callback.values[max(callback.values)]
        else:
            raise ConfigError(
                f"metric: {spec.metric!r} is not among the trial's eval metrics "
                f"({', '.join(sorted(metrics or {})) or 'none: set eval_strategy and an eval split'})"
            )
        _record_trial(trainer, value, pruned=callback.pruned)
        if callback.pruned:
            log(f"[hftrain] tune: trial {trial.number} pruned at {spec.metric}={value:.6g}")
            raise optuna.TrialPruned()
        log(f"[hftrain] tune: trial {trial.number} {spec.metric}={value:.6g}")
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n_trials - done, callbacks=[optuna.study.MaxTrialsCallback(n_trials, finished)])
    return study


def _check_recipe_fields(namespace, spec: SearchSpec, recipe_argv: list[str]) -> None:
    """Parse the recipe's arguments with every searched field set, so an unknown or ill-typed field is a
    ConfigError naming it before the study starts (the recipe's own parser does the checking)."""
    parse = namespace.get("parse_args")
    if parse is None:
        return
    argv = list(recipe_argv)
    for name, p in spec.params.items():
        argv += _flag(name, p["choices"][0] if p["type"] == "categorical" else p["low"])
    parse(argv)


def _record_trial(trainer, value: float, pruned: bool) -> None:
    """Objective and pruned status on the trial's tracker run (the tracker's own callback closed it as finished)."""
    from .tracking.callback import find_tracker
    from .tracking.store import TrackerStore

    tracker = find_tracker(trainer)
    if tracker is None or tracker.run_id is None:
        return
    with TrackerStore(tracker.db_path) as store:
        store.log_metrics(tracker.run_id, trainer.state.global_step, {"objective": value})
        store.set_tags(tracker.run_id, {"trial_state": "pruned" if pruned else "complete"})
        if pruned:
            store.set_status(tracker.run_id, "pruned")


# -- results -----------------------------------------------------------------------------------------------------
def write_results(
    study, spec: SearchSpec, *, recipe_namespace: Optional[dict], recipe_argv: list[str], output_dir: str
) -> dict[str, Optional[str]]:
    """Best params as a recipe config YAML (the recipe's base config + command-line overrides + best params) and
    parameter importances (Optuna's default evaluator) as JSON. Returns the paths written."""
    import optuna
    import yaml

    os.makedirs(output_dir, exist_ok=True)
    paths: dict[str, Optional[str]] = {"best_config": None, "importances": None}
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return paths
    best = study.best_trial
    overrides = _recipe_overrides(recipe_argv)
    base_path = overrides.pop("config", None) or (recipe_namespace or {}).get("DEFAULT_CONFIG")
    config: dict[str, Any] = {}
    if base_path and os.path.isfile(base_path):
        with open(base_path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    config.update(overrides)
    config.update(best.params)
    config["output_dir"] = os.path.join(output_dir, "best")
    best_path = os.path.join(output_dir, "best_config.yaml")
    header = (
        f"# Best trial {best.number} of study {study.study_name!r}: {spec.metric} = {best.value:.6g} "
        f"({spec.direction}).\n# Base: {base_path or 'none'}; then the tune command line; then the best params.\n"
    )
    with open(best_path, "w", encoding="utf-8") as handle:
        handle.write(header + yaml.safe_dump(config, sort_keys=False))
    paths["best_config"] = best_path
    importances: dict[str, Any] = {
        "study": study.study_name,
        "metric": spec.metric,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "n_complete": len(completed),
    }
    try:
        if len(completed) < 2:  # one point says nothing about which parameter matters
            raise ValueError(f"{len(completed)} complete trial(s); need at least 2")
        importances["importances"] = dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as exc:  # too few complete trials, or params that never varied
        importances["importances"] = {}
        importances["note"] = f"importances unavailable: {exc}"
    imp_path = os.path.join(output_dir, "importances.json")
    with open(imp_path, "w", encoding="utf-8") as handle:
        json.dump(importances, handle, indent=2)
    paths["importances"] = imp_path
    return paths


# -- command line ----------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that raises a `ConfigError` (one `error:` line, exit 2) instead of printing usage, and never takes
    a prefix of a flag for the flag (`--n_trial 3` is the recipe's unknown flag, not `--n_trials`)."""

    def error(self, message: str):
        raise ConfigError(f"hftrain tune: {message}")


def _check_numbers(args: argparse.Namespace) -> None:
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError(f"--n_trials: expected >= 1, got {args.n_trials}")
    if args.heartbeat_interval < 1:
        raise ConfigError(f"--heartbeat_interval: expected seconds >= 1, got {args.heartbeat_interval}")
    if args.worker_index < 0:
        raise ConfigError(f"--worker_index: expected >= 0, got {args.worker_index}")


def _check_paths(storage: str, tune_dir: str) -> None:
    """The study file and the trial folder must be creatable: said before any recipe is imported or trial runs."""
    for flag, path, want in (("--storage", storage, "file"), ("--tune_dir", tune_dir, "folder")):
        if want == "file" and os.path.isdir(path):
            raise ConfigError(f"{flag} {path}: is a folder; expected a SQLite file path")
        if want == "folder" and os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"{flag} {path}: is a file; expected a folder (created when missing)")
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ConfigError(f"{flag} {path}: cannot be created, {parent} is a file")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        allow_abbrev=False,
        prog="hftrain tune",
        description="Optuna hyperparameter search over a recipe; every other flag goes to the recipe.",
        epilog="Example: hftrain tune recipes/sft.py --search_space space.yaml --n_trials 20 --max_steps 200",
    )
    p.add_argument("recipe", help="recipe script with main(argv, callbacks=...), e.g. recipes/sft.py")
    p.add_argument(
        "--search_space",
        required=True,
        help="YAML: params (loguniform|uniform|int|categorical), metric, "
        "direction, method (grid|random|tpe), pruner (none|median|successive_halving), seed, enqueue",
    )
    p.add_argument(
        "--n_trials",
        type=int,
        default=None,
        help="finished trials the study should hold in total (default: the grid size, or 20)",
    )
    p.add_argument(
        "--study_name",
        default=None,
        help="study and tracker experiment name (default: from the space, else <recipe>-tune)",
    )
    p.add_argument(
        "--storage", default=None, help="Optuna SQLite file (default: optuna_studies.db beside the tracker database)"
    )
    p.add_argument(
        "--tune_dir",
        default=None,
        help="trial folders, best_config.yaml, importances.json (default: outputs/tune/<study_name>)",
    )
    p.add_argument("--method", choices=METHODS, default=None, help="override the space's method")
    p.add_argument("--pruner", choices=PRUNERS, default=None, help="override the space's pruner")
    p.add_argument(
        "--worker_index",
        type=int,
        default=0,
        help="0, 1, ... for each process running the same study at once: offsets the sampler seed so "
        "workers do not sample the same points",
    )
    p.add_argument(
        "--heartbeat_interval",
        type=int,
        default=30,
        help="seconds; a trial whose worker stopped beating for twice this is failed and retried once",
    )
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """`hftrain tune`: run (or resume, or join) a study, then write the best config and importances."""
    parser = _parser()
    try:
        args, recipe_argv = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        _check_numbers(args)
        spec = load_search_space(args.search_space)
        if args.method:
            spec.method = args.method
            if spec.method == "grid":
                spec.grid()
        if args.pruner:
            spec.pruner = {"type": args.pruner}
        if spec.seed is not None:
            spec.seed += args.worker_index
        study_name = args.study_name or spec.study_name or f"{os.path.splitext(os.path.basename(args.recipe))[0]}-tune"
        n_trials = args.n_trials or (math.prod(len(v) for v in spec.grid().values()) if spec.method == "grid" else 20)
        from .tracking.store import default_db_path

        storage = args.storage or os.path.join(
            os.path.dirname(os.path.abspath(default_db_path())), "optuna_studies.db"
        )
        tune_dir = args.tune_dir or os.path.join("outputs", "tune", study_name)
        _check_paths(storage, tune_dir)
        print(
            f"[hftrain] tune: study {study_name!r} in {storage}; {spec.method}, pruner {spec.pruner['type']}, "
            f"{spec.direction} {spec.metric}, {n_trials} trials"
        )
        study = run_study(
            args.recipe,
            spec,
            n_trials=n_trials,
            recipe_argv=recipe_argv,
            output_dir=tune_dir,
            storage=storage,
            study_name=study_name,
            heartbeat_interval=args.heartbeat_interval,
        )
        paths = write_results(
            study, spec, recipe_namespace=_recipe_main(args.recipe), recipe_argv=recipe_argv, output_dir=tune_dir
        )
    except HFTrainError as exc:
        return report_user_error(exc)
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    print(f"[hftrain] tune: trials {', '.join(f'{n} {s}' for s, n in sorted(states.items()))}")
    if paths["best_config"]:
        print(
            f"[hftrain] tune: best trial {study.best_trial.number}: {spec.metric}={study.best_value:.6g} "
            f"{study.best_params}"
        )
        print(f"[hftrain] tune: best config: {os.path.abspath(paths['best_config'])}")
        print(f"[hftrain] tune: importances: {os.path.abspath(paths['importances'])}")
    print(
        f"[hftrain] tune: trials are runs of experiment {study_name!r}: `hftrain runs list --experiment "
        f"{study_name}`, `hftrain runs report --experiment {study_name}`"
    )
    return 0
