"""hftrain tune on the bundled SFT default: a real study (SQLite storage, tracker runs, best config, importances,
report), two worker processes on one study, and kill + resume."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from hftrain.tracking.store import TrackerStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "sft.py")
TINY = [
    "--tiny_hidden_size",
    "32",
    "--tiny_num_layers",
    "1",
    "--bundled_train_size",
    "64",
    "--bundled_eval_size",
    "16",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "4",
    "--eval_steps",
    "4",
    "--save_steps",
    "1000",
    "--disable_tqdm",
    "true",
    "--tracker_system_interval",
    "0",
]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _load(storage, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{storage}")


def _tracker_trials(db, study):
    with TrackerStore(db) as store:
        return {
            int(store.tags(r["id"])["trial_number"]): (r, store.params(r["id"])) for r in store.runs(experiment=study)
        }


def test_study_beats_a_bad_start_and_writes_results(tmp_path, capsys):
    from hftrain.tune import main as tune_main

    space = _space(
        tmp_path,
        (
            "study_name: sft-lr\nmetric: eval_loss\ndirection: minimize\nmethod: tpe\nseed: 0\n"
            "pruner: {type: median, n_startup_trials: 1}\n"
            "enqueue:\n  - {learning_rate: 1.0e-5, warmup_steps: 0}\n"  # the deliberately bad start
            "params:\n  learning_rate: {type: loguniform, low: 3.0e-3, high: 3.0e-2}\n"
            "  warmup_steps: {type: int, low: 0, high: 4, step: 2}\n"
        ),
    )
    storage, out, db = tmp_path / "studies.db", tmp_path / "tune", os.environ["HFTRAIN_TRACKER_DB"]
    rc = tune_main(
        [
            RECIPE,
            "--search_space",
            space,
            "--n_trials",
            "4",
            "--storage",
            str(storage),
            "--tune_dir",
            str(out),
            "--max_steps",
            "12",
            *TINY,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    study = _load(storage, "sft-lr")
    assert len(study.trials) == 4 and all(t.state in FINISHED for t in study.trials)
    bad = study.trials[0]
    assert bad.params == {"learning_rate": 1e-5, "warmup_steps": 0} and bad.state.name == "COMPLETE"
    assert study.best_value < bad.value  # the search found better params than the bad start
    assert study.best_params["learning_rate"] >= 3e-3

    # Every trial is a tracker run of the study's experiment, with its own sampled params and its own folder.
    runs = _tracker_trials(db, "sft-lr")
    assert sorted(runs) == [0, 1, 2, 3]
    for trial in study.trials:
        run, params = runs[trial.number]
        assert run["name"] == f"trial-{trial.number}"
        assert float(params["trial.learning_rate"]) == pytest.approx(trial.params["learning_rate"])
        assert float(params["args.learning_rate"]) == pytest.approx(trial.params["learning_rate"])
        assert run["output_dir"] == str(out / f"trial-{trial.number}")
        assert run["status"] == ("pruned" if trial.state.name == "PRUNED" else "finished")
        if trial.state.name == "PRUNED":
            assert run["last_step"] < 12

    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["learning_rate"] == pytest.approx(study.best_params["learning_rate"])
    assert best["warmup_steps"] == study.best_params["warmup_steps"] and best["max_steps"] == 12
    import runpy

    _, training_args, model_args = runpy.run_path(RECIPE)["parse_args"](["--config", str(out / "best_config.yaml")])
    assert training_args.learning_rate == pytest.approx(study.best_params["learning_rate"])
    assert model_args.tiny_hidden_size == 32
    importances = json.loads((out / "importances.json").read_text())
    assert set(importances["importances"]) == {"learning_rate", "warmup_steps"}
    assert sum(importances["importances"].values()) == pytest.approx(1.0)

    from hftrain.cli import main as cli_main

    report = tmp_path / "report.html"
    assert cli_main(["runs", "report", "--experiment", "sft-lr", "-o", str(report)]) == 0
    page = report.read_text()
    assert 'data-study="sft-lr"' in page and page.count('class="study-plot"') == 3  # objective + one per param
    assert page.count("<tr><td>", page.index('class="trials"')) >= 4


def _worker(args, log):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "hftrain.cli", "tune", RECIPE, *args],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_two_workers_share_one_study(tmp_path):
    space = _space(
        tmp_path,
        "study_name: shared\nmethod: random\npruner: none\nseed: 1\n"
        "params:\n  learning_rate: {type: loguniform, low: 1.0e-3, high: 3.0e-2}\n",
    )
    storage, db = tmp_path / "studies.db", os.environ["HFTRAIN_TRACKER_DB"]
    args = [
        "--search_space",
        space,
        "--n_trials",
        "4",
        "--storage",
        str(storage),
        "--tune_dir",
        str(tmp_path / "t"),
        "--max_steps",
        "8",
        *TINY,
    ]
    logs = [open(tmp_path / f"w{i}.log", "w") for i in range(2)]
    workers = [_worker([*args, "--worker_index", str(i)], logs[i]) for i in range(2)]
    codes = [w.wait(timeout=400) for w in workers]
    assert codes == [0, 0], [(tmp_path / f"w{i}.log").read_text()[-2000:] for i in range(2)]
    study = _load(storage, "shared")
    # MaxTrialsCallback stops both at the shared budget; a trial already started by the other worker may finish too.
    assert 4 <= len(study.trials) <= 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both processes ran trials
    runs = _tracker_trials(db, "shared")
    assert sorted(runs) == [t.number for t in study.trials]  # no trial lost, none recorded twice
    assert all(r["status"] == "finished" for r, _ in runs.values())
    assert len({p["trial.learning_rate"] for _, p in runs.values()}) == len(study.trials)


def test_killed_study_resumes_where_it_stopped(tmp_path):
    space = _space(
        tmp_path,
        "study_name: resumable\nmethod: random\npruner: none\nseed: 2\n"
        "params:\n  learning_rate: {type: loguniform, low: 1.0e-3, high: 3.0e-2}\n",
    )
    storage = tmp_path / "studies.db"
    args = [
        "--search_space",
        space,
        "--n_trials",
        "3",
        "--storage",
        str(storage),
        "--tune_dir",
        str(tmp_path / "t"),
        "--heartbeat_interval",
        "1",
        "--max_steps",
        "40",
        *TINY,
    ]
    with open(tmp_path / "first.log", "w") as log:
        first = _worker(args, log)
        deadline = time.time() + 300
        while time.time() < deadline:  # kill while trial 1 trains, after trial 0 completed
            time.sleep(0.5)
            if storage.exists():
                try:
                    states = [t.state.name for t in _load(storage, "resumable").trials]
                except Exception:  # the study may not exist yet
                    continue
                if states[:1] == ["COMPLETE"] and "RUNNING" in states:
                    break
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = _load(storage, "resumable").trials
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"], (tmp_path / "first.log").read_text()[-2000:]
    with open(tmp_path / "second.log", "w") as log:
        assert _worker(args, log).wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-2000:]
    after = _load(storage, "resumable").trials
    assert [t.state.name for t in after].count("COMPLETE") == 3
    assert after[0].datetime_complete == before[0].datetime_complete  # trial 0 was kept, not rerun
    assert after[1].state.name == "FAIL"  # the killed trial, failed by its stale heartbeat ...
    retried = [t for t in after[2:] if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == before[1].params  # ... and retried with the same params
    assert len(after) == 4
