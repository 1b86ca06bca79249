"""hftrain tune: search-space validation (one ConfigError line naming the field, before any work) and the pruning
callback against a real Optuna study on a SQLite file."""

import os

import pytest

from hftrain.errors import ConfigError
from hftrain.tune import main as tune_main
from hftrain.tune import open_study, parse_search_space

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "sft.py")
LR = {"type": "loguniform", "low": 1e-4, "high": 1e-2}


@pytest.mark.parametrize(
    "space, fragment",
    [
        (
            {"params": {"learning_rate": {"type": "normal", "low": 0, "high": 1}}},
            "params.learning_rate.type: unknown distribution 'normal' (allowed: loguniform, uniform, int, categorical)",
        ),
        (
            {"params": {"learning_rate": {"type": "loguniform", "low": 1e-2, "high": 1e-4}}},
            "params.learning_rate: empty range low=0.01 high=0.0001 (need low < high)",
        ),
        (
            {"params": {"warmup_steps": {"type": "int", "low": 10, "high": 0}}},
            "params.warmup_steps: empty range low=10 high=0 (need low <= high)",
        ),
        (
            {"params": {"lora_r": {"type": "categorical", "choices": []}}},
            "params.lora_r.choices: expected a non-empty list",
        ),
        ({"params": {"learning_rate": {"type": "loguniform", "low": 0, "high": 1}}}, "a log scale needs low > 0"),
        (
            {"params": {"learning_rate": LR}, "method": "bayes"},
            "method: expected one of grid, random, tpe, got 'bayes'",
        ),
        (
            {"params": {"learning_rate": LR}, "method": "grid"},
            "params.learning_rate: method grid needs categorical or int",
        ),
        (
            {"params": {"learning_rate": LR}, "pruner": "hyperband"},
            "pruner: expected one of none, median, successive_halving",
        ),
        ({"params": {"learning_rate": LR}, "direction": "up"}, "direction: expected one of minimize, maximize"),
        ({"params": {}}, "params: expected a non-empty mapping"),
        ({"params": {"learning_rate": {**LR, "stepp": 1}}}, "params.learning_rate: unknown key(s) stepp"),
        ({"params": {"learning_rate": LR}, "enqueue": [{"lr": 1e-3}]}, "enqueue[0]: lr not in params (learning_rate)"),
    ],
)
def test_bad_search_space_is_a_config_error_naming_the_field(space, fragment):
    with pytest.raises(ConfigError) as info:
        parse_search_space(space)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_good_space_defaults_and_grid():
    spec = parse_search_space(
        {
            "params": {
                "lora_r": {"type": "categorical", "choices": [4, 8]},
                "warmup_steps": {"type": "int", "low": 0, "high": 20, "step": 10},
            },
            "method": "grid",
            "metric": "loss",
        }
    )
    assert spec.metric == "eval_loss" and spec.direction == "minimize"
    assert spec.grid() == {"lora_r": [4, 8], "warmup_steps": [0, 10, 20]}


def test_cli_rejects_bad_space_in_one_line_before_any_work(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  learning_rate: {type: gaussian, low: 1.0e-4, high: 1.0e-2}\n")
    storage = tmp_path / "studies.db"
    rc = tune_main(
        [RECIPE, "--search_space", str(space), "--storage", str(storage), "--tune_dir", str(tmp_path / "t")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "error: search space params.learning_rate.type: unknown distribution 'gaussian' "
        "(allowed: loguniform, uniform, int, categorical)"
    ]
    assert not storage.exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize("recipe", ["sft", "dpo", "seq2seq", "pretrain"])
def test_cli_rejects_field_the_recipe_does_not_have(tmp_path, capsys, recipe):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  learning_rte: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    storage = tmp_path / "studies.db"
    path = os.path.join(os.path.dirname(RECIPE), f"{recipe}.py")
    rc = tune_main([path, "--search_space", str(space), "--storage", str(storage), "--tune_dir", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "learning_rte" in err[0]
    assert not storage.exists()


def test_pruning_callback_reports_and_stops_training_of_a_worse_trial(tmp_path):
    from transformers import TrainerControl, TrainerState

    from hftrain.tune import _trial_callback

    spec = parse_search_space({"params": {"learning_rate": LR}, "pruner": {"type": "median", "n_startup_trials": 1}})
    study = open_study(str(tmp_path / "s.db"), "prune", spec, heartbeat_interval=60)
    first = study.ask()
    spec.suggest(first)
    for step, value in ((4, 2.0), (8, 1.5)):
        first.report(value, step)
    study.tell(first, 1.5)

    second = study.ask()
    spec.suggest(second)
    callback = _trial_callback(second, "eval_loss")
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(None, state, control)
    assert state.trial_name == f"trial-{second.number}" and state.trial_params == second.params
    state.global_step = 4
    callback.on_evaluate(None, state, control, metrics={"eval_loss": 1.9})  # better than the median: continue
    assert not callback.pruned and not control.should_training_stop
    state.global_step = 8
    callback.on_evaluate(None, state, control, metrics={"eval_loss": 3.0})  # worse: pruned, training told to stop
    assert callback.pruned and control.should_training_stop
    reloaded = open_study(str(tmp_path / "s.db"), "prune", spec, heartbeat_interval=60)
    assert reloaded.trials[second.number].intermediate_values == {4: 1.9, 8: 3.0}


@pytest.mark.parametrize("recipe", ["sft", "dpo", "seq2seq", "pretrain"])
def test_every_trainer_recipe_can_be_tuned(recipe):
    import os

    from hftrain.tune import _recipe_main

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", f"{recipe}.py")
    assert callable(_recipe_main(path)["main"])
