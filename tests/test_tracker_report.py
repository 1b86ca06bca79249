"""The HTML report in real headless Chromium, driven over the DevTools protocol: every chart renders with ticks,
gridlines, axis titles, hover values, zoom and log scales, panels are grouped, only per-step training series are
smoothed, single values are numbers, samples are tables, studies get Optuna's views, and hostile user strings
(run names, tags, params, metric names, a U+202E override) stay text, never markup, script or reversed neighbours."""

import base64
import json
import math
import os
import random
import select
import shutil
import struct
import subprocess
import tempfile
import time

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
    "--hide-scrollbars",
]

# Each payload, if it ever executed, would set an attribute on <body> that the page state would show.
HOSTILE = [
    "</script><script>document.body.setAttribute('data-pwned','script')</script>",
    "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">",
    "'; DROP TABLE runs; --",
    "<svg onload=\"document.body.setAttribute('data-pwned','svg')\">",
]
RLO = "rtl\u202eevil"  # an unterminated right-to-left override: it must not reverse anything outside its own string


class Browser:
    """Headless Chromium over `--remote-debugging-pipe` (the DevTools protocol on fds 3 and 4, NUL-separated JSON):
    the standard library is the whole client. One page; `page(method, ...)` sends a command to it."""

    def __init__(self, width=1400, height=1000):
        if not os.path.exists(CHROMIUM):
            pytest.fail(f"chromium not found at {CHROMIUM}: .ci/run installs Debian's chromium package")
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        commands, self._out = os.pipe()
        self._in, replies = os.pipe()

        def wire():  # in the child: the protocol wants the command pipe on fd 3 and the reply pipe on fd 4
            a, b = os.dup(commands), os.dup(replies)  # both above 4 first, so one dup2 cannot undo the other
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}"],
            preexec_fn=wire,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands)
        os.close(replies)
        self._buffer, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Runtime.enable")
        self.viewport(width, height)

    def _message(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the protocol pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, session=None, timeout=60, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def page(self, method, **params):
        return self.call(method, session=self.session, **params)

    def js(self, expression):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def viewport(self, width, height):
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def open(self, url, timeout=60):
        """Load `url` and wait until every chart of the report has rendered."""
        self.page("Page.navigate", url=url)
        wait_for(
            self,
            "!!document.body && +document.body.dataset.chartsExpected > 0 && "
            "document.body.dataset.chartsRendered === document.body.dataset.chartsExpected",
            timeout,
        )

    def errors(self):
        """Uncaught exceptions and console errors the page has reported so far."""
        bad = []
        for event in self.events:
            if event.get("method") == "Runtime.exceptionThrown":
                bad.append(event["params"]["exceptionDetails"])
            elif event.get("method") == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
                bad.append(event["params"]["args"])
        return bad

    def click(self, x, y):
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def drag(self, x0, y0, x1, y1):
        self.page("Input.dispatchMouseEvent", type="mouseMoved", x=x0, y=y0)
        self.page("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", clickCount=1)
        for i in range(1, 6):
            x, y = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
            self.page("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
        self.page("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y1, button="left", clickCount=1)

    def screenshot(self, path, width=1400):
        """A PNG of the whole page at `width` CSS pixels."""
        height = min(int(self.js("document.documentElement.scrollHeight")), 12000)
        self.viewport(width, height)
        time.sleep(1.0)  # responsive charts re-lay themselves out to the new viewport
        data = self.page("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass  # it may already be gone; it is killed below if not
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)
        self.profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_for(browser, expression, timeout=30, every=0.1):
    """Poll a JavaScript expression until it is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = browser.js(expression)
        except AssertionError:
            value = None  # the page is between documents
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(every)


def png_size(path):
    """(width, height) of a PNG, from its IHDR chunk."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def save_screenshot(browser, tmp_path, name):
    """A full-page screenshot in tmp_path, also copied to $HFTRAIN_SCREENSHOTS (a folder) when that is set."""
    path = browser.screenshot(str(tmp_path / name))
    width, height = png_size(path)
    assert width == 1400 and height > 900 and os.path.getsize(path) > 40_000  # a rendered page, not a blank one
    if os.environ.get("HFTRAIN_SCREENSHOTS"):
        shutil.copy(path, os.path.join(os.environ["HFTRAIN_SCREENSHOTS"], name))
    return path


# Read in the page: what an experienced user looks for in each chart.
CHART_FACTS = """(function () {
  return Array.prototype.map.call(document.querySelectorAll('#panels .card'), function (card) {
    var gd = card.querySelector('.plot');
    var text = function (sel) { return Array.prototype.map.call(gd.querySelectorAll(sel), function (t) { return t.textContent; }); };
    return { key: card.dataset.key, group: card.closest('details').dataset.group,
             xticks: text('.xtick text').length, yticks: text('.ytick text').length,
             xgrid: gd.querySelectorAll('.gridlayer .xgrid').length, ygrid: gd.querySelectorAll('.gridlayer .ygrid').length,
             xtitle: text('.g-xtitle text')[0] || '', ytitle: text('.g-ytitle text')[0] || '',
             xtype: gd._fullLayout.xaxis.type, ytype: gd._fullLayout.yaxis.type,
             traces: gd.data.map(function (t) { return { run: t.meta, mode: t.mode, n: t.x.length, opacity: t.opacity === undefined ? 1 : t.opacity,
                                                        last: t.y[t.y.length - 1], visible: t.visible }; }) };
  });
})()"""

# Every text that holds the override must sit in an isolate of its own string (<bdi>, dir=auto, or U+2068..U+2069
# where plotly draws), which ends where that string ends: the override can turn nothing else around.
ISOLATION = """(function () {
  var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), bad = [], seen = 0, node;
  while ((node = walker.nextNode())) {
    if (node.nodeValue.indexOf('\\u202e') < 0 || node.parentNode.closest('script')) continue;
    seen += 1;
    var svg = node.parentNode.closest('svg'), isolate = node.parentNode.closest('bdi, [dir=auto]');
    var ok = svg ? /^[^\\u202e]*\\u2068[^\\u2069]*\\u202eevil\\u2069[^\\u202e]*$/.test(node.parentNode.closest('text').textContent)
                 : !!isolate && /\\u202eevil\\u2069?$/.test(isolate.textContent);
    if (!ok) bad.push((isolate || node.parentNode).outerHTML.slice(0, 200));
  }
  return { seen: seen, bad: bad };
})()"""


def _seed_hostile(db):
    with TrackerStore(db) as store:
        ids = []
        for index, evil in enumerate(HOSTILE + [RLO]):
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
                    {"loss": 3.0 / step + index, "eval_accuracy": step / 40 + index / 10, evil: float(step)},
                )
            store.log_metrics(run, 21, {"loss": float("nan")})  # a NaN gap must not break a chart
            store.log_event(run, 20, "samples", {"name": "eval", "rows": [{"prompt": evil, "generation": evil}]})
            store.set_status(run, "finished")
            ids.append(run)
    return ids


def seed_long_and_short(db, rng_seed=0):
    """A 1,000-step run beside a 20-step run, as training records them: per-step loss/lr/grad norm, evaluations
    (the 20-step run's last eval_loss is 0.055), sys/ samples, a curriculum share, a metric of no known kind, single
    end-of-training values and a samples table. Returns (long id, short id)."""
    rng = random.Random(rng_seed)
    ids = []
    with TrackerStore(db) as store:
        for name, steps, lr, every in (("long-1000", 1000, 1e-3, 100), ("short-20", 20, 3e-3, 5)):
            run = store.create_run("demo", name, params={"args.learning_rate": lr, "args.max_steps": steps})
            for step in range(1, steps + 1):
                decay = math.exp(-4 * step / steps)
                values = {
                    "loss": 2.5 * decay + 0.3 + rng.gauss(0, 0.2),
                    "learning_rate": lr * (1 - step / steps),
                    "grad_norm": abs(rng.gauss(1.0, 0.3)),
                    "epoch": step / steps,
                    "curriculum/open_share": min(1.0, 0.2 + step / steps),
                    "custom_metric": rng.random(),
                }
                if step % every == 0:
                    values.update({"eval_loss": 2.5 * decay + 0.0092, "eval_runtime": 0.5})
                if step % 10 == 0:
                    values.update(
                        {"sys/steps_per_second": 8 + rng.random(), "sys/cpu_percent": 60 + 30 * rng.random()}
                    )
                store.log_metrics(run, step, values)
            store.log_metrics(run, steps, {"train_runtime": steps / 8.0, "total_flos": 1.5e12})
            rows = [
                {"index": i, "prompt": f"{i}+{i}=", "generation": str(2 * i), "reference": str(2 * i)}
                for i in range(4)
            ]
            store.log_event(run, steps, "samples", {"name": "eval", "rows": rows})
            store.set_status(run, "finished")
            ids.append(run)
    return ids


def test_report_renders_in_chromium_and_user_strings_stay_text(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    ids = _seed_hostile(db)
    report = tmp_path / "report.html"
    assert cli(["runs", "--db", db, "report", "-o", str(report)]) == 0
    capsys.readouterr()
    source = report.read_text()
    assert "default-src 'none'" in source and "connect-src" not in source  # the page can fetch nothing
    for evil in HOSTILE:
        assert "<" not in evil or evil not in source  # markup is escaped everywhere it is written into the file

    with Browser() as browser:
        browser.open(report.as_uri())
        body = browser.js("Object.assign({}, document.body.dataset)")
        assert int(body["chartsExpected"]) == 2 + len(HOSTILE) + 1  # loss, eval_accuracy, one per hostile name
        assert "errors" not in body and "pwned" not in body, body
        assert browser.js("document.querySelectorAll('img').length") == 0
        # plotly.js, the JSON data and the page's script: nothing injected
        assert browser.js("document.querySelectorAll('script').length") == 3
        text = browser.js("document.body.innerText")
        for evil in HOSTILE:
            assert evil in text  # shown, as text, in the runs table, the legend, chart titles and the config diff
        isolation = browser.js(ISOLATION)
        assert isolation["seen"] >= 6 and not isolation["bad"], isolation  # tables, legend, charts, samples
        assert not browser.errors(), browser.errors()

    # and the SQL: the hostile strings were bound, not spliced; everything is still there and filterable
    with TrackerStore(db) as store:
        assert len(store.runs()) == len(HOSTILE) + 1
        assert [r["id"] for r in store.runs(tags=[(HOSTILE[2], HOSTILE[2])])] == [ids[2]]
        assert store.resolve(HOSTILE[2])["id"] == ids[2]
        assert store.params(ids[2])[HOSTILE[2]] == HOSTILE[2]


def test_report_charts_are_readable_grouped_and_interactive(tmp_path, capsys):
    """A 1,000-step run beside a 20-step run: real ticks, gridlines and axis titles on every chart, grouped panels with
    the common metrics first, a log step axis by default (so the short run is not squeezed), smoothing only on
    per-step training series, eval as points at their true values, single values as numbers, samples as a table,
    and the controls: hover, zoom, log y, relative time, run toggles, a legend that stays on screen."""
    db = str(tmp_path / "runs.db")
    long_id, short_id = seed_long_and_short(db)
    report = tmp_path / "report.html"
    assert cli(["runs", "--db", db, "report", "-o", str(report)]) == 0
    capsys.readouterr()
    with Browser() as browser:
        browser.open(report.as_uri())
        charts = browser.js(CHART_FACTS)
        keys = [c["key"] for c in charts]
        assert keys[:3] == ["loss", "learning_rate", "grad_norm"]
        assert [c["group"] for c in charts] == sorted(
            (c["group"] for c in charts), key=["train", "eval", "system", "curriculum", "other"].index
        )
        assert keys.index("eval_loss") < keys.index("eval_runtime")
        assert {"sys/steps_per_second", "curriculum/open_share", "custom_metric"} <= set(keys)
        for chart in charts:
            assert chart["xticks"] >= 3 and chart["yticks"] >= 3, chart
            assert chart["xgrid"] and chart["ygrid"], chart
            assert chart["xtitle"] == "step (log scale)" and chart["xtype"] == "log", chart
            assert chart["key"] in chart["ytitle"], chart
        by_key = {c["key"]: c for c in charts}
        loss = by_key["loss"]["traces"]
        assert len(loss) == 4 and sorted(t["opacity"] for t in loss)[:2] == [0.3, 0.3]  # raw faint + smoothed, per run
        for key in ("learning_rate", "eval_loss", "sys/cpu_percent", "curriculum/open_share"):
            assert len(by_key[key]["traces"]) == 2, key  # never smoothed
        eval_short = next(t for t in by_key["eval_loss"]["traces"] if t["run"] == short_id)
        assert "markers" in eval_short["mode"] and eval_short["n"] == 4
        assert eval_short["last"] == pytest.approx(2.5 * math.exp(-4) + 0.0092)  # drawn at its value, 0.055
        assert "train_runtime" not in keys and "total_flos" not in keys
        assert browser.js("document.querySelector('#scalars tr[data-key=train_runtime]').innerText").split()[1:] == [
            "125",
            "2.5",
        ]
        assert browser.js("document.querySelectorAll('#samples tbody tr').length") == 4
        _check_controls(browser, short_id)
        browser.js(f"document.querySelector('#legend button[data-run=\"{short_id}\"]').click()")
        browser.js("var s=document.getElementById('xmode'); s.value='logstep'; s.dispatchEvent(new Event('change'))")
        save_screenshot(browser, tmp_path, "report.png")


def _check_controls(browser, short_id):
    """Hover, zoom, log y, relative time, hiding a run, and the legend staying on screen."""
    # hover: a value under the pointer
    box = browser.js(
        "(function(){var r=document.querySelector('.card[data-key=loss] .nsewdrag').getBoundingClientRect();"
        "return [r.x, r.y, r.width, r.height];})()"
    )
    browser.page("Input.dispatchMouseEvent", type="mouseMoved", x=box[0] + box[2] * 0.8, y=box[1] + box[3] / 2)
    hover = wait_for(browser, "document.querySelector('.card[data-key=loss] .hoverlayer').textContent")
    assert "long-1000" in hover and any(ch.isdigit() for ch in hover)
    # zoom: drag a box, the x range narrows
    browser.drag(box[0] + box[2] * 0.5, box[1] + box[3] * 0.3, box[0] + box[2] * 0.7, box[1] + box[3] * 0.9)
    zoomed = browser.js("document.querySelector('.card[data-key=loss] .plot')._fullLayout.xaxis.range")
    assert zoomed[1] - zoomed[0] < 1.0  # log10 units: the full view spans 3
    # log y on one chart; relative time for all; hiding a run
    browser.js("document.querySelector('.card[data-key=grad_norm] button').click()")
    wait_for(browser, "document.querySelector('.card[data-key=grad_norm] .plot')._fullLayout.yaxis.type === 'log'")
    browser.js("var s=document.getElementById('xmode'); s.value='time'; s.dispatchEvent(new Event('change'))")
    wait_for(browser, "document.querySelector('.card[data-key=loss] .g-xtitle').textContent.indexOf('time') === 0")
    browser.js(f"document.querySelector('#legend button[data-run=\"{short_id}\"]').click()")
    facts = {c["key"]: c for c in browser.js(CHART_FACTS)}
    assert all(t["visible"] is False for t in facts["loss"]["traces"] if t["run"] == short_id)
    # the legend stays on screen when the page is scrolled
    browser.js("window.scrollTo(0, document.body.scrollHeight)")
    top = wait_for(browser, "window.scrollY > 500 && document.getElementById('bar').getBoundingClientRect().top + 1")
    assert top == 1
    assert not browser.errors(), browser.errors()
    browser.js("window.scrollTo(0, 0)")


def test_report_study_has_optunas_views(tmp_path, capsys):
    """Runs of an `hftrain tune` study: the trials table and Optuna's history, importances, parallel coordinates and
    one slice per parameter, drawn with axes; learning rates on a log axis, not printed unrounded."""
    db = str(tmp_path / "runs.db")
    with TrackerStore(db) as store:
        for number, (lr, warmup) in enumerate([(1e-4, 0), (3e-4, 5), (1e-3, 10), (3e-3, 0), (1e-2, 5), (2e-3, 10)]):
            run = store.create_run(
                "sft-lr", f"trial-{number}", params={"trial.learning_rate": lr, "trial.warmup": warmup}
            )
            store.set_tags(run, {"study": "sft-lr", "trial_number": number, "study_metric": "eval_loss"})
            store.log_metrics(run, 10, {"objective": abs(math.log10(lr) + 2.6) + warmup / 100, "loss": 1.0})
            store.set_status(run, "finished")
    report = tmp_path / "study.html"
    assert cli(["runs", "--db", db, "report", "-o", str(report)]) == 0
    capsys.readouterr()
    page = report.read_text()
    assert 'data-study="sft-lr"' in page and page.count('class="study-plot"') == 3  # history + one per param
    with Browser() as browser:
        browser.page("Page.navigate", url=report.as_uri())
        views = wait_for(
            browser,
            "document.querySelectorAll('figure[data-kind] .main-svg').length >= 5 && Array.prototype.map.call("
            "document.querySelectorAll('figure[data-kind]'), function (f) { var gd = f.querySelector('.plot');"
            " return [f.dataset.kind, gd ? gd.data.length : 0, gd ? f.querySelectorAll('.xtick, .tick').length : 0,"
            " f.textContent]; })",
        )
        kinds = [v[0] for v in views]
        assert kinds == ["history", "importances", "parallel", "slice", "slice"], views
        assert all(v[1] >= 1 and v[2] >= 2 for v in views), views  # each drawn, with ticks
        lr_axis = browser.js(
            "(function(){var gd=document.querySelectorAll('figure[data-kind=slice] .plot')[0];"
            "return [gd._fullLayout.xaxis.type, gd._fullLayout.xaxis.title.text];})()"
        )
        assert lr_axis[0] == "log" and "learning_rate" in lr_axis[1]
        assert "0.0031622" not in browser.js("document.body.innerText")
        assert not browser.errors(), browser.errors()
