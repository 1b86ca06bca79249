"""One self-contained static HTML report of runs: runs table, a chart per metric with the runs overlaid, and the
config diff. No server, no network: data, script and styles are inline; charts are SVG drawn by a small script.

User strings (run names, tags, params) are escaped for HTML in the tables, drawn with `textContent` in the charts,
and embedded in a JSON block whose `<`, `>` and `&` are written as `\\u003c`-style escapes, so no value can close
the script element or inject markup.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any, Iterable, Optional

from .store import TrackerStore

__all__ = ["render_report", "differing_params"]


def differing_params(param_sets: list[dict[str, Optional[str]]]) -> list[str]:
    """Keys whose value is not the same in every run (a key missing from a run counts as different)."""
    keys = sorted(set().union(*param_sets)) if param_sets else []
    return [k for k in keys if len({p.get(k, "\x00missing") for p in param_sets}) > 1]


def _json_for_script(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt_time(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def _fmt_num(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.6g}"


def render_report(
    store: TrackerStore,
    run_ids: Iterable[int],
    *,
    metrics: Optional[list[str]] = None,
    smoothing: float = 0.0,
    title: str = "hftrain runs",
) -> str:
    """The HTML text of a report on `run_ids` (all metrics unless `metrics` names some)."""
    runs = store.runs(run_ids=list(run_ids))
    ids = [r["id"] for r in runs]
    params = {r["id"]: store.params(r["id"]) for r in runs}
    summaries = {r["id"]: store.summary(r["id"]) for r in runs}
    keys = metrics or store.metric_keys(ids)
    curves: dict[str, dict[str, list]] = {}
    for key in keys:
        per_run = {}
        for run_id in ids:
            points = [[step, value] for step, value in store.curve_points(run_id, key)
                      if value is not None and abs(value) != float("inf")]  # NaN/inf: a gap, not a broken chart
            if points:
                per_run[str(run_id)] = points
        if per_run:
            curves[key] = per_run
    diff_keys = differing_params(list(params.values()))
    data = {
        "runs": [{"id": r["id"], "label": f"{r['id']}: {r['name'] or r['uuid'][:8]}"} for r in runs],
        "curves": curves,
        "smoothing": max(0.0, min(0.99, float(smoothing))),
    }
    esc = html.escape
    run_rows = []
    for r in runs:
        duration = (r["end_time"] or r["heartbeat"] or r["start_time"]) - r["start_time"]
        loss = summaries[r["id"]].get("loss") or summaries[r["id"]].get("train_loss")
        run_rows.append(
            "<tr>"
            + "".join(
                f"<td>{esc(str(v))}</td>"
                for v in (
                    r["id"],
                    r["uuid"][:8],
                    r["experiment"],
                    r["name"] or "",
                    r["status"],
                    _fmt_time(r["start_time"]),
                    f"{duration:.1f} s",
                    r["last_step"] if r["last_step"] is not None else "",
                    _fmt_num(loss["last_value"]) if loss else "",
                    ", ".join(f"{k}={v}" for k, v in store.tags(r["id"]).items()),
                )
            )
            + "</tr>"
        )
    diff_head = "".join(f"<th>{esc(r['name'] or str(r['id']))}</th>" for r in runs)
    diff_rows = "".join(
        f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{esc(str(params[i].get(k, '—')))}</td>" for i in ids) + "</tr>"
        for k in diff_keys
    )
    return _TEMPLATE.format(
        title=esc(title),
        generated=esc(_fmt_time(time.time())),
        n_runs=len(runs),
        run_rows="\n".join(run_rows),
        diff_head=diff_head,
        diff_rows=diff_rows or f'<tr><td colspan="{len(runs) + 1}">all params are equal</td></tr>',
        n_charts=len(curves),
        data=_json_for_script(data),
        smoothing=data["smoothing"],
        study=study_section(store, runs),
    )



def study_section(store: TrackerStore, runs: list[dict[str, Any]]) -> str:
    """HTML for the hyperparameter studies among `runs` (runs tagged `study` by `hftrain tune`): per study a trials
    table, the objective over trials and one plot per parameter against the objective (inline SVG); "" if none."""
    esc = html.escape
    studies: dict[str, list] = {}
    for r in runs:
        tags = store.tags(r["id"])
        if tags.get("study") and tags.get("trial_number") is not None:
            objective = store.summary(r["id"]).get("objective")
            params = {k[len("trial."):]: v for k, v in store.params(r["id"]).items() if k.startswith("trial.")}
            studies.setdefault(tags["study"], []).append(
                (int(tags["trial_number"]), r["status"], objective["last_value"] if objective else None, params, tags))
    parts = []
    for name, trials in sorted(studies.items()):
        trials.sort(key=lambda t: t[0])
        tags = trials[0][4]
        minimize = tags.get("study_direction", "minimize") == "minimize"
        keys = sorted(set().union(*(t[3] for t in trials)))
        head = "".join(f"<th>{esc(k)}</th>" for k in keys)
        rows = "".join(
            f"<tr><td>{n}</td><td>{esc(str(status))}</td><td>{_fmt_num(value)}</td>"
            + "".join(f"<td>{esc(str(p.get(k, '')))}</td>" for k in keys) + "</tr>"
            for n, status, value, p, _ in trials
        )
        points = [(n, v) for n, _, v, _, _ in trials if v is not None]
        plots = [_svg_scatter("objective over trials", "trial", points, minimize)]
        for key in keys:
            xs = [(_float(p.get(key)), v) for _, _, v, p, _ in trials if v is not None]
            plots.append(_svg_scatter(f"{key} vs objective", key, [(x, v) for x, v in xs if x is not None], None))
        parts.append(
            f'<section class="study" data-study="{esc(name)}"><h2>Study {esc(name)}</h2>'
            f"<p>{len(trials)} trials; objective {esc(tags.get('study_metric', ''))} "
            f"({'minimize' if minimize else 'maximize'}).</p>"
            f'<table class="trials"><thead><tr><th>trial</th><th>status</th><th>objective</th>{head}</tr></thead>'
            f'<tbody>{rows}</tbody></table><div class="study-plots">{"".join(plots)}</div></section>'
        )
    return "\n".join(parts)


def _float(text: Any) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _svg_scatter(title: str, xlabel: str, points: list[tuple[float, float]], minimize: Optional[bool]) -> str:
    """A small inline SVG scatter plot; with `minimize` set, also the best-so-far line (objective over trials)."""
    W, H, L, B, T, R = 320, 200, 52, 26, 18, 10
    svg = [f'<svg class="study-plot" data-title="{html.escape(title)}" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}"><text x="{L}" y="12" font-size="11">{html.escape(title)}</text>']
    if points:
        x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
        y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)
        sx = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)  # noqa: E731
        sy = lambda y: T + (1 - (y - y0) / (y1 - y0)) * (H - T - B)  # noqa: E731
        svg += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#1f77b4"/>' for x, y in points]
        if minimize is not None:
            best, path = None, []
            for i, (x, y) in enumerate(sorted(points)):
                best = y if best is None else (min(best, y) if minimize else max(best, y))
                path.append(f"{'L' if i else 'M'}{sx(x):.1f} {sy(best):.1f}")
            svg.append(f'<path d="{"".join(path)}" fill="none" stroke="#d62728"/>')
        svg.append(f'<text x="{L - 4}" y="{H - B}" font-size="10" text-anchor="end">{_fmt_num(y0)}</text>'
                   f'<text x="{L - 4}" y="{T + 8}" font-size="10" text-anchor="end">{_fmt_num(y1)}</text>')
    svg.append(f'<text x="{W - R}" y="{H - 6}" font-size="10" text-anchor="end">{html.escape(xlabel)}</text></svg>')
    return "".join(svg)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 24px; }}
th, td {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; font-variant-numeric: tabular-nums; }}
th {{ background: #f4f4f4; }}
#charts {{ display: flex; flex-wrap: wrap; gap: 16px; }}
.chart {{ border: 1px solid #ddd; padding: 8px; }}
.chart h3 {{ margin: 0 0 4px; font-size: 14px; }}
.legend span {{ margin-right: 12px; white-space: nowrap; }}
#errors {{ color: #b00; }}
</style></head>
<body data-charts-expected="{n_charts}" data-charts-rendered="0">
<h1>{title}</h1>
<p>{n_runs} runs, generated {generated}. Curves show every recorded point; smoothing (EMA) is drawn over the raw data.</p>
<h2>Runs</h2>
<table id="runs"><thead><tr><th>id</th><th>uuid</th><th>experiment</th><th>name</th><th>status</th><th>start</th>
<th>duration</th><th>steps</th><th>loss (last)</th><th>tags</th></tr></thead>
<tbody>
{run_rows}
</tbody></table>
{study}
<h2>Curves</h2>
<label>Smoothing <input id="smooth" type="range" min="0" max="0.99" step="0.01" value="{smoothing}">
<output id="smooth-value">{smoothing}</output></label>
<div class="legend" id="legend"></div>
<div id="charts"></div>
<h2>Config diff</h2>
<p>Params that differ between the runs.</p>
<table id="diff"><thead><tr><th>param</th>{diff_head}</tr></thead><tbody>
{diff_rows}
</tbody></table>
<ul id="errors"></ul>
<script type="application/json" id="report-data">{data}</script>
<script>
"use strict";
window.onerror = function (message, source, line) {{
  var item = document.createElement("li");
  item.textContent = "error: " + message + " (line " + line + ")";
  document.getElementById("errors").appendChild(item);
  document.body.setAttribute("data-errors", String(document.getElementById("errors").children.length));
}};
(function () {{
  var NS = "http://www.w3.org/2000/svg";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var W = 420, H = 240, L = 56, R = 12, T = 8, B = 28;
  var labels = {{}}, colors = {{}};
  DATA.runs.forEach(function (run, i) {{ labels[run.id] = run.label; colors[run.id] = COLORS[i % COLORS.length]; }});
  function el(name, attrs, parent) {{
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }}
  function ema(points, alpha) {{
    var out = [], last = null;
    points.forEach(function (p) {{ last = last === null ? p[1] : alpha * last + (1 - alpha) * p[1]; out.push([p[0], last]); }});
    return out;
  }}
  function fmt(v) {{ return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : String(+v.toPrecision(4)); }}
  function draw(box, key, series, alpha) {{
    while (box.firstChild) box.removeChild(box.firstChild);
    var title = document.createElement("h3");
    title.textContent = key;
    box.appendChild(title);
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    Object.keys(series).forEach(function (id) {{
      series[id].forEach(function (p) {{
        x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]); y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]);
      }});
    }});
    if (x1 === x0) {{ x0 -= 1; x1 += 1; }}
    if (y1 === y0) {{ y0 -= Math.abs(y0) * 0.05 + 1e-9; y1 += Math.abs(y1) * 0.05 + 1e-9; }}
    var sx = function (x) {{ return L + (x - x0) / (x1 - x0) * (W - L - R); }};
    var sy = function (y) {{ return T + (1 - (y - y0) / (y1 - y0)) * (H - T - B); }};
    var svg = el("svg", {{ width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "plot", "data-key": key }}, box);
    el("rect", {{ x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#ccc" }}, svg);
    [[y0, H - B], [y1, T + 10]].forEach(function (t) {{
      var text = el("text", {{ x: L - 4, y: t[1], "text-anchor": "end", "font-size": 10 }}, svg);
      text.textContent = fmt(t[0]);
    }});
    [[x0, L, "start"], [x1, W - R, "end"]].forEach(function (t) {{
      var text = el("text", {{ x: t[1], y: H - 10, "text-anchor": t[2], "font-size": 10 }}, svg);
      text.textContent = "step " + fmt(t[0]);
    }});
    Object.keys(series).forEach(function (id) {{
      var raw = series[id];
      var line = function (pts) {{
        return pts.map(function (p, i) {{ return (i ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1); }}).join("");
      }};
      el("path", {{ d: line(raw), fill: "none", stroke: colors[id], "stroke-width": 1.2,
                    "stroke-opacity": alpha > 0 ? 0.25 : 1, "class": "raw" }}, svg);
      if (alpha > 0) el("path", {{ d: line(ema(raw, alpha)), fill: "none", stroke: colors[id], "stroke-width": 1.8, "class": "smooth" }}, svg);
      if (raw.length === 1) el("circle", {{ cx: sx(raw[0][0]), cy: sy(raw[0][1]), r: 3, fill: colors[id] }}, svg);
    }});
  }}
  var legend = document.getElementById("legend");
  DATA.runs.forEach(function (run) {{
    var item = document.createElement("span");
    item.style.color = colors[run.id];
    item.textContent = "\\u25a0 " + run.label;
    legend.appendChild(item);
  }});
  var boxes = [];
  var charts = document.getElementById("charts");
  Object.keys(DATA.curves).forEach(function (key) {{
    var box = document.createElement("div");
    box.className = "chart";
    charts.appendChild(box);
    boxes.push([box, key]);
  }});
  function render(alpha) {{
    var done = 0;
    boxes.forEach(function (b) {{ draw(b[0], b[1], DATA.curves[b[1]], alpha); done += 1; }});
    document.body.setAttribute("data-charts-rendered", String(done));
  }}
  var slider = document.getElementById("smooth");
  slider.addEventListener("input", function () {{
    document.getElementById("smooth-value").textContent = slider.value;
    render(parseFloat(slider.value));
  }});
  render(DATA.smoothing);
}})();
</script>
</body></html>
"""
