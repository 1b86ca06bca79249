"""The tracker's SQLite store and the `hftrain runs` CLI, on real database files (no training here)."""

import csv
import hashlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from hftrain.cli import main as cli
from hftrain.errors import TrackerError
from hftrain.tracking.store import SCHEMA_VERSION, TrackerStore


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_store_records_params_curves_summary_events(tmp_path):
    db = tmp_path / "runs.db"
    long_value = "x" * 20000
    with TrackerStore(str(db)) as store:
        run = store.create_run("exp", "r1", params={"args.learning_rate": 1e-3, "long": long_value, "lst": [1, 2]})
        for step, loss in enumerate([3.0, 1.0, float("nan"), 2.0], start=1):
            store.log_metrics(run, step, {"loss": loss, "acc": step / 10}, epoch=step / 4)
        store.log_event(run, 4, "nan_loss", {"loss": "nan"})
        summary = store.summary(run)
        assert summary["loss"] == {
            "last_step": 4,
            "last_value": 2.0,
            "min_value": 1.0,
            "min_step": 2,
            "max_value": 3.0,
            "max_step": 1,
        }
        assert summary["acc"]["max_step"] == 4 and summary["acc"]["min_step"] == 1
        curve = store.curve(run, "loss")
        assert [p[0] for p in curve] == [1, 2, 3, 4] and curve[2][1] is None  # NaN kept as a gap, not dropped
        assert [p[2] for p in curve] == [0.25, 0.5, 0.75, 1.0]
        params = store.params(run)
        assert params["long"] == long_value and json.loads(params["lst"]) == [1, 2]
        assert store.events(run) == [
            {"step": 4, "kind": "nan_loss", "payload": {"loss": "nan"}, "wall_time": store.events(run)[0]["wall_time"]}
        ]
        # a resume from step 2 drops later values and rebuilds the summary from what is left
        store.resume_run(run, 2)
        assert [p[0] for p in store.curve(run, "loss")] == [1, 2]
        assert store.summary(run)["loss"]["last_step"] == 2 and store.summary(run)["loss"]["max_value"] == 3.0
        assert store.runs()[0]["status"] == "running"
    assert sqlite3.connect(str(db)).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_running_run_without_heartbeat_reads_as_crashed(tmp_path):
    with TrackerStore(str(tmp_path / "runs.db")) as store:
        stale = store.create_run("e", "stale", heartbeat_timeout=0.2)
        store.create_run("e", "alive", heartbeat_timeout=60)
        time.sleep(0.3)
        status = {r["name"]: r["status"] for r in store.runs()}
        assert status == {"stale": "crashed", "alive": "running"}
        assert [r["name"] for r in store.runs(status="crashed")] == ["stale"]
        store.heartbeat(stale)
        assert store.resolve(str(stale))["status"] == "running"


def _row_points(store, run, key):
    return [(step, value) for step, value, _, _ in store.curve(run, key)]


def test_packed_curves_read_exactly_like_rows_through_every_change(tmp_path):
    """Packed chunks are a read copy: after packing, rewriting a packed step (from this or another connection),
    a resume and more logging, every curve still reads point for point like its rows (NaN as None included)."""
    path = str(tmp_path / "runs.db")
    with TrackerStore(path) as store:
        run, other = store.create_run("e", "run"), store.create_run("e", "other")

        def log(steps):
            for step in steps:
                loss = float("nan") if step % 37 == 0 else 1.0 / step
                store.log_metrics(run, step, {"loss": loss, "acc": step / 1000}, epoch=step / 100)
                store.log_metrics(other, step, {"loss": 2.0 / step})

        def check():
            for key in ("loss", "acc"):
                assert store.curve_points(run, key) == _row_points(store, run, key)
            assert store.curve_points(other, "loss") == _row_points(store, other, "loss")

        def chunks():
            return store.conn.execute("SELECT COUNT(*) FROM metric_chunks WHERE run_id = ?", (run,)).fetchone()[0]

        log(range(1, 301))
        assert store.pack_curves(run, below_step=200) == 2 * 199 and chunks() == 2
        check()
        assert store.curve_points(run, "loss")[36] == (37, None)  # NaN survives packing as a gap
        assert store.pack_curves(run, below_step=250, min_points=100) == 0  # too few new points: left as rows
        store.log_metrics(run, 150, {"loss": 42.0})  # a packed step rewritten: that curve's chunk goes, rows answer
        assert chunks() == 1 and dict(store.curve_points(run, "loss"))[150] == 42.0  # `acc` keeps its chunk
        check()
        assert store.pack_curves(run) == 300 + 101 and chunks() == 3  # loss from scratch, acc from 200 on
        with TrackerStore(path) as second:  # another connection knows nothing of this one's caches
            second.log_metrics(run, 10, {"acc": -1.0})
        assert dict(store.curve_points(run, "acc"))[10] == -1.0
        check()
        store.pack_curves(run, below_step=280)
        store.resume_run(run, 120)  # chunks past the checkpoint go with the rows they copied
        assert store.curve_points(run, "loss")[-1][0] == 120
        check()
        log(range(121, 161))
        store.pack_curves(run)
        check()
        assert store.summary(run)["loss"]["min_value"] == min(
            v for _, v in _row_points(store, run, "loss") if v is not None
        )
        store.delete_runs([run])
        assert chunks() == 0
        assert store.curve_points(other, "loss") == _row_points(store, other, "loss")


def test_copies_a_connection_keeps_follow_other_connections_and_failed_commits(tmp_path):
    """The summary and packing state a writing connection keeps are read again when another connection has
    committed since (a second writer, `runs gc` freeing a run id) and dropped when a commit fails."""
    path = str(tmp_path / "runs.db")
    with TrackerStore(path) as store, TrackerStore(path) as second:
        run = store.create_run("e", "r")
        for step in range(1, 21):
            store.log_metrics(run, step, {"acc": step / 10})
        second.log_metrics(run, 21, {"acc": -1.0})  # a second writer of the same run
        store.log_metrics(run, 22, {"acc": 0.5})
        assert store.summary(run)["acc"]["min_value"] == -1.0 and store.summary(run)["acc"]["min_step"] == 21
        second.pack_curves(run)  # packed elsewhere: this connection must still invalidate what it rewrites
        store.log_metrics(run, 5, {"acc": 42.0})
        assert store.curve_points(run, "acc") == _row_points(store, run, "acc")
        assert dict(store.curve_points(run, "acc"))[5] == 42.0

        second.delete_runs([run])  # `hftrain runs gc` elsewhere; the next run may get the same id
        fresh = store.create_run("e", "fresh")
        store.log_metrics(fresh, 1, {"acc": 7.0})
        assert store.summary(fresh)["acc"] == {
            "last_step": 1,
            "last_value": 7.0,
            "min_value": 7.0,
            "min_step": 1,
            "max_value": 7.0,
            "max_step": 1,
        }

        class FailNextCommit:  # the connection as the store sees it, failing one COMMIT like a full disk would
            def __init__(self, conn):
                self.conn, self.fail = conn, True

            def execute(self, sql, *args):
                if sql == "COMMIT" and self.fail:
                    self.fail = False
                    raise sqlite3.OperationalError("disk I/O error")
                return self.conn.execute(sql, *args)

            def __getattr__(self, name):
                return getattr(self.conn, name)

        for step in range(2, 11):
            store.log_metrics(fresh, step, {"acc": float(step)})
        store.pack_curves(fresh)
        real, store.conn = store.conn, FailNextCommit(store.conn)
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            store.log_metrics(fresh, 4, {"acc": 40.0})  # invalidated the chunk, then did not commit
        store.conn = real
        store.log_metrics(fresh, 6, {"acc": 60.0})
        assert store.curve_points(fresh, "acc") == _row_points(store, fresh, "acc")
        assert dict(store.curve_points(fresh, "acc"))[4] == 4.0 and dict(store.curve_points(fresh, "acc"))[6] == 60.0


def test_version_1_database_is_upgraded_in_place(tmp_path):
    """A database written by the first schema (metrics clustered by key, no chunks) opens, upgrades once, keeps
    every value and takes new writes."""
    from hftrain.tracking.store import _MIGRATIONS

    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO experiments VALUES(1, 'old', 0)")
    conn.execute(
        "INSERT INTO runs(id, uuid, experiment_id, name, status, start_time, heartbeat) "
        "VALUES(1, 'abcdef0123', 1, 'old-run', 'finished', 0, 0)"
    )
    conn.execute("INSERT INTO metric_keys VALUES(1, 'loss')")
    conn.executemany("INSERT INTO metrics VALUES(1, 1, ?, ?, NULL, 0)", [(s, 1.0 / s) for s in range(1, 51)])
    conn.execute("INSERT INTO metric_summary VALUES(1, 1, 50, 0.02, 0.02, 50, 1.0, 1)")
    conn.close()
    with TrackerStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        table = store.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'metrics'").fetchone()[0]
        assert "PRIMARY KEY(run_id, step, key_id)" in table
        assert store.curve_points(1, "loss") == [(s, 1.0 / s) for s in range(1, 51)]
        assert store.resolve("old-run")["last_step"] == 50
        store.log_metrics(1, 51, {"loss": 0.01})
        assert store.pack_curves(1) == 51 and store.curve_points(1, "loss")[-1] == (51, 0.01)
        assert store.summary(1)["loss"]["min_step"] == 51
    with TrackerStore(path) as again:  # opening it again changes nothing
        assert again.curve_points(1, "loss")[:2] == [(1, 1.0), (2, 0.5)]


def _writer(path, index, steps, start):
    start.wait()
    store = TrackerStore(path)
    run = store.create_run("shared", f"worker-{index}", params={"index": index})
    for step in range(1, steps + 1):
        store.log_metrics(run, step, {f"m{k}": step * k + index for k in range(10)})
    store.set_status(run, "finished")
    store.close()


def test_eight_processes_write_one_new_database_at_once(tmp_path):
    path = str(tmp_path / "shared.db")  # does not exist yet: all eight race to create the schema
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    steps = 150
    workers = [ctx.Process(target=_writer, args=(path, i, steps, start)) for i in range(8)]
    for w in workers:
        w.start()
    start.set()
    reads = 0
    while any(w.is_alive() for w in workers):  # a reader (like `hftrain runs list`) polling at the same time
        if os.path.exists(path):
            try:
                with TrackerStore(path) as reader:
                    reader.runs()
                    reads += 1
            except TrackerError as exc:
                assert "locked" not in str(exc)
                raise
        time.sleep(0.02)
    assert [w.exitcode for w in workers] == [0] * 8, "a writer raised (see its stderr)"
    with TrackerStore(path) as store:
        runs = store.runs()
        assert len(runs) == 8 and {r["status"] for r in runs} == {"finished"}
        assert {r["experiment"] for r in runs} == {"shared"}
        total = store.conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        assert total == 8 * steps * 10
        assert store.conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 1
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_corrupt_or_foreign_file_is_a_clear_error_and_left_untouched(tmp_path, capsys):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(str(foreign))
    conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT)")
    conn.execute("INSERT INTO users(email) VALUES('a@b.c')")
    conn.commit()
    conn.close()
    damaged = tmp_path / "damaged.db"
    with TrackerStore(str(damaged)) as store:
        store.create_run("e", "r")
    data = bytearray(damaged.read_bytes())
    data[100:4096] = os.urandom(3996)  # keep the header, wreck the schema page
    damaged.write_bytes(bytes(data))
    for path, words in (
        (garbage, "not an SQLite database"),
        (foreign, "another application"),
        (damaged, "left untouched"),
    ):
        before = _sha(path)
        with pytest.raises(TrackerError) as info:
            TrackerStore(str(path))
        assert str(path) in str(info.value) and words in str(info.value)
        assert cli(["runs", "--db", str(path), "list"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: tracker database") and "Traceback" not in err
        assert _sha(path) == before
    with pytest.raises(TrackerError, match="no such file"):
        TrackerStore(str(tmp_path / "missing.db"), create=False)


def _seed(db):
    with TrackerStore(db) as store:
        a = store.create_run(
            "alpha", "run-a", params={"args.learning_rate": 1e-3, "args.seed": 1, "same": "x"}, tags={"team": "nlp"}
        )
        b = store.create_run(
            "beta", "run-b", params={"args.learning_rate": 1e-4, "args.seed": 1, "same": "x"}, tags={"team": "vision"}
        )
        for step in range(1, 6):
            store.log_metrics(a, step, {"loss": 5.0 - step, "eval_accuracy": step / 10})
            store.log_metrics(b, step, {"loss": 6.0 - step / 2, "eval_accuracy": 0.5 - step / 20})
        store.set_status(a, "finished")
        store.set_status(b, "failed", "RuntimeError: boom")
    return a, b


def test_cli_list_show_compare_filters(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    a, b = _seed(db)
    assert cli(["runs", "--db", db, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == ["run-b", "run-a"]  # newest first
    for flags, expected in (
        (["--experiment", "alpha"], ["run-a"]),
        (["--status", "failed"], ["run-b"]),
        (["--param", "args.learning_rate<5e-4"], ["run-b"]),
        (["--param", "args.learning_rate=0.001"], ["run-a"]),
        (["--param", "args.seed=1"], ["run-b", "run-a"]),
        (["--tag", "team=nlp"], ["run-a"]),
    ):
        assert cli(["runs", "--db", db, "list", "--json", *flags]) == 0
        assert [r["name"] for r in json.loads(capsys.readouterr().out)] == expected, flags
    assert cli(["runs", "--db", db, "list", "--status", "bogus"]) == 2
    assert "--status: expected one of running" in capsys.readouterr().err

    assert cli(["runs", "--db", db, "compare", "run-a", str(b)]) == 0
    out = capsys.readouterr().out
    assert "params that differ (1)" in out and "args.learning_rate" in out
    assert "args.seed" not in out and "same" not in out
    assert "alpha" in out and "beta" in out  # runs from different experiments
    loss_rows = out[out.index("\nloss") + 1 :].splitlines()[:4]
    assert (
        "0 @5" in loss_rows[0] and "3.5 @5" in loss_rows[0] and "min @5" in loss_rows[3]
    )  # last values, best step by min for loss
    acc_rows = out[out.index("\neval_accuracy") + 1 :].splitlines()[:4]
    assert "max @5" in acc_rows[3] and "max @1" in acc_rows[3]  # accuracy: best is the max
    assert cli(["runs", "--db", db, "compare", "--all-params", "run-a", "run-b"]) == 0
    assert "args.seed" in capsys.readouterr().out

    assert cli(["runs", "--db", db, "show", "run-b"]) == 0
    out = capsys.readouterr().out
    assert "RuntimeError: boom" in out and "status      failed" in out
    assert cli(["runs", "--db", db, "show", "nope"]) == 2
    assert "no run matches" in capsys.readouterr().err


def test_cli_export_and_gc(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    a, b = _seed(db)
    out_dir = tmp_path / "export"
    assert cli(["runs", "--db", db, "export", "--out", str(out_dir)]) == 0
    with open(out_dir / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["name"] for r in rows} == {"run-a", "run-b"}
    row_a = next(r for r in rows if r["name"] == "run-a")
    assert row_a["param:args.learning_rate"] == "0.001" and row_a["loss:min"] == "0.0" and row_a["tag:team"] == "nlp"
    with open(out_dir / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 2 * 5 * 2
    runs_json = json.loads((out_dir / "runs.json").read_text())
    assert {r["name"] for r in runs_json} == {"run-a", "run-b"}
    points = {h["run_id"]: h["points"] for h in json.loads((out_dir / "history.json").read_text())}
    assert [p["value"] for p in points[a] if p["key"] == "loss"] == [4.0, 3.0, 2.0, 1.0, 0.0]

    assert cli(["runs", "--db", db, "gc"]) == 2  # refuses to delete without a selection
    capsys.readouterr()
    assert cli(["runs", "--db", db, "gc", "--status", "failed", "--dry-run"]) == 0
    assert "would delete 1 runs" in capsys.readouterr().out
    assert cli(["runs", "--db", db, "gc", "--status", "failed"]) == 0
    assert "deleted 1 runs" in capsys.readouterr().out
    with TrackerStore(db) as store:
        assert [r["name"] for r in store.runs()] == ["run-a"]
        assert store.conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (b,)).fetchone()[0] == 0
        assert store.conn.execute("SELECT COUNT(*) FROM params WHERE run_id = ?", (b,)).fetchone()[0] == 0


def test_user_strings_cannot_break_sql(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    evil = "x'); DROP TABLE runs; --"
    with TrackerStore(db) as store:
        run = store.create_run(evil, evil, params={evil: evil}, tags={evil: evil})
        store.log_metrics(run, 1, {evil: 1.0})
    assert cli(["runs", "--db", db, "list", "--json", "--param", f"{evil}={evil}", "--tag", f"{evil}={evil}"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == [evil]
    with TrackerStore(db) as store:
        assert store.params(run) == {evil: evil} and store.summary(run)[evil]["last_value"] == 1.0
        assert store.resolve(evil)["id"] == run


def test_runs_cli_does_not_import_transformers(tmp_path):
    db = str(tmp_path / "runs.db")
    _seed(db)
    code = (
        "import sys; from hftrain.cli import main; "
        f"assert main(['runs', '--db', {db!r}, 'list']) == 0; "
        f"assert main(['runs', '--db', {db!r}, 'compare', '1', '2']) == 0; "
        f"assert main(['runs', '--db', {db!r}, 'report', '-o', {str(tmp_path / 'r.html')!r}]) == 0; "
        f"assert main(['runs', '--db', {db!r}, 'show', '1']) == 0; "
        f"assert main(['runs', '--db', {db!r}, 'export', '--out', {str(tmp_path / 'x')!r}]) == 0; "
        f"assert main(['runs', '--db', {db!r}, 'gc', '--status', 'failed']) == 0; "
        "heavy = [m for m in ('transformers', 'trl', 'torch', 'accelerate', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_writes_queued_behind_a_commit_are_committed_together_and_each_stays_whole(tmp_path):
    import threading

    from hftrain.tracking.writer import TrackerWriter

    store = TrackerStore(str(tmp_path / "runs.db"))
    run = store.create_run("e", "grouped")
    failures, gate = [], threading.Event()
    writer = TrackerWriter(store, lambda what, step, exc: failures.append((what, step, str(exc))))
    writer.start()
    writer.submit("blocker", 0, gate.wait, 10)  # holds the writer, so what follows queues up into one group

    def bad(run_id, step):
        store.log_metrics(run_id, step, {"loss": 9.0})  # written, then undone with its savepoint
        raise RuntimeError("disk hiccup")

    def failing_log(run_id, step):
        with store.transaction():
            bad(run_id, step)

    writer.submit("log", 1, store.log_metrics, run, 1, {"loss": 3.0})
    writer.submit("log", 2, failing_log, run, 2)
    writer.submit("log", 3, store.log_metrics, run, 3, {"loss": 1.0})
    gate.set()
    assert writer.flush(10) and writer.close(10)
    reader = TrackerStore(str(tmp_path / "runs.db"))
    assert reader.curve_points(run, "loss") == [(1, 3.0), (3, 1.0)]
    summary = reader.summary(run)["loss"]
    assert (summary["last_step"], summary["min_value"], summary["max_value"]) == (3, 1.0, 3.0)
    assert failures == [("log", 2, "disk hiccup")]


def test_packing_builds_chunks_from_the_rows_this_connection_wrote(tmp_path):
    """The writer's own rows since the last pack are kept in memory, so packing never reads the metrics table back
    while the tail is known; rewrites of unpacked steps, older unpacked steps logged late and NaN all land in the
    chunks exactly as the rows hold them, and an unknown tail (a resume) falls back to reading the rows."""
    path = str(tmp_path / "runs.db")
    with TrackerStore(path) as store:
        run = store.create_run("e", "run")
        statements: list[str] = []
        store.conn.set_trace_callback(statements.append)
        for step in range(1, 121):
            store.log_metrics(run, step, {"loss": float("nan") if step % 9 == 0 else 1.0 / step, "acc": step / 100})
        store.log_metrics(run, 120, {"loss": 7.0})  # the newest step logged again: replaced
        store.log_metrics(run, 50, {"eval": 0.5})  # a new curve starting behind the others' newest step
        store.log_metrics(run, 30, {"eval": 0.3})  # ... and a point behind its own newest, still unpacked
        statements.clear()
        assert store.pack_curves(run, below_step=100) == 2 * 99 + 2
        assert not [s for s in statements if "FROM metrics " in s]  # built from memory
        for step in range(121, 201):
            store.log_metrics(run, step, {"loss": 1.0 / step, "acc": step / 100})
        statements.clear()
        assert store.pack_curves(run) == 2 * 101
        assert not [s for s in statements if "FROM metrics " in s]
        store.conn.set_trace_callback(None)
        for key in ("loss", "acc", "eval"):
            assert store.curve_points(run, key) == _row_points(store, run, key)
        assert dict(store.curve_points(run, "loss"))[120] == 7.0 and store.curve_points(run, "eval") == [
            (30, 0.3),
            (50, 0.5),
        ]
        store.resume_run(run, 150)  # the tail is unknown again: the next pack reads the rows once
        for step in range(151, 171):
            store.log_metrics(run, step, {"loss": 2.0 / step})
        statements.clear()
        store.conn.set_trace_callback(statements.append)
        assert store.pack_curves(run) == 51 + 20 + 51  # the chunk past step 150 went: loss and acc from step 100
        assert [s for s in statements if "FROM metrics " in s]
        store.conn.set_trace_callback(None)
        for key in ("loss", "acc"):
            assert store.curve_points(run, key) == _row_points(store, run, key)
