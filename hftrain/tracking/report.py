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
from importlib import resources
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


def _template() -> str:
    """The page: package data (templates/report.html), a `str.format` template whose literal braces are doubled."""
    return (resources.files(__package__) / "templates" / "report.html").read_text(encoding="utf-8")


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
    curves = _curves(store, ids, keys)
    diff_keys = differing_params(list(params.values()))
    data = {
        "runs": [{"id": r["id"], "label": f"{r['id']}: {r['name'] or r['uuid'][:8]}"} for r in runs],
        "curves": curves,
        "smoothing": max(0.0, min(0.99, float(smoothing))),
    }
    esc = html.escape
    run_rows = [_run_row(store, r, summaries[r["id"]]) for r in runs]
    diff_head = "".join(f"<th>{esc(r['name'] or str(r['id']))}</th>" for r in runs)
    diff_rows = "".join(
        f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{esc(str(params[i].get(k, '—')))}</td>" for i in ids) + "</tr>"
        for k in diff_keys
    )
    return _template().format(
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


def _curves(store: TrackerStore, ids: list[int], keys: list[str]) -> dict[str, dict[str, list]]:
    """Per metric, per run (id as a string) its finite `[step, value]` points; runs and metrics with none are left
    out."""
    curves: dict[str, dict[str, list]] = {}
    for key in keys:
        per_run = {}
        for run_id in ids:
            points = [
                [step, value]
                for step, value in store.curve_points(run_id, key)
                if value is not None and abs(value) != float("inf")
            ]  # NaN/inf: a gap, not a broken chart
            if points:
                per_run[str(run_id)] = points
        if per_run:
            curves[key] = per_run
    return curves


def _run_row(store: TrackerStore, r: dict[str, Any], summary: dict[str, dict[str, Any]]) -> str:
    """One `<tr>` of the runs table."""
    esc = html.escape
    duration = (r["end_time"] or r["heartbeat"] or r["start_time"]) - r["start_time"]
    loss = summary.get("loss") or summary.get("train_loss")
    return (
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


def study_section(store: TrackerStore, runs: list[dict[str, Any]]) -> str:
    """HTML for the hyperparameter studies among `runs` (runs tagged `study` by `hftrain tune`): per study a trials
    table, the objective over trials and one plot per parameter against the objective (inline SVG); "" if none."""
    esc = html.escape
    studies: dict[str, list] = {}
    for r in runs:
        tags = store.tags(r["id"])
        if tags.get("study") and tags.get("trial_number") is not None:
            objective = store.summary(r["id"]).get("objective")
            params = {k[len("trial.") :]: v for k, v in store.params(r["id"]).items() if k.startswith("trial.")}
            studies.setdefault(tags["study"], []).append(
                (int(tags["trial_number"]), r["status"], objective["last_value"] if objective else None, params, tags)
            )
    parts = []
    for name, trials in sorted(studies.items()):
        trials.sort(key=lambda t: t[0])
        tags = trials[0][4]
        minimize = tags.get("study_direction", "minimize") == "minimize"
        keys = sorted(set().union(*(t[3] for t in trials)))
        head = "".join(f"<th>{esc(k)}</th>" for k in keys)
        rows = "".join(
            f"<tr><td>{n}</td><td>{esc(str(status))}</td><td>{_fmt_num(value)}</td>"
            + "".join(f"<td>{esc(str(p.get(k, '')))}</td>" for k in keys)
            + "</tr>"
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
    svg = [
        f'<svg class="study-plot" data-title="{html.escape(title)}" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}"><text x="{L}" y="12" font-size="11">{html.escape(title)}</text>'
    ]
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
        svg.append(
            f'<text x="{L - 4}" y="{H - B}" font-size="10" text-anchor="end">{_fmt_num(y0)}</text>'
            f'<text x="{L - 4}" y="{T + 8}" font-size="10" text-anchor="end">{_fmt_num(y1)}</text>'
        )
    svg.append(f'<text x="{W - R}" y="{H - 6}" font-size="10" text-anchor="end">{html.escape(xlabel)}</text></svg>')
    return "".join(svg)
