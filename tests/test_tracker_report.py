"""The HTML report opened in real headless Chromium: every chart renders, no console errors, and hostile user strings
(run names, tags, params, metric names) show up as text, never as markup or script, and never break the SQL."""

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest

from hftrain.cli import main as cli
from hftrain.tracking.store import TrackerStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Each payload, if it ever executed, would set an attribute on <body> that the dumped DOM would show.
HOSTILE = [
    "</script><script>document.body.setAttribute('data-pwned','script')</script>",
    "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">",
    "'; DROP TABLE runs; --",
    "<svg onload=\"document.body.setAttribute('data-pwned','svg')\">",
]


def chromium(*args, timeout=180):
    """Run Debian's chromium headless with a throwaway profile; returns (stdout, stderr)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"chromium not found at {CHROMIUM}: .ci/run installs Debian's chromium package")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, result.stderr


class _Dom(HTMLParser):
    """Tags, attributes and text of a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.tags, self.text, self.body = [], [], {}

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "body":
            self.body = dict(attrs)

    def handle_data(self, data):
        self.text.append(data)


def _seed(db):
    with TrackerStore(db) as store:
        ids = []
        for index, evil in enumerate(HOSTILE):
            run = store.create_run(
                f"exp {evil}",
                evil,
                params={evil: evil, "args.learning_rate": 10.0 ** -(index + 2)},
                tags={evil: evil, "team": "nlp"},
            )
            for step in range(1, 21):
                store.log_metrics(
                    run,
                    step,
                    {
                        "loss": 3.0 / step + index,
                        "eval_accuracy": step / 40 + index / 10,
                        evil: float(step),
                        "sys/cpu_rss_mb": 100.0 + step,
                    },
                )
            store.log_metrics(run, 21, {"loss": float("nan")})  # a NaN gap must not break a chart
            store.set_status(run, "finished")
            ids.append(run)
    return ids


def test_report_renders_in_chromium_and_user_strings_stay_text(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    ids = _seed(db)
    report = tmp_path / "report.html"
    assert cli(["runs", "--db", db, "report", "-o", str(report), "--smooth", "0.6"]) == 0
    capsys.readouterr()
    source = report.read_text()
    assert "http://" not in source.replace("http://www.w3.org/2000/svg", "") and "https://" not in source
    assert source.count("<script") == 2  # the JSON data block and the drawing script, nothing injected

    dom_text, log = chromium(
        "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()
    )
    dom = _Dom()
    dom.feed(dom_text)
    expected = int(dom.body["data-charts-expected"])
    assert expected == 2 + 1 + len(HOSTILE)  # loss, eval_accuracy, sys/cpu_rss_mb and one metric per hostile name
    assert dom.body.get("data-charts-rendered") == str(expected), dom.body
    assert sum(1 for tag, attrs in dom.tags if tag == "svg" and attrs.get("class") == "plot") == expected
    assert sum(1 for tag, attrs in dom.tags if tag == "path" and attrs.get("class") == "raw") >= expected
    assert "data-errors" not in dom.body and "data-pwned" not in dom.body, dom.body
    assert not [t for t, _ in dom.tags if t == "img"]
    assert [t for t, _ in dom.tags].count("script") == 2
    text = "".join(dom.text)
    for evil in HOSTILE:
        assert evil in text  # shown, as text, in the runs table, the legend, chart titles and the config diff
    bad = [line for line in log.splitlines() if "Uncaught" in line or "CONSOLE" in line]
    assert not bad, bad

    # and the SQL: the hostile strings were bound, not spliced; everything is still there and filterable
    with TrackerStore(db) as store:
        assert len(store.runs()) == len(HOSTILE)
        assert [r["id"] for r in store.runs(tags=[(HOSTILE[2], HOSTILE[2])])] == [ids[2]]
        assert store.resolve(HOSTILE[2])["id"] == ids[2]
        assert store.params(ids[2])[HOSTILE[2]] == HOSTILE[2]


def test_report_smoothing_slider_keeps_raw_data(tmp_path, capsys):
    """Smoothing is drawn over the raw curve, never instead of it: both paths exist for every run and chart."""
    db = str(tmp_path / "runs.db")
    _seed(db)
    report = tmp_path / "report.html"
    assert cli(["runs", "--db", db, "report", "-o", str(report), "--smooth", "0.9", "--metric", "loss"]) == 0
    capsys.readouterr()
    dom_text, _ = chromium("--virtual-time-budget=5000", "--dump-dom", report.as_uri())
    dom = _Dom()
    dom.feed(dom_text)
    assert dom.body.get("data-charts-rendered") == dom.body.get("data-charts-expected") == "1"
    kinds = [attrs.get("class") for tag, attrs in dom.tags if tag == "path"]
    assert kinds.count("raw") == len(HOSTILE) and kinds.count("smooth") == len(HOSTILE)
