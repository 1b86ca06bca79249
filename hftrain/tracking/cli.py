"""`hftrain runs ...`: list, show, compare, export, report, serve and delete tracked runs.

`add_runs_parser` registers the subcommands on the top-level parser of `hftrain.cli`, `dispatch` runs the chosen
one. Only the standard library and the tracker store: never transformers, TRL or torch, so it starts in a fraction of
a second.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from typing import Any, Optional

from ..errors import HFTrainError, TrackerError, report_user_error
from .lineage import PARENT_PATH_TAG, PARENT_TAG
from .report import differing_params, render_report
from .store import TrackerStore

__all__ = ["add_runs_parser", "dispatch"]

_FILTER = re.compile(r"^(?P<key>[^<>=!]+?)(?P<op><=|>=|!=|=|<|>)(?P<value>.*)$")

# The run columns of runs.csv, before its param:, tag: and metric columns; then per metric these summary fields.
_EXPORT_BASE = (
    "id uuid experiment name status start_time end_time last_step trainer git_commit git_branch git_dirty host"
)
_SUMMARY_COLUMNS = ("last_value", "last_step", "min_value", "min_step", "max_value", "max_step")


# -- argument parsing -------------------------------------------------------------------------------------------------
def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", help="only runs of this experiment")
    p.add_argument("--status", help="only runs with this status: running, finished, failed, killed, crashed")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY<op>VALUE",
        help="only runs whose param matches, e.g. args.learning_rate<1e-3 (ops: = != < <= > >=); repeatable",
    )
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag")
    p.add_argument("--limit", type=int, help="at most this many runs (newest first)")


def add_runs_parser(sub: argparse._SubParsersAction) -> None:
    """Register `runs` and its subcommands on `sub`, the subparsers of the top-level `hftrain` parser."""
    runs = sub.add_parser("runs", help="list, show, compare, export, report, serve and delete tracked runs")
    runs.add_argument("--db", help="tracker database (default: $HFTRAIN_TRACKER_DB or ~/.cache/hftrain/runs.db)")
    runs.set_defaults(runs_parser=runs)
    rsub = runs.add_subparsers(dest="runs_command")

    p = rsub.add_parser("list", help="runs, newest first")
    _add_filters(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_list)

    p = rsub.add_parser("show", help="one run: status, params, tags, metric summary, system info, artifacts")
    p.add_argument("run", help="run id, uuid prefix or unique run name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_show)

    p = rsub.add_parser("compare", help="runs side by side: differing params, last/min/max/best per metric")
    p.add_argument("runs", nargs="+", help="run ids, uuid prefixes or names (any experiments)")
    p.add_argument("--all-params", action="store_true", help="show every param, not only those that differ")
    p.add_argument("--metric", action="append", default=[], help="only these metrics (repeatable)")
    p.set_defaults(handler=_cmd_compare)

    p = rsub.add_parser("export", help="runs table and full histories as CSV and JSON")
    p.add_argument("runs", nargs="*", help="runs to export (default: all that match the filters)")
    _add_filters(p)
    p.add_argument("--out", default="hftrain_export", help="output folder (default: ./hftrain_export)")
    p.add_argument("--format", choices=["csv", "json", "both"], default="both")
    p.set_defaults(handler=_cmd_export)

    p = rsub.add_parser("report", help="one self-contained static HTML file: runs, curves, config diff")
    p.add_argument("runs", nargs="*", help="runs to include (default: all that match the filters)")
    _add_filters(p)
    p.add_argument("-o", "--output", default="hftrain_report.html", help="HTML file to write")
    p.add_argument(
        "--smooth",
        type=float,
        default=0.6,
        help="initial EMA smoothing of per-step training series, 0 to 0.99 (default 0.6; the raw curve stays drawn)",
    )
    p.add_argument("--metric", action="append", default=[], help="only these metrics (repeatable)")
    p.set_defaults(handler=_cmd_report)

    p = rsub.add_parser("serve", help="the report as a local web page that updates while runs train")
    p.add_argument("runs", nargs="*", help="runs to show (default: the newest that match the filters, kept current)")
    _add_filters(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050, help="port (default 8050; 0 picks a free one)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between the page's polls (default 2)")
    p.add_argument("--smooth", type=float, default=0.6, help="initial EMA smoothing, 0 to 0.99 (default 0.6)")
    p.add_argument("--metric", action="append", default=[], help="only these metrics (repeatable)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(handler=_cmd_serve)

    p = rsub.add_parser("gc", help="delete runs (named, or matching filters) and vacuum the database")
    p.add_argument("runs", nargs="*", help="runs to delete")
    _add_filters(p)
    p.add_argument("--older-than", type=float, metavar="DAYS", help="only runs started more than DAYS ago")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.set_defaults(handler=_cmd_gc)


def dispatch(args: argparse.Namespace) -> int:
    """Run the `hftrain runs` subcommand `args` names; returns the exit status (2 for a user error, printed as one
    line)."""
    if args.runs_command is None:
        args.runs_parser.print_help()
        return 0
    try:
        return args.handler(args)
    except BrokenPipeError:  # `hftrain runs list | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except HFTrainError as exc:
        return report_user_error(exc)


# -- helpers ----------------------------------------------------------------------------------------------------------
def _store(args, create: bool = False):
    return TrackerStore(args.db, create=create)


def _filters(args) -> dict[str, Any]:
    params = []
    for text in args.param:
        match = _FILTER.match(text)
        if not match:
            raise TrackerError(f"--param {text!r}: expected KEY<op>VALUE with op one of = != < <= > >=")
        params.append((match["key"].strip(), match["op"], match["value"].strip()))
    tags = []
    for text in args.tag:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise TrackerError(f"--tag {text!r}: expected KEY=VALUE")
        tags.append((key, value))
    return {"experiment": args.experiment, "status": args.status, "params": params, "tags": tags, "limit": args.limit}


def _select(store, args) -> list[dict[str, Any]]:
    refs = getattr(args, "runs", None) or []
    if refs:
        ids = [store.resolve(ref)["id"] for ref in refs]
        found = {r["id"]: r for r in store.runs(run_ids=ids)}
        return [found[i] for i in ids]
    return store.runs(**_filters(args))


def _when(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.5g}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _duration(run: dict[str, Any]) -> str:
    end = run["end_time"] or run["heartbeat"] or run["start_time"]
    seconds = max(0.0, end - run["start_time"])
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def _best_is_min(key: str, params: dict[str, Optional[str]]) -> bool:
    chosen = params.get("args.metric_for_best_model")
    if chosen and key in (chosen, f"eval_{chosen}"):
        return params.get("args.greater_is_better") != "true"
    return any(word in key.lower() for word in ("loss", "perplexity", "error", "wer", "cer", "runtime"))


# -- commands ---------------------------------------------------------------------------------------------------------
def _cmd_list(args) -> int:
    with _store(args) as store:
        runs = store.runs(**_filters(args))
        if args.json:
            print(json.dumps(runs, indent=1))
            return 0
        rows = []
        for run in runs:
            summary = store.summary(run["id"])
            loss = summary.get("loss") or summary.get("train_loss")
            evl = summary.get("eval_loss")
            rows.append(
                [
                    run["id"],
                    run["uuid"][:8],
                    run["experiment"],
                    run["name"] or "",
                    run["status"],
                    _when(run["start_time"]),
                    _duration(run),
                    run["last_step"] if run["last_step"] is not None else "-",
                    _num(loss["last_value"]) if loss else "-",
                    _num(evl["min_value"]) if evl else "-",
                ]
            )
    print(
        _table(
            ["id", "uuid", "experiment", "name", "status", "started", "time", "step", "loss", "eval_loss(min)"], rows
        )
    )
    return 0


def _cmd_show(args) -> int:
    with _store(args) as store:
        run = store.run_details(store.resolve(args.run)["id"])
        run["events"] = store.events(run["id"])
        run["parent"] = _parent_of(store, run)
    if args.json:
        print(json.dumps(run, indent=1, default=str))
        return 0
    _show_overview(run)
    _show_records(run)
    return 0


def _show_overview(run: dict[str, Any]) -> None:
    """`runs show`: who, when, where and on what the run ran."""
    print(f"run {run['id']}  {run['uuid']}  {run['name'] or ''}")
    for key in ("experiment", "status", "trainer", "output_dir", "host", "command", "error"):
        if run.get(key):
            print(f"  {key:<11} {run[key]}")
    if run.get("parent"):
        print(f"  {'parent':<11} {_parent_text(run['parent'])}")
    print(f"  {'started':<11} {_when(run['start_time'])}  ({_duration(run)}, last step {run['last_step']})")
    if run.get("git_commit"):
        print(f"  {'git':<11} {run['git_commit'][:12]} on {run['git_branch']}{' (dirty)' if run['git_dirty'] else ''}")
    system = run["system"]
    libs = ", ".join(f"{k} {v}" for k, v in (system.get("libraries") or {}).items() if v)
    print(
        f"  {'system':<11} {system.get('os')}, Python {system.get('python')}, {system.get('cpu_count')} CPUs "
        f"({system.get('cpu')}), {(system.get('ram_bytes') or 0) / 2**30:.1f} GiB RAM"
    )
    for gpu in system.get("gpus") or []:
        print(f"  {'gpu':<11} {gpu['name']} {gpu['memory_bytes'] / 2**30:.1f} GiB")
    print(f"  {'libraries':<11} {libs}")
    if run["tags"]:
        print("  tags        " + ", ".join(f"{k}={v}" for k, v in run["tags"].items()))


def _parent_of(store, run: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The run this one started from (its `parent_run` tag, `hftrain.tracking.lineage`): that run's row when it is
    in this database, else only its uuid; the folder it started from in `path`."""
    uuid = run["tags"].get(PARENT_TAG)
    if not uuid:
        return None
    found = store.run_by_uuid(uuid)
    parent = {k: found[k] for k in ("id", "uuid", "name", "experiment", "status")} if found else {"uuid": uuid}
    return {**parent, "path": run["tags"].get(PARENT_PATH_TAG)}


def _parent_text(parent: dict[str, Any]) -> str:
    where = f" (started from {parent['path']})" if parent.get("path") else ""
    if "id" not in parent:
        return f"{parent['uuid']}, not in this database{where}"
    return (
        f"run {parent['id']}  {parent['uuid'][:8]}  {parent['name'] or ''}  "
        f"(experiment {parent['experiment']}, {parent['status']}){where}"
    )


def _show_records(run: dict[str, Any]) -> None:
    """`runs show`: what the run recorded (metric summary, params, artifacts, the first 50 events)."""
    print("\nmetrics")
    rows = [
        [
            k,
            _num(s["last_value"]),
            s["last_step"],
            _num(s["min_value"]),
            s["min_step"],
            _num(s["max_value"]),
            s["max_step"],
        ]
        for k, s in run["summary"].items()
    ]
    print(_table(["key", "last", "last step", "min", "min step", "max", "max step"], rows))
    print(f"\nparams ({len(run['params'])})")
    for key, value in run["params"].items():
        print(f"  {key} = {value}")
    if run["artifacts"]:
        print(f"\nartifacts ({len(run['artifacts'])})")
        for art in run["artifacts"]:
            print(f"  step {art['step']}  {art['size']:>12,d}  {(art['sha256'] or '-')[:12]}  {art['path']}")
    if run["events"]:
        print(f"\nevents ({len(run['events'])})")
        for event in run["events"][:50]:
            print(f"  step {event['step']}  {event['kind']}  {json.dumps(event['payload'])[:120]}")


def _cmd_compare(args) -> int:
    with _store(args) as store:
        runs = _select(store, args)
        params = [store.params(r["id"]) for r in runs]
        summaries = [store.summary(r["id"]) for r in runs]
    names = [f"{r['id']}:{r['name'] or r['uuid'][:8]}" for r in runs]
    print(
        _table(
            ["", *names],
            [
                ["experiment", *[r["experiment"] for r in runs]],
                ["status", *[r["status"] for r in runs]],
                ["steps", *[r["last_step"] for r in runs]],
            ],
        )
    )
    keys = sorted(set().union(*params)) if args.all_params else differing_params(params)
    title = "params" if args.all_params else "params that differ"
    print(f"\n{title} ({len(keys)})")
    if keys:
        print(_table(["param", *names], [[k, *[p.get(k, "-") for p in params]] for k in keys]))
    metric_keys = args.metric or sorted(set().union(*summaries))
    rows = []
    for key in metric_keys:
        for label in ("last", "min", "max", "best@step"):
            row = [key if label == "last" else "", label]
            for summary, p in zip(summaries, params):
                s = summary.get(key)
                if s is None:
                    row.append("-")
                elif label == "last":
                    row.append(f"{_num(s['last_value'])} @{s['last_step']}")
                elif label == "min":
                    row.append(f"{_num(s['min_value'])} @{s['min_step']}")
                elif label == "max":
                    row.append(f"{_num(s['max_value'])} @{s['max_step']}")
                else:
                    side = "min" if _best_is_min(key, p) else "max"
                    row.append(f"{side} @{s[side + '_step']}")
            rows.append(row)
    print("\nmetrics")
    print(_table(["metric", "", *names], rows))
    return 0


def _cmd_export(args) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise TrackerError(f"--out {args.out}: is a file; expected a folder (created when missing)")
    with _store(args) as store:
        runs = _select(store, args)
        details = [store.run_details(r["id"]) for r in runs]
        histories = {r["id"]: store.history(r["id"]) for r in runs}
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, a read-only disk
        raise TrackerError(f"--out {args.out}: cannot create the folder ({exc.strerror or exc})") from None
    written = []
    if args.format in ("json", "both"):
        for name, payload in (
            ("runs.json", details),
            ("history.json", [{"run_id": i, "points": h} for i, h in histories.items()]),
        ):
            path = os.path.join(args.out, name)
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1, default=str)
            written.append(path)
    if args.format in ("csv", "both"):
        written.append(_export_runs_csv(os.path.join(args.out, "runs.csv"), details))
        path = os.path.join(args.out, "history.csv")
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["run_id", "key", "step", "value", "epoch", "wall_time"])
            for run_id, points in histories.items():
                writer.writerows([run_id, p["key"], p["step"], p["value"], p["epoch"], p["wall_time"]] for p in points)
        written.append(path)
    print(f"exported {len(runs)} runs: " + ", ".join(written))
    return 0


def _export_runs_csv(path: str, details: list[dict[str, Any]]) -> str:
    """`runs export`: one row per run with its run columns, params, tags and metric summary; returns `path`."""
    base = _EXPORT_BASE.split()
    param_keys = sorted(set().union(*[d["params"] for d in details])) if details else []
    metric_keys = sorted(set().union(*[d["summary"] for d in details])) if details else []
    header = (
        base
        + [f"param:{k}" for k in param_keys]
        + [f"tag:{k}" for k in sorted(set().union(*[d["tags"] for d in details])) if details]
    )
    tag_keys = [h[4:] for h in header if h.startswith("tag:")]
    for key in metric_keys:
        header += [f"{key}:{s}" for s in ("last", "last_step", "min", "min_step", "max", "max_step")]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for d in details:
            row = [d.get(k) for k in base] + [d["params"].get(k) for k in param_keys]
            row += [d["tags"].get(k) for k in tag_keys]
            for key in metric_keys:
                s = d["summary"].get(key) or {}
                row += [s.get(f) for f in _SUMMARY_COLUMNS]
            writer.writerow(row)
    return path


def _cmd_report(args) -> int:
    if not 0.0 <= args.smooth < 1.0:
        raise TrackerError(f"--smooth: expected a value from 0 to 0.99, got {args.smooth}")
    folder = os.path.dirname(os.path.abspath(args.output))
    if os.path.isdir(args.output) or not os.path.isdir(folder):  # said before the runs are read, not after
        problem = "is a folder; expected an .html file path" if os.path.isdir(args.output) else "no such folder"
        raise TrackerError(f"-o {args.output}: {problem}")
    with _store(args) as store:
        runs = _select(store, args)
        if not runs:
            raise TrackerError("report: no runs match; nothing to report")
        text = render_report(store, [r["id"] for r in runs], metrics=args.metric or None, smoothing=args.smooth)
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:  # no permission, a read-only or full disk
        raise TrackerError(f"-o {args.output}: cannot write the report ({exc.strerror or exc})") from None
    print(f"wrote {args.output} ({len(runs)} runs)")
    return 0


def _cmd_serve(args) -> int:
    from .server import LiveReport, make_server  # http.server and plotly: only for this command

    if not 0.0 <= args.smooth < 1.0:
        raise TrackerError(f"--smooth: expected a value from 0 to 0.99, got {args.smooth}")
    if args.interval <= 0:
        raise TrackerError(f"--interval: expected seconds > 0, got {args.interval}")
    if not args.runs and args.limit is None:
        args.limit = 20  # a live page of every run ever recorded is rarely what anyone wants
    with _store(args) as store:  # checks (and upgrades) the file once; the server itself only reads
        fixed = [r["id"] for r in _select(store, args)] if args.runs else None
        path = store.path
    filters = _filters(args)
    app = LiveReport(
        path,
        (lambda s: fixed) if fixed is not None else (lambda s: [r["id"] for r in s.runs(**filters)]),
        metrics=args.metric or None,
        smoothing=args.smooth,
        interval=args.interval,
    )
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        app.close()
        raise TrackerError(f"serve: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    host, port = server.server_address[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(f"serving {path} at {url} (read-only; Ctrl-C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: bound to {args.host}: anyone who can reach this machine can read these runs", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    return _serve_until_stopped(server, app)


def _serve_until_stopped(server, app) -> int:
    """Serve until Ctrl-C or SIGTERM, then close the socket and the database connection."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    # both set explicitly: a server started in the background of a script inherits SIGINT ignored
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.server_close()
        app.close()
    print("stopped", flush=True)
    return 0


def _cmd_gc(args) -> int:
    filters = _filters(args)
    if not (args.runs or args.experiment or args.status or args.param or args.tag or args.older_than):
        raise TrackerError("gc: name runs or give a filter (--status, --experiment, --param, --tag, --older-than)")
    with _store(args) as store:
        runs = _select(store, args) if args.runs else store.runs(**filters)
        if args.older_than is not None:
            cutoff = time.time() - args.older_than * 86400
            runs = [r for r in runs if r["start_time"] < cutoff]
        if args.dry_run:
            print(f"would delete {len(runs)} runs: " + ", ".join(str(r["id"]) for r in runs))
            return 0
        deleted = store.delete_runs([r["id"] for r in runs])
        before = os.path.getsize(store.path)
        store.vacuum()
        after = os.path.getsize(store.path)
    print(f"deleted {deleted} runs; database {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")
    return 0
