"""The tracker in real training: every trainer, hyperparameter search, crashes, signals, resume, two processes."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch
from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, TrainerCallback

from hftrain import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments
from hftrain.builtin import (
    arithmetic_splits,
    build_tiny_causal_lm,
    build_tiny_seq2seq,
    build_tokenizer,
    number_spelling_splits,
    preference_splits,
)
from hftrain.errors import TrackerError
from hftrain.tracking.callback import TrackerCallback, find_tracker
from hftrain.tracking.store import TrackerStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "scripts", "tracker_train.py")
COMMON = dict(report_to="none", use_cpu=True, disable_tqdm=True, seed=0, logging_steps=1, save_strategy="no")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def lm_data(tokenizer):
    train, test = arithmetic_splits(train_size=32, eval_size=8, seed=0, fmt="text")
    tok = lambda b: tokenizer(b["text"], truncation=True, max_length=32)  # noqa: E731
    return (
        train.map(tok, batched=True, remove_columns=train.column_names),
        test.map(tok, batched=True, remove_columns=test.column_names),
    )


def _lm_trainer(tokenizer, lm_data, out, **kwargs):
    settings = dict(
        max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3, eval_strategy="steps", eval_steps=2
    )
    args = TrainingArguments(output_dir=str(out), **{**settings, **COMMON, **kwargs})
    return Trainer(
        model=build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2),
        args=args,
        train_dataset=lm_data[0],
        eval_dataset=lm_data[1],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )


def test_trainer_run_recorded_and_training_unchanged(tokenizer, lm_data, tmp_path):
    db = os.environ["HFTRAIN_TRACKER_DB"]
    on = _lm_trainer(tokenizer, lm_data, tmp_path / "on", tracker_system_interval=0.05)
    off = _lm_trainer(tokenizer, lm_data, tmp_path / "off", tracker=False)
    assert find_tracker(on) is not None and find_tracker(off) is None
    on.train()
    off.train()
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(on) == losses(off)
    for (name, a), b in zip(on.model.state_dict().items(), off.model.state_dict().values()):
        assert torch.equal(a, b), name
    on.log({"samples": ["1+1=2", "2+2=5"], "note": "text"})  # non-scalar values are kept as events
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"\x89PNG sample grid")
    find_tracker(on).log_artifact(str(grid), kind="samples")  # the API the diffusion loop uses for sample grids
    with TrackerStore(db) as store:
        (run,) = store.runs()
        details = store.run_details(run["id"])
        assert run["status"] == "finished" and run["trainer"] == "Trainer" and run["last_step"] == 3
        assert details["params"]["args.learning_rate"] == "0.001" and details["params"]["model.hidden_size"] == "32"
        assert int(details["params"]["num_parameters"]) == on.model.num_parameters()
        assert details["system"]["libraries"]["transformers"] and details["system"]["cpu_count"]
        assert details["system"]["git"].get("commit")  # the tests run inside the hftrain git checkout
        assert [p[0] for p in store.curve(run["id"], "loss")] == [1, 2, 3]
        assert [p[1] for p in store.curve(run["id"], "loss")] == losses(on)
        eval_steps = [h["step"] for h in on.state.log_history if "eval_loss" in h]
        assert [p[0] for p in store.curve(run["id"], "eval_loss")] == eval_steps == [2, 3]  # recorded once each
        assert store.curve(run["id"], "sys/cpu_rss_mb")
        assert store.artifacts(run["id"]) == [
            {
                "path": str(grid),
                "kind": "samples",
                "step": 3,
                "size": grid.stat().st_size,
                "sha256": hashlib.sha256(grid.read_bytes()).hexdigest(),
            }
        ]
        events = [e for e in store.events(run["id"]) if e["kind"] == "log"]
        assert {e["payload"]["key"]: e["payload"]["value"] for e in events} == {
            "samples": ["1+1=2", "2+2=5"],
            "note": "text",
        }


def test_locked_database_never_holds_up_training(tokenizer, lm_data, tmp_path):
    """Another job holds the database's write lock for 3 s from step 2: the steps after it run at full speed (the
    tracker's writer thread waits, not the trainer), and at the end every step is recorded."""
    db = os.environ["HFTRAIN_TRACKER_DB"]
    ends = {}

    class LockAtStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends[state.global_step] = time.perf_counter()
            if state.global_step == 2:
                blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
                blocker.execute("BEGIN IMMEDIATE")
                threading.Timer(3.0, lambda: (blocker.execute("COMMIT"), blocker.close())).start()

    trainer = _lm_trainer(
        tokenizer, lm_data, tmp_path / "out", max_steps=10, eval_strategy="no", tracker_system_interval=0
    )
    trainer.add_callback(LockAtStep2())
    start = time.perf_counter()
    trainer.train()
    assert ends[10] - ends[2] < 1.5, f"steps 3-10 took {ends[10] - ends[2]:.2f} s behind a locked database"
    assert time.perf_counter() - start >= 3.0  # the end of training waited for the writer to record the rest
    with TrackerStore(db) as store:
        (run,) = store.runs()
        assert run["status"] == "finished" and [p[0] for p in store.curve(run["id"], "loss")] == list(range(1, 11))


def test_steps_are_committed_before_their_checkpoint_exists(tokenizer, lm_data, tmp_path, monkeypatch):
    """With a slow database (each log takes 0.3 s to commit), a checkpoint is only written once every step up to
    it is in the database, so a resume from it (which drops later steps) never leaves a hole."""
    db = os.environ["HFTRAIN_TRACKER_DB"]
    log_metrics = TrackerStore.log_metrics

    def slow_log_metrics(self, *args, **kwargs):
        time.sleep(0.3)
        return log_metrics(self, *args, **kwargs)

    monkeypatch.setattr(TrackerStore, "log_metrics", slow_log_metrics)
    recorded_at_save = {}

    class LookAtSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            assert (tmp_path / "out" / f"checkpoint-{state.global_step}").is_dir()
            with TrackerStore(db) as reader:
                (run,) = reader.runs()
                recorded_at_save[state.global_step] = [p[0] for p in reader.curve_points(run["id"], "loss")]

    trainer = _lm_trainer(
        tokenizer,
        lm_data,
        tmp_path / "out",
        max_steps=4,
        eval_strategy="no",
        save_strategy="steps",
        save_steps=2,
        tracker_system_interval=0,
    )
    trainer.callback_handler.callbacks.insert(0, LookAtSave())  # runs before the tracker's own on_save
    trainer.train()
    assert recorded_at_save == {2: [1, 2], 4: [1, 2, 3, 4]}


def test_curves_are_packed_at_the_end_and_read_like_rows(tokenizer, lm_data, tmp_path):
    db = os.environ["HFTRAIN_TRACKER_DB"]
    trainer = _lm_trainer(
        tokenizer, lm_data, tmp_path / "out", max_steps=6, eval_strategy="no", tracker_system_interval=0
    )
    trainer.train()
    run_id = find_tracker(trainer).run_id

    def same_as_rows(store):
        keys = store.metric_keys([run_id])
        for key in keys:
            assert store.curve_points(run_id, key) == [(p[0], p[1]) for p in store.curve(run_id, key)], key
        return keys

    with TrackerStore(db) as store:
        keys = same_as_rows(store)
        chunks = store.conn.execute("SELECT COUNT(*) FROM metric_chunks WHERE run_id = ?", (run_id,)).fetchone()[0]
        assert "loss" in keys and chunks == len(keys)  # one chunk per curve, written by on_train_end
    metrics = trainer.evaluate()  # logs `epoch` again at the packed last step: that curve's chunk goes, rows answer
    with TrackerStore(db) as store:
        assert store.curve_points(run_id, "eval_loss") == [(6, metrics["eval_loss"])]
        same_as_rows(store)
        left = {
            row[0]
            for row in store.conn.execute(
                "SELECT k.name FROM metric_chunks c JOIN metric_keys k ON k.id = c.key_id WHERE c.run_id = ?",
                (run_id,),
            )
        }
        assert left == set(keys) - {"epoch"}  # the other curves keep their chunks


def test_bad_database_fails_before_training(tokenizer, lm_data, tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("my notes, not a database\n" * 10)
    with pytest.raises(TrackerError, match="not an SQLite database"):
        _lm_trainer(tokenizer, lm_data, tmp_path / "o", tracker_db=str(bad))
    assert bad.read_text() == "my notes, not a database\n" * 10
    assert not (tmp_path / "o" / "checkpoint-3").exists()
    from hftrain.errors import ConfigError

    with pytest.raises(ConfigError, match="tracker_heartbeat_timeout"):
        TrainingArguments(output_dir=str(tmp_path), tracker_heartbeat_timeout=0)


def test_database_failing_mid_run_never_stops_training(tokenizer, lm_data, tmp_path, caplog):
    class BreakDatabase(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:  # the file's connection dies under the tracker, as on a lost disk
                tracker = find_tracker(trainer)  # (closed on the writer thread, the connection's user)
                tracker._writer.submit("break", 2, tracker._store.conn.close)

    trainer = _lm_trainer(
        tokenizer, lm_data, tmp_path / "out", max_steps=4, eval_strategy="no", tracker_system_interval=0
    )
    trainer.add_callback(BreakDatabase())
    with caplog.at_level("ERROR"):
        trainer.train()
    assert trainer.state.global_step == 4  # training finished
    assert "could not record metrics at step 2" in caplog.text and "training goes on" in caplog.text
    assert "training failed" not in caplog.text
    with TrackerStore(os.environ["HFTRAIN_TRACKER_DB"]) as store:
        (run,) = store.runs()
        assert [p[0] for p in store.curve(run["id"], "loss")] == [1]  # what was written before the failure stays
        assert run["status"] == "finished"  # the final status goes through a fresh connection


def test_seq2seq_sft_dpo_runs_recorded(tokenizer, tmp_path):
    from hftrain import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    db = os.environ["HFTRAIN_TRACKER_DB"]
    train, _ = number_spelling_splits(train_size=16, eval_size=4, seed=0)
    cols = train.column_names

    def enc(b):
        out = tokenizer(b[cols[0]], truncation=True, max_length=16)
        out["labels"] = tokenizer(b[cols[1]], truncation=True, max_length=24)["input_ids"]
        return out

    model = build_tiny_seq2seq(tokenizer, d_model=32, num_layers=1, num_heads=2)
    Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(
            output_dir=str(tmp_path / "s2s"), max_steps=2, per_device_train_batch_size=4, **COMMON
        ),
        train_dataset=train.map(enc, batched=True, remove_columns=cols),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
    ).train()
    sft_train, _ = arithmetic_splits(train_size=16, eval_size=4, seed=0)
    SFTTrainer(
        model=build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2),
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=4, max_length=32, **COMMON
        ),
        train_dataset=sft_train,
        processing_class=tokenizer,
    ).train()
    dpo_train, _ = preference_splits(train_size=16, eval_size=4, seed=0)
    DPOTrainer(
        model=build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2),
        ref_model=build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2),
        args=DPOConfig(
            output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=4, max_length=48, **COMMON
        ),
        train_dataset=dpo_train,
        processing_class=tokenizer,
    ).train()
    with TrackerStore(db) as store:
        runs = {r["trainer"]: r for r in store.runs()}
        assert set(runs) == {"Seq2SeqTrainer", "SFTTrainer", "DPOTrainer"}
        for name, run in runs.items():
            assert run["status"] == "finished" and run["last_step"] == 2, name
            assert [p[0] for p in store.curve(run["id"], "loss")] == [1, 2], name
            assert store.params(run["id"])["args.max_steps"] == "2"
        assert "args.beta" in store.params(runs["DPOTrainer"]["id"])  # DPO's own config fields are params too
        assert "model.d_model" in store.params(runs["Seq2SeqTrainer"]["id"])


def test_hyperparameter_search_trials_are_separate_runs(tokenizer, lm_data, tmp_path):
    pytest.importorskip("optuna")  # in the dev extra; CI installs it
    db = os.environ["HFTRAIN_TRACKER_DB"]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        eval_strategy="steps",
        eval_steps=2,
        **COMMON,
    )
    trainer = Trainer(
        model_init=lambda trial=None: build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2),
        args=args,
        train_dataset=lm_data[0],
        eval_dataset=lm_data[1],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)},
        backend="optuna",
        n_trials=3,
        direction="minimize",
    )
    with TrackerStore(db) as store:
        runs = store.runs()
        assert len(runs) == 3 and {r["status"] for r in runs} == {"finished"}
        params = [store.params(r["id"]) for r in runs]
        lrs = [p["trial.learning_rate"] for p in params]
        assert len(set(lrs)) == 3
        for p in params:  # the arguments each trial really trained with, not the first trial's
            assert float(p["args.learning_rate"]) == float(p["trial.learning_rate"])
            assert len(p) > 100
        assert all(store.curve(r["id"], "eval_loss") for r in runs)


def _script(out, *extra, wait=True):
    cmd = [sys.executable, SCRIPT, str(out), *map(str, extra)]
    log = open(f"{out}.log", "a+")  # a file, not a pipe: a full pipe nobody reads would stall the child
    proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, text=True)
    if wait:
        proc.wait(timeout=300)
        log.seek(0)
        return proc.returncode, log.read()
    return proc


def _wait_for(predicate, proc=None, log=None, timeout=180.0, what="condition"):
    """Poll (no fixed sleeps) until `predicate()` is true; fail early with the child's log if it died."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"child exited with {proc.returncode} before {what}:\n" + open(log).read()[-3000:])
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _last_logged_step(db):
    if not os.path.exists(db):
        return None
    with TrackerStore(db) as store:
        runs = store.runs()
        curve = store.curve(runs[0]["id"], "loss") if runs else []
        return curve[-1][0] if curve else None


def test_kill9_crash_then_resume(tmp_path):
    db = os.environ["HFTRAIN_TRACKER_DB"]
    out = tmp_path / "out"
    common = ["--max_steps", 6, "--save_steps", 3, "--heartbeat_timeout", 1.0]
    proc = _script(out, *common, "--hang_at", 5, wait=False)  # step 5 hangs before it is logged
    _wait_for(
        lambda: (out / "checkpoint-3").is_dir() and _last_logged_step(db) == 4,
        proc,
        f"{out}.log",
        what="step 4 logged after checkpoint-3",
    )
    proc.kill()
    proc.wait()
    with TrackerStore(db) as store:  # readable right after the kill; reads as crashed once the heartbeat is stale
        (run,) = store.runs()
        assert run["status"] == "running"
        _wait_for(lambda: store.runs()[0]["status"] == "crashed", timeout=10, what="status crashed")
        assert store.curve(run["id"], "loss")[-1][0] == 4
    # resume from checkpoint-3: the same run continues, steps 4.. are logged again exactly once
    code, output = _script(out, *common, "--resume")
    assert code == 0, output
    with TrackerStore(db) as store:
        (run2,) = store.runs()
        assert run2["uuid"] == run["uuid"] and run2["status"] == "finished" and run2["last_step"] == 6
        assert [p[0] for p in store.curve(run2["id"], "loss")] == list(range(1, 7))
        assert [e["step"] for e in store.events(run2["id"]) if e["kind"] == "resumed"] == [3]
        assert {a["step"] for a in store.artifacts(run2["id"])} == {3, 6}
        assert all(a["sha256"] for a in store.artifacts(run2["id"]))


class _FailAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"planned failure at step {state.global_step}")


def test_exception_caught_by_caller_is_failed_then_resume_continues(tokenizer, lm_data, tmp_path):
    db = os.environ["HFTRAIN_TRACKER_DB"]
    out = tmp_path / "out"
    trainer = _lm_trainer(
        tokenizer,
        lm_data,
        out,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="no",
        tracker_system_interval=0,
    )
    trainer.add_callback(_FailAt(3))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(RuntimeError, match="planned failure"):
        trainer.train()  # caught here, as a notebook or an HPO loop would: no excepthook ever runs
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # no dead trainer's handler left installed
    with TrackerStore(db) as store:
        (run,) = store.runs()
        assert run["status"] == "failed" and "planned failure at step 3" in run["error"]
    resumed = _lm_trainer(
        tokenizer,
        lm_data,
        out,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="no",
        tracker_system_interval=0,
    )
    resumed.train(resume_from_checkpoint=True)
    with TrackerStore(db) as store:
        (run2,) = store.runs()
        assert run2["uuid"] == run["uuid"] and run2["status"] == "finished" and run2["error"] is None
        assert [p[0] for p in store.curve(run2["id"], "loss")] == [1, 2, 3, 4]


def test_sigterm_checkpoints_stops_and_records_killed(tmp_path):
    """hftrain's trainers turn SIGTERM into "checkpoint at the next step boundary, stop, exit 128+15"; the tracker
    records the run as killed at that step (the in-process variant with a user's own handler is below)."""
    db = os.environ["HFTRAIN_TRACKER_DB"]
    code, output = _script(tmp_path / "a", "--max_steps", 8, "--term_at", 2, "--run_name", "default")
    assert code == 128 + signal.SIGTERM, output  # a clean exit with the conventional status, not death by signal
    assert "SIGTERM received: saving a checkpoint" in output
    with TrackerStore(db) as store:
        (run,) = store.runs()
        assert run["status"] == "killed" and run["error"] == f"signal {int(signal.SIGTERM)}"
        assert run["last_step"] == 2 and store.curve(run["id"], "loss")[-1][0] == 2
        noted = [e["payload"] for e in store.events(run["id"]) if e["kind"] == "signal" and "signal" in e["payload"]]
        assert noted == [{"signal": int(signal.SIGTERM)}]  # the tracker's own note, once
        assert {a["step"] for a in store.artifacts(run["id"])} == {2}  # the graceful checkpoint
    assert (tmp_path / "a" / "checkpoint-2" / "trainer_state.json").is_file()


class _TermAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        # during step `self.step` (added after hftrain's callbacks, so on_step_end would be one step late)
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_signal_handlers_are_per_run_and_restored(tokenizer, lm_data, tmp_path):
    """No handler of a finished run stays installed: a second run in the same process gets its own chain, and the
    process's handlers are the same after each run as before it."""
    from hftrain.tracking import lifecycle

    db = os.environ["HFTRAIN_TRACKER_DB"]
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    assert not lifecycle.installed()  # nothing left over from earlier tests in this process either
    first = _lm_trainer(
        tokenizer,
        lm_data,
        tmp_path / "one",
        max_steps=2,
        eval_strategy="no",
        tracker_system_interval=0,
        run_name="first",
    )
    first.train()
    assert {s: signal.getsignal(s) for s in before} == before and not lifecycle.installed()
    second = _lm_trainer(
        tokenizer,
        lm_data,
        tmp_path / "two",
        max_steps=6,
        eval_strategy="no",
        tracker_system_interval=0,
        run_name="second",
        save_strategy="no",
    )
    second.add_callback(_TermAt(2))
    with pytest.raises(SystemExit) as info:  # the graceful stop ends the process with 128+15 after train()
        second.train()
    assert info.value.code == 128 + signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before and not lifecycle.installed()
    with TrackerStore(db) as store:
        runs = {r["name"]: r for r in store.runs()}
        assert runs["first"]["status"] == "finished" and runs["first"]["last_step"] == 2
        assert runs["second"]["status"] == "killed" and runs["second"]["last_step"] == 2
        assert not [e for e in store.events(runs["first"]["id"]) if e["kind"] == "signal"]  # no stale chaining

    # a user's own SIGTERM handler: called once after the checkpoint, and it decides (here: no exit)
    calls = []

    def user_handler(signum, frame):
        calls.append(("user", signum))

    previous = signal.signal(signal.SIGTERM, user_handler)
    try:
        third = _lm_trainer(
            tokenizer,
            lm_data,
            tmp_path / "three",
            max_steps=6,
            eval_strategy="no",
            tracker_system_interval=0,
            run_name="third",
            save_strategy="no",
        )
        third.add_callback(_TermAt(2))
        third.train()  # returns: the user's handler did not exit
        assert calls == [("user", signal.SIGTERM)] and third.state.global_step == 2
        assert signal.getsignal(signal.SIGTERM) is user_handler and not lifecycle.installed()
    finally:
        signal.signal(signal.SIGTERM, previous)
    with TrackerStore(db) as store:
        run = store.resolve("third")
        assert run["status"] == "killed" and run["last_step"] == 2
        assert (tmp_path / "three" / "checkpoint-2").is_dir()

    # the module on its own: the handler current at register() is the one chained to, and it is put back
    calls.clear()

    class Run:
        def end_abnormally(self, status, error):
            calls.append(("end", status))

        def note_signal(self, signum, terminating):
            calls.append(("noted", signum, terminating))

    previous = signal.signal(signal.SIGTERM, user_handler)
    try:
        run = Run()
        lifecycle.register(run)
        assert signal.getsignal(signal.SIGTERM) is not user_handler and lifecycle.installed()
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: ("user", signal.SIGTERM) in calls, timeout=5, what="the user's handler")
        assert calls == [("noted", signal.SIGTERM, False), ("user", signal.SIGTERM)]
        lifecycle.unregister(run)
        assert signal.getsignal(signal.SIGTERM) is user_handler and not lifecycle.installed()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_report_to_hftrain_with_plain_transformers_trainer(tokenizer, lm_data, tmp_path):
    import transformers

    import hftrain.tracking.integration  # noqa: F401  registers the report_to names

    db = os.environ["HFTRAIN_TRACKER_DB"]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "plain"),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=["hftrain"],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="no",
        run_name="plain",
    )
    plain = transformers.Trainer(
        model=build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2),
        args=args,
        train_dataset=lm_data[0],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    assert find_tracker(plain) is not None
    plain.train()
    # an hftrain trainer asked for the same thing twice (report_to and its own tracker) records one run
    ours = _lm_trainer(
        tokenizer,
        lm_data,
        tmp_path / "ours",
        max_steps=2,
        eval_strategy="no",
        report_to=["sqlite"],
        run_name="ours",
        tracker_system_interval=0,
    )
    assert sum(isinstance(cb, TrackerCallback) for cb in ours.callback_handler.callbacks) == 1
    ours.train()
    with TrackerStore(db) as store:
        runs = {r["name"]: r for r in store.runs()}
        assert sorted(runs) == ["ours", "plain"]
        for run in runs.values():
            assert run["status"] == "finished" and [p[0] for p in store.curve(run["id"], "loss")] == [1, 2]
        assert store.params(runs["plain"]["id"])["args.report_to"] == '["hftrain"]'
        assert runs["ours"]["trainer"] == "Trainer"


@pytest.mark.slow
def test_two_process_accelerate_launch_makes_one_run(tmp_path):
    db = os.environ["HFTRAIN_TRACKER_DB"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        "accelerate",
        "launch",
        "--config_file",
        os.path.join(REPO, "accelerate_configs", "cpu_ddp.yaml"),
        SCRIPT,
        str(tmp_path / "out"),
        "--max_steps",
        4,
        "--save_steps",
        2,
    ]
    result = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with TrackerStore(db) as store:
        runs = store.runs()
        assert len(runs) == 1
        (run,) = runs
        details = store.run_details(run["id"])
        assert run["status"] == "finished" and details["system"]["world_size"] == 2
        assert [p[0] for p in store.curve(run["id"], "loss")] == [1, 2, 3, 4]
        assert {a["step"] for a in store.artifacts(run["id"])} == {2, 4}


def test_system_figures_and_tokens_per_second_by_default(tokenizer, tmp_path, monkeypatch):
    """psutil's CPU, memory, disk and network figures are sampled on the sampler thread, and tokens/s is recorded
    without `include_num_input_tokens_seen`: from the `num_tokens` TRL's SFTTrainer logs anyway."""
    from hftrain import SFTConfig, SFTTrainer
    from hftrain.tracking.sysinfo import SystemMonitor

    threads = []
    real_sample = SystemMonitor.sample

    def sample(self):
        threads.append(threading.current_thread().name)
        return real_sample(self)

    monkeypatch.setattr(SystemMonitor, "sample", sample)

    class Slow(TrainerCallback):  # a few sampler intervals per step, so the rates have something to measure
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(0.04)

    train, _ = arithmetic_splits(train_size=32, eval_size=4, seed=0)
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=8, per_device_train_batch_size=4, max_length=32, **COMMON
    )
    args.tracker_system_interval = 0.05
    trainer = SFTTrainer(
        model=build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2),
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[Slow()],
    )
    assert args.include_num_input_tokens_seen in ("no", False)
    trainer.train()
    assert "hftrain-tracker-sampler" in threads  # off the training thread (only the final sample is on it)
    with TrackerStore(os.environ["HFTRAIN_TRACKER_DB"]) as store:
        (run,) = store.runs()
        keys = set(store.metric_keys([run["id"]]))
        for key in ("cpu_percent", "process_cpu_percent", "cpu_rss_mb", "memory_percent", "steps_per_second"):
            assert f"sys/{key}" in keys, sorted(keys)
        assert {"sys/disk_read_mb_s", "sys/net_recv_mb_s"} <= keys or not os.path.exists("/proc/diskstats")
        rates = [v for _, v in store.curve_points(run["id"], "sys/tokens_per_second")]
        assert rates and all(v > 0 for v in rates)
        tokens = [v for _, v in store.curve_points(run["id"], "num_tokens")]
        elapsed = run["end_time"] - run["start_time"]
        assert tokens[-1] / elapsed / 4 < max(rates) < tokens[-1] / 0.04 * 4  # the right order of magnitude


def test_generation_samples_are_tables_in_the_tracker_tensorboard_and_wandb(tokenizer, tmp_path, monkeypatch):
    """Each evaluation's samples reach the tracked run as a table (the report shows it), TensorBoard as a markdown
    text and W&B (offline) as a `wandb.Table`, beside the JSONL file they always were."""
    import glob
    import importlib.util
    import json

    from hftrain.tracking.report import samples_tables

    report_to = [
        name for name in ("tensorboard", "wandb") if importlib.util.find_spec(name.replace("board", "boardX"))
    ]
    report_to += ["tensorboard"] if importlib.util.find_spec("tensorboard") and "tensorboard" not in report_to else []
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train, evaluation = number_spelling_splits(16, 4, seed=0)

    def enc(b):
        out = tokenizer(b["source"])
        out["labels"] = [ids + [tokenizer.eos_token_id] for ids in tokenizer(b["target"])["input_ids"]]
        return out

    model = build_tiny_seq2seq(tokenizer, d_model=32, num_layers=1, num_heads=2)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    settings = {**COMMON, "report_to": report_to or "none"}
    Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(
            output_dir=str(tmp_path / "s2s"),
            max_steps=2,
            per_device_train_batch_size=8,
            eval_strategy="steps",
            eval_steps=2,
            eval_metrics=["exact_match"],
            eval_log_samples=3,
            eval_max_new_tokens=6,
            **settings,
        ),
        train_dataset=train.map(enc, batched=True, remove_columns=train.column_names),
        eval_dataset=evaluation.map(enc, batched=True),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
    ).train()
    written = [json.loads(line) for line in open(tmp_path / "s2s" / "eval_samples" / "eval_step2.jsonl")]
    with TrackerStore(os.environ["HFTRAIN_TRACKER_DB"]) as store:
        (run,) = store.runs()
        (event,) = [e for e in store.events(run["id"]) if e["kind"] == "samples"]
        assert event["step"] == 2 and event["payload"]["name"] == "eval"
        assert [{"step": 2, **row} for row in event["payload"]["rows"]] == written and len(written) == 3
        (table,) = samples_tables(store, [run])
        assert table["columns"] == ["index", "prompt", "generation", "reference"] and len(table["rows"]) == 3
        assert table["rows"][0][1] == written[0]["prompt"]
    if "tensorboard" in report_to:
        from tensorboardX.proto.event_pb2 import Event  # reads the event file the callback wrote

        texts = []
        for path in set(glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True)):
            data = open(path, "rb").read()
            while data:
                (length,) = __import__("struct").unpack("<Q", data[:8])
                event = Event.FromString(data[12 : 12 + length])
                data = data[16 + length :]
                texts += [
                    v.tensor.string_val[0].decode()
                    for v in event.summary.value
                    if v.tag == "eval/samples/text_summary"
                ]
        assert len(texts) == 1 and texts[0].startswith("| index | prompt | generation | reference |")
        assert written[0]["prompt"] in texts[0]
    if "wandb" in report_to:
        pattern = str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "table" / "**" / "*.json")
        (table_file,) = set(glob.glob(pattern, recursive=True))
        logged = json.load(open(table_file))
        assert logged["columns"] == ["index", "prompt", "generation", "reference"] and len(logged["data"]) == 3
