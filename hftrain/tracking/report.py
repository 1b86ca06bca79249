"""The runs report: one self-contained HTML page with the runs, interactive charts grouped by kind (training,
evaluation, system, curriculum, the rest), single values, generation samples as tables, hyperparameter studies
(Optuna's own views) and the config diff. `hftrain runs serve` (server.py) serves the same page and keeps it current.

Charts are drawn by plotly.js, inlined at render time from the installed `plotly` package, so the file works offline;
the page's own script (templates/report.html) turns the data into plotly traces.

User strings (run names, tags, params, metric names, samples) are HTML-escaped and wrapped in `<bdi>` in the tables,
set with `textContent` (in a `<bdi>` or with `dir=auto`) by the script, and escaped and bidi-isolated (U+2068..U+2069)
where plotly draws them; the data is a JSON block whose `<`, `>` and `&` are `\\u003c`-style escapes, so no value can
close the script element, inject markup, or reverse the text around it.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import time
from importlib import resources
from typing import Any, Iterable, Optional

from .store import TrackerStore

__all__ = ["render_report", "report_data", "curve_updates", "samples_tables", "differing_params", "study_section"]

_MAX_SAMPLE_ROWS = 1000  # per table read back from a samples file (the tracker's own events are kept whole)


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


def _bdi(text: Any) -> str:
    """A user string in HTML: escaped and isolated, so its direction never spills onto the text around it."""
    return f"<bdi>{html.escape(str(text))}</bdi>"


def _plot_text(text: Any) -> str:
    """A user string where plotly draws it (SVG text that reads a little HTML): escaped and bidi-isolated."""
    return "\u2068" + html.escape(str(text)) + "\u2069"


def _finite(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None  # NaN/inf: a gap in the chart


def _template() -> str:
    """The page (package data templates/report.html); `{{name}}` marks where `_fill` puts each part."""
    return (resources.files(__package__) / "templates" / "report.html").read_text(encoding="utf-8")


def _fill(template: str, **parts: str) -> str:
    """Each `{{name}}` of the template replaced by `parts[name]` in one pass (inserted text is never scanned)."""
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], template)


def plotly_js() -> str:
    """plotly.js from the installed plotly package, safe inside a `<script>` element."""
    from plotly.offline import get_plotlyjs  # only when a page is rendered: `hftrain runs` stays light

    return get_plotlyjs().replace("</script", "<\\/script")


def render_report(
    store: TrackerStore,
    run_ids: Iterable[int],
    *,
    metrics: Optional[list[str]] = None,
    smoothing: float = 0.6,
    title: str = "hftrain runs",
    live: Optional[dict[str, Any]] = None,
) -> str:
    """The HTML text of a report on `run_ids` (all metrics unless `metrics` names some). `live` is for
    `hftrain runs serve`: the page then loads plotly.js from the server and polls it (see server.py)."""
    data = report_data(store, run_ids, metrics)
    runs = store.runs(run_ids=[r["id"] for r in data["runs"]])
    runs.sort(key=lambda r: r["id"])
    study_html, data["studies"] = study_section(store, runs)
    data["smoothing"] = max(0.0, min(0.99, float(smoothing)))
    data["metrics"] = metrics
    data["live"] = live
    params = {r["id"]: store.params(r["id"]) for r in runs}
    diff_keys = differing_params(list(params.values()))
    diff_rows = "".join(
        f"<tr><td>{_bdi(k)}</td>" + "".join(f"<td>{_bdi(params[r['id']].get(k, '—'))}</td>" for r in runs) + "</tr>"
        for k in diff_keys
    )
    if live:
        script = '<script src="plotly.min.js"></script>'
        policy = "default-src 'none'; style-src 'unsafe-inline'; script-src 'self' 'unsafe-inline'; connect-src 'self'"
    else:
        script = f"<script>{plotly_js()}</script>"
        policy = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data: blob:"
    return _fill(
        _template(),
        title=html.escape(title),
        policy=policy,
        generated=html.escape(_fmt_time(time.time())),
        n_runs=str(len(runs)),
        plotly=script,
        diff_head="".join(f"<th>{_bdi(r['name'] or r['id'])}</th>" for r in runs),
        diff_rows=diff_rows or f'<tr><td colspan="{len(runs) + 1}">all params are equal</td></tr>',
        n_diff=str(len(diff_keys)),
        diff_open="open" if len(diff_keys) <= 40 else "",  # a long diff (runs of different models) starts folded
        study=study_html,
        data=_json_for_script(data),
    )


def report_data(
    store: TrackerStore,
    run_ids: Iterable[int],
    metrics: Optional[list[str]] = None,
    known: Optional[dict] = None,
    samples: bool = True,
) -> dict[str, Any]:
    """What the page's script draws: the runs (oldest first, so each keeps its colour as runs are added), the curve
    points the page does not have yet (`known`: per run id, per metric, the last step it has; see `curve_updates`)
    and, with `samples`, the samples tables."""
    runs = sorted(store.runs(run_ids=list(run_ids)), key=lambda r: r["id"])
    data = {"runs": [run_entry(store, r) for r in runs], "curves": curve_updates(store, runs, metrics, known or {})}
    if samples:
        data["samples"] = samples_tables(store, runs)
    return data


def run_entry(store: TrackerStore, r: dict[str, Any]) -> dict[str, Any]:
    """One run as the page shows it in the legend and the runs table."""
    summary = store.summary(r["id"])
    loss = summary.get("loss") or summary.get("train_loss")
    end = r["end_time"] or r["heartbeat"] or r["start_time"]
    planned = store.conn.execute(
        "SELECT value_num FROM params WHERE run_id = ? AND key = 'args.max_steps'", (r["id"],)
    ).fetchone()
    return {
        "id": r["id"],
        "label": f"{r['id']}: {r['name'] or r['uuid'][:8]}",
        "uuid": r["uuid"][:8],
        "experiment": r["experiment"],
        "name": r["name"] or "",
        "status": r["status"],
        "start": r["start_time"],
        "started": _fmt_time(r["start_time"]),
        "duration": max(0.0, end - r["start_time"]),
        "last_step": r["last_step"],
        "max_steps": int(planned[0]) if planned and planned[0] and planned[0] > 0 else None,  # a live run's length
        "loss": _finite(loss["last_value"]) if loss else None,
        "tags": [[k, "" if v is None else v] for k, v in store.tags(r["id"]).items()],  # each isolated on its own
    }


def curve_updates(
    store: TrackerStore, runs: list[dict[str, Any]], metrics: Optional[list[str]], known: dict[str, dict[str, int]]
) -> dict[str, dict[str, dict[str, list]]]:
    """Per metric, per run id (a string): `{"s": steps, "v": values, "t": seconds since the run started}` of the
    points after the step `known[run][metric]`; a curve the page lacks, or one that now ends before that step (a
    resumed run replaced its tail), comes whole with `"replace": true`. Unchanged curves are left out, so a poll
    of a quiet database reads only the summary table."""
    curves: dict[str, dict[str, dict[str, list]]] = {}
    for run in runs:
        have = known.get(str(run["id"]), {})
        changed = {}
        for key, summary in store.summary(run["id"]).items():
            seen = have.get(key)
            if (metrics and key not in metrics) or (seen is not None and summary["last_step"] == seen):
                continue
            points = store.curve_points(run["id"], key)
            if seen is not None and summary["last_step"] > seen:
                changed[key] = ([p for p in points if p[0] > seen], False)
            else:
                changed[key] = (points, True)
        if not changed:
            continue
        first = min((pts[0][0] for pts, _ in changed.values() if pts), default=0)
        times = _step_times(store, run["id"], first, run["start_time"])
        for key, (points, replace) in changed.items():
            entry: dict[str, Any] = {
                "s": [s for s, _ in points],
                "v": [_finite(v) for _, v in points],
                "t": [times.get(s) for s, _ in points],
            }
            if replace:
                entry["replace"] = True
            curves.setdefault(key, {})[str(run["id"])] = entry
    return curves


def _step_times(store: TrackerStore, run_id: int, first_step: int, start: float) -> dict[int, float]:
    """Seconds from the run's start to each of its steps from `first_step` on (when the step's first value was
    written): the x of the relative-time view."""
    rows = store.conn.execute(
        "SELECT step, MIN(wall_time) FROM metrics WHERE run_id = ? AND step >= ? GROUP BY step", (run_id, first_step)
    )
    return {step: round(wall - start, 3) for step, wall in rows}


def samples_tables(store: TrackerStore, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The generation samples of each run as tables (`{"run", "step", "name", "columns", "rows"}`): the `samples`
    events hftrain's evaluation records, else the `*_samples_file` JSONL files a run logged, while they exist."""
    tables = []
    for run in runs:
        rows = store.conn.execute(
            "SELECT step, kind, payload FROM events WHERE run_id = ? AND kind IN ('samples', 'log') ORDER BY id",
            (run["id"],),
        ).fetchall()
        recorded, files = [], []
        for step, kind, payload in rows:
            value = json.loads(payload) if payload else None
            if not isinstance(value, dict):
                continue
            if kind == "samples" and isinstance(value.get("rows"), list):
                recorded.append(_table(run["id"], step, value.get("name") or "samples", value["rows"]))
            elif kind == "log" and str(value.get("key", "")).endswith("samples_file"):
                files.append((step, value["key"][: -len("samples_file")].rstrip("_") or "samples", value.get("value")))
        have = {(t["step"], t["name"]) for t in recorded}
        for step, name, path in files:
            if (step, name) not in have and isinstance(path, str) and os.path.isfile(path):
                recorded.append(_table(run["id"], step, name, _read_jsonl(path)))
        tables.extend(sorted(recorded, key=lambda t: (t["step"] or 0, t["name"])))
    return tables


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if len(rows) >= _MAX_SAMPLE_ROWS:
                    break
                if line.strip():
                    rows.append(json.loads(line))
    except (OSError, ValueError):
        pass  # a file half-written or gone: the table shows what could be read
    return [r for r in rows if isinstance(r, dict)]


def _table(run_id: int, step: Optional[int], name: str, rows: list[Any]) -> dict[str, Any]:
    """Rows of dicts as one table whose columns are their keys in first-seen order (`step` left out: it is the
    table's)."""
    columns: list[str] = []
    for row in rows:
        for key in row if isinstance(row, dict) else ():
            if key != "step" and key not in columns:
                columns.append(key)
    cells = [[_cell(row.get(c)) if isinstance(row, dict) else "" for c in columns] for row in rows]
    return {"run": run_id, "step": step, "name": name, "columns": columns, "rows": cells}


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def study_section(store: TrackerStore, runs: list[dict[str, Any]]) -> tuple[str, list[list[dict[str, Any]]]]:
    """The hyperparameter studies among `runs` (runs tagged `study` by `hftrain tune`): per study the trials table
    (HTML) and Optuna's own views of it, rebuilt from the runs (history, importances, parallel coordinates, one
    slice per parameter) as plotly figures for the page's script; ("", []) if there is none."""
    studies: dict[str, list] = {}
    for r in runs:
        tags = store.tags(r["id"])
        if tags.get("study") and tags.get("trial_number") is not None:
            objective = store.summary(r["id"]).get("objective")
            params = {k[len("trial.") :]: v for k, v in store.params(r["id"]).items() if k.startswith("trial.")}
            value = _finite(objective["last_value"]) if objective else None
            studies.setdefault(tags["study"], []).append((int(tags["trial_number"]), r["status"], value, params, tags))
    if not studies:
        return "", []
    parts, figures = [], []
    for name, trials in sorted(studies.items()):
        trials.sort(key=lambda t: t[0])
        tags = trials[0][4]
        minimize = tags.get("study_direction", "minimize") == "minimize"
        views = study_figures(trials, minimize)
        parts.append(_study_html(len(figures), name, trials, tags, minimize, views))
        figures.append(views)
    return "\n".join(parts), figures


def _study_html(
    index: int, name: str, trials: list, tags: dict[str, Any], minimize: bool, views: list[dict[str, Any]]
) -> str:
    """A study's heading, trials table and one element per view (filled by the page's script from the figure)."""
    keys = sorted(set().union(*(t[3] for t in trials)))
    head = "".join(f"<th>{_bdi(k)}</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{n}</td><td>{_bdi(status)}</td><td>{_fmt_num(value)}</td>"
        + "".join(f"<td>{_bdi(_fmt_param(p.get(k, '')))}</td>" for k in keys)
        + "</tr>"
        for n, status, value, p, _ in trials
    )
    plots = []
    for j, view in enumerate(views):
        # the objective over trials and one plot per parameter are `study-plot`s; the study-wide views are not
        kind = "study-plot" if view["kind"] in ("history", "slice") else "study-view"
        body = f'<p class="note">{html.escape(view["error"])}</p>' if "error" in view else ""
        plots.append(
            f'<figure class="{kind}" data-study-index="{index}" data-fig="{j}" data-kind="{view["kind"]}">'
            f"<figcaption>{_bdi(view['title'])}</figcaption>{body}</figure>"
        )
    return (
        f'<section class="study" data-study="{html.escape(name)}"><h2>Study {_bdi(name)}</h2>'
        f"<p>{len(trials)} trials; objective {_bdi(tags.get('study_metric', ''))} "
        f"({'minimize' if minimize else 'maximize'}).</p>"
        f'<table class="trials"><thead><tr><th>trial</th><th>status</th><th>objective</th>{head}</tr></thead>'
        f'<tbody>{rows}</tbody></table><div class="study-plots">{"".join(plots)}</div></section>'
    )


def _fmt_param(text: Any) -> str:
    number = _float(text)
    return f"{number:.6g}" if number is not None and not re.fullmatch(r"-?\d+", str(text)) else str(text)


def _float(text: Any) -> Optional[float]:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _distribution(values: list[Optional[str]]) -> Any:
    """The Optuna distribution a parameter was most likely sampled from, judged by its values: integers, floats
    (log-scaled when they span a factor of 10 or more above 0), else categories."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    given = [v for v in values if v is not None]
    numbers = [_float(v) for v in given]
    if given and all(n is not None for n in numbers):
        low, high = min(numbers), max(numbers)
        if all(re.fullmatch(r"-?\d+", str(v)) for v in given):
            return IntDistribution(int(low), int(high))
        return FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    return CategoricalDistribution(sorted({_plot_text(v) for v in given}))


def _optuna_study(trials: list, minimize: bool) -> Any:
    """An in-memory Optuna study holding the tracked trials (parameter names and categories made safe to draw)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    names = sorted(set().union(*(t[3] for t in trials)))
    dists = {_plot_text(n): _distribution([t[3].get(n) for t in trials]) for n in names}
    study = optuna.create_study(direction="minimize" if minimize else "maximize")
    for _, status, value, params, tags in trials:
        pruned = status == "pruned" or tags.get("trial_state") == "pruned"
        state = optuna.trial.TrialState
        state = state.PRUNED if pruned else (state.COMPLETE if value is not None else state.FAIL)
        values = {}
        for name, text in params.items():
            dist = dists[_plot_text(name)]
            if isinstance(dist, CategoricalDistribution):
                values[_plot_text(name)] = _plot_text(text)
            else:
                values[_plot_text(name)] = int(text) if isinstance(dist, IntDistribution) else float(text)
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if state == optuna.trial.TrialState.COMPLETE else None,
                params=values,
                distributions={k: dists[k] for k in values},
            )
        )
    return study, list(dists)


def study_figures(trials: list, minimize: bool) -> list[dict[str, Any]]:
    """Optuna's views of the trials as plotly figures (JSON): optimisation history, parameter importances
    (fANOVA, seeded), parallel coordinates and one slice per parameter; a view Optuna cannot draw for these trials
    (too few, say) carries the reason instead."""
    import warnings

    import optuna
    from optuna import visualization as vis
    from optuna.importance import FanovaImportanceEvaluator

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning and "too few trials" notes: the view says so
            study, names = _optuna_study(trials, minimize)
            makers = [
                ("history", "objective over trials", lambda: vis.plot_optimization_history(study)),
                (
                    "importances",
                    "parameter importances (fANOVA)",
                    lambda: vis.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)),
                ),
                ("parallel", "parallel coordinates", lambda: vis.plot_parallel_coordinate(study)),
            ]
            makers += [
                ("slice", f"{html.unescape(n[1:-1])} vs objective", lambda n=n: vis.plot_slice(study, params=[n]))
                for n in names
            ]
            return [_figure(kind, title, make) for kind, title, make in makers]
    finally:
        optuna.logging.set_verbosity(verbosity)


def _figure(kind: str, title: str, make) -> dict[str, Any]:
    try:
        figure = make()
        figure.update_layout(title=None, height=330, margin=dict(l=60, r=20, t=20, b=50), template="plotly_white")
        figure.update_xaxes(exponentformat="e")  # 1e-4, not plotly's default SI "100μ", for learning rates
        figure.update_yaxes(exponentformat="e")
        return {"kind": kind, "title": title, "figure": json.loads(figure.to_json())}
    except Exception as exc:  # Optuna refuses views it cannot draw (e.g. importances of one trial)
        return {"kind": kind, "title": title, "error": f"not drawn: {exc}"}
