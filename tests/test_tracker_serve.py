"""`hftrain runs serve` end to end: a real training process writes its run, the real CLI serves the database
read-only on 127.0.0.1, and headless Chromium (over the DevTools protocol) watches new points arrive in the page
without a reload; screenshots and the chart elements are checked, and the server refuses what it should."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from test_tracker_report import CHART_FACTS, Browser, save_screenshot, wait_for

from hftrain.errors import TrackerError
from hftrain.tracking.server import ReadOnlyStore
from hftrain.tracking.store import TrackerStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A real hftrain Trainer on the tiny Llama, slowed by 20 ms a step; it holds after step 10 until the file `go` exists
# and after step 150 until `finish` exists (bounded), so the test sees it start, grow and stay running at will.
TRAIN = """
import os, sys, time
from transformers import DataCollatorForLanguageModeling, TrainerCallback
from hftrain import Trainer, TrainingArguments
from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer

class Pace(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.02)
        for step, name in ((11, "go"), (151, "finish")):
            deadline = time.monotonic() + 120
            while state.global_step == step and not os.path.exists(os.path.join(sys.argv[4], name)):
                assert time.monotonic() < deadline, "the test never said " + name
                time.sleep(0.05)

tok = build_tokenizer()
train, test = arithmetic_splits(train_size=64, eval_size=8, seed=0, fmt="text")
enc = lambda b: tok(b["text"], truncation=True, max_length=32)
train = train.map(enc, batched=True, remove_columns=train.column_names)
test = test.map(enc, batched=True, remove_columns=test.column_names)
args = TrainingArguments(
    output_dir=sys.argv[2], run_name="training-now", max_steps=int(sys.argv[3]), per_device_train_batch_size=4,
    learning_rate=1e-3, logging_steps=1, eval_strategy="steps", eval_steps=40, save_strategy="no", report_to="none",
    use_cpu=True, disable_tqdm=True, seed=0, tracker_db=sys.argv[1], tracker_system_interval=0.5,
)
Trainer(model=build_tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2), args=args, train_dataset=train,
        eval_dataset=test, data_collator=DataCollatorForLanguageModeling(tok, mlm=False), callbacks=[Pace()]).train()
"""


def _short_run(db):
    """A finished 20-step run beside the one that trains."""
    with TrackerStore(db) as store:
        run = store.create_run("default", "short-20")
        for step in range(1, 21):
            store.log_metrics(run, step, {"loss": 2.0 / step + 0.5, "learning_rate": 1e-3 * (1 - step / 20)})
        store.log_metrics(run, 20, {"eval_loss": 0.7})
        store.set_status(run, "finished")
    return run


def _loss_points(db, name):
    try:
        with ReadOnlyStore(db) as store:
            runs = [r for r in store.runs() if r["name"] == name]
            return (runs[0]["id"], len(store.curve_points(runs[0]["id"], "loss"))) if runs else (None, 0)
    except (TrackerError, sqlite3.Error):
        return None, 0  # not created yet


def _serve(db, *extra):
    """The real CLI, serving on a free port; returns (process, url)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hftrain.cli", "runs", "--db", db, "serve", "--port", "0", *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()  # "serving DB at URL (read-only; Ctrl-C to stop)"
    assert line.startswith("serving "), line + proc.stdout.read()
    return proc, line.split(" at ")[1].split()[0]


def _request(url, data=None, host=None):
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_shows_a_training_run_live(tmp_path):
    db = str(tmp_path / "runs.db")
    short = _short_run(db)
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    log = open(tmp_path / "train.log", "w+")
    trainer = subprocess.Popen(
        [sys.executable, str(script), db, str(tmp_path / "out"), "160", str(tmp_path)],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    failure = lambda: (tmp_path / "train.log").read_text()[-3000:]  # noqa: E731
    server = None
    try:
        deadline = time.monotonic() + 120
        while _loss_points(db, "training-now")[1] < 10:  # the run exists, has trained 10 steps and holds
            assert trainer.poll() is None, failure()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        server, url = _serve(db, "--interval", "0.3")
        assert url.startswith("http://127.0.0.1:")
        with Browser() as browser:
            browser.open(url)
            live_id = _loss_points(db, "training-now")[0]
            points = f"hftrainReport.state().points.loss['{live_id}']"
            drawn = (
                "document.querySelector('.card[data-key=loss] .plot').data"
                f".filter(function (t) {{ return t.meta === {live_id}; }})[0].x.length"
            )
            loaded_at = browser.js("hftrainReport.page.loadedAt")
            assert browser.js(points) == browser.js(drawn) == 10
            (tmp_path / "go").touch()
            wait_for(browser, f"{points} === 150 && {drawn} === 150", timeout=90)  # and holds there
            # every chart took the new points in, axes included (a curve that grows in place is still redrawn)
            lr_axis = "document.querySelector('.card[data-key=learning_rate] .plot')._fullLayout.xaxis.range[1]"
            assert wait_for(browser, f"{lr_axis} >= 150 && {lr_axis}")
            # the same document all along: no reload, the page appended what the server sent
            assert browser.js("hftrainReport.page.loadedAt") == loaded_at
            assert browser.js("performance.getEntriesByType('navigation').length") == 1
            assert int(browser.js("document.body.dataset.liveUpdates")) >= 1
            assert "live, updated" in browser.js("document.getElementById('live-status').textContent")
            _check_charts(browser, live_id, short)
            status = f"document.querySelector('#runs tr[data-run=\"{live_id}\"] .status').textContent"
            assert browser.js(status) == "running"
            save_screenshot(browser, tmp_path, "serve.png")
            (tmp_path / "finish").touch()
            assert trainer.wait(timeout=120) == 0, failure()
            wait_for(browser, f"{status} === 'finished'", timeout=30)
            assert browser.js(points) == 160 and not browser.errors(), browser.errors()
            # the server only reads, in short transactions: while the page polls, a writer still checkpoints the
            # whole WAL (TRUNCATE waits for no reader to be left behind)
            with sqlite3.connect(db, timeout=5) as conn:
                assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        _check_refusals(url)
    finally:
        if trainer.poll() is None:
            trainer.kill()
        trainer.wait()
        log.close()
        if server is not None:
            server.send_signal(signal.SIGINT)
            out, _ = server.communicate(timeout=30)
            assert server.returncode == 0 and out.strip().endswith("stopped"), out


def _check_charts(browser, live_id, short):
    """The live page's charts: ticks, gridlines and titles, both runs, eval points, the sticky legend."""
    wait_for(browser, "hftrainReport.state().charts.indexOf('eval_loss') >= 0", timeout=60)
    charts = {c["key"]: c for c in browser.js(CHART_FACTS)}
    for key in ("loss", "learning_rate", "eval_loss", "sys/cpu_percent"):
        chart = charts[key]
        assert chart["xticks"] >= 3 and chart["yticks"] >= 3 and chart["xgrid"] and chart["ytitle"], chart
        assert live_id in {t["run"] for t in chart["traces"]} and chart["xtitle"] == "step", chart
    assert {t["run"] for t in charts["loss"]["traces"]} == {live_id, short}
    assert browser.js("getComputedStyle(document.getElementById('bar')).position") == "sticky"


def _check_refusals(url):
    """It answers this machine's names only, only its two paths, and bad input with 400."""
    port = url.rsplit(":", 1)[1].rstrip("/")
    assert _request(url, host=f"evil.example:{port}")[0] == 403
    assert _request(url + "api/update", data=b"{}", host=f"evil.example:{port}")[0] == 404
    assert _request(url + "../../etc/passwd")[0] == 404
    status, body = _request(url + "api/update", data=json.dumps({"known": {"x": {"loss": "y"}}}).encode())
    assert status == 200 and {r["name"] for r in json.loads(body)["runs"]} == {"training-now", "short-20"}
    assert _request(url + "api/update", data=b"not json")[0] == 400


def test_read_only_store_cannot_write(tmp_path):
    db = str(tmp_path / "runs.db")
    run = _short_run(db)
    before = os.path.getmtime(db), os.path.getsize(db)
    with ReadOnlyStore(db) as store:
        assert len(store.curve_points(run, "loss")) == 20
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.conn.execute("DELETE FROM runs")
    assert (os.path.getmtime(db), os.path.getsize(db)) == before
    with pytest.raises(TrackerError, match="no such file"):
        ReadOnlyStore(str(tmp_path / "missing.db"))
    (tmp_path / "other.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(TrackerError, match="cannot be read|not an hftrain"):
        ReadOnlyStore(str(tmp_path / "other.db"))
