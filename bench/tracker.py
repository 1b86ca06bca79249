"""The tracker's write and read cost against trackio's and MLflow's local stores, measured in the same run.

    python bench/tracker.py [--steps 10000] [--keys 10] [--mlflow-steps 300] [--trackio-steps 10000] [--runs 100]

Writes: `--keys` metrics per step for `--steps` steps through the real `TrackerCallback.on_log` (one transaction per
step, exactly what training does), against MLflow's `MlflowClient.log_batch` with one batch per step on a
`sqlite:///` store in a temporary directory. MLflow costs several ms per step, so by default it logs only
`--mlflow-steps` steps and its per-step cost is compared (the output says so); MLflow's database creation and
migrations are not timed.

trackio (local mode: its SQLite file under a temporary `TRACKIO_DIR`, no Space, no server, no network) logs the
same `--keys` values per step with `trackio.log(..., step=)`; it queues them and a background thread commits them in
batches every 0.5 s, so it is timed as one whole run, `init` excluded, from the first `log` until `finish()` has
committed everything (its automatic CPU logging off, as hftrain's sampler is here). It runs after the interleaved
rounds of the other three.

Writes are timed until committed: the callback hands each log to the tracker's writer thread, so the training
thread's own share (also printed, for trackio too) is far smaller.

Reads: five full curves of `--steps` points each (`TrackerStore.curve_points`, what the report reads) of the
finished run (curves packed by `on_train_end`) and, before that, of the live run; against trackio's
`SQLiteStorage.get_metric_values` (what `trackio get metric` and its dashboard read) on the run it wrote, checked
value for value against what was logged; against MLflow's `get_metric_history` on a run holding the same five curves
(bulk-loaded 1,000 values per `log_batch`, not timed); and a leaderboard of one metric over `--runs` runs (last, min,
max and the best step of each, `TrackerStore.leaderboard`).

Targets: >= 50x faster writes per step than MLflow, < 20 us per value, < 10 ms for five 10,000-point curves, ahead
of trackio on committed writes and on reads.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def _values(keys: int, step: int, rng: random.Random) -> dict[str, float]:
    return {f"metric_{k}": rng.random() + 1.0 / (1 + step) for k in range(keys)}


class Ours:
    """The real callback path, as training drives it: `on_train_begin`, one `on_log` per step (one transaction
    each, committed by the tracker's writer thread), `on_train_end` (drains the writer, packs the curves)."""

    def __init__(self, folder: str, keys: int):
        from transformers import TrainerControl, TrainerState, TrainingArguments

        from hftrain.tracking.callback import TrackerCallback

        self.db = os.path.join(folder, "hftrain.db")
        self.callback = TrackerCallback(db_path=self.db, experiment="bench", system_interval=0)
        self.args = TrainingArguments(
            output_dir=os.path.join(folder, "out"), report_to="none", use_cpu=True, run_name="bench-0"
        )
        self.state, self.control = TrainerState(), TrainerControl()
        self.callback.on_train_begin(self.args, self.state, self.control)
        self.store = self.callback._store
        self.thread_s = 0.0  # time the training thread spent inside on_log

    def write(self, step: int, logs: dict[str, float]) -> None:
        self.state.global_step, self.state.epoch = step, step / 1000
        start = time.perf_counter()
        self.callback.on_log(self.args, self.state, self.control, logs=logs)
        self.thread_s += time.perf_counter() - start

    def flush(self) -> None:
        """Wait until the writer thread has committed everything logged so far."""
        self.callback._writer.flush()

    def finish(self) -> None:
        self.callback.on_train_end(self.args, self.state, self.control)


class Raw:
    """The leanest possible writer with hftrain's table layout (WAL + NORMAL, one `executemany` + COMMIT per step on
    the calling thread, SQLite's default autocheckpoint, no summary, no heartbeat, no queue): a reference for how
    much of a figure is this machine and its load."""

    def __init__(self, folder: str):
        import sqlite3

        self.conn = sqlite3.connect(os.path.join(folder, "raw.db"), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE m(run_id INTEGER, key_id INTEGER, step INTEGER, value REAL, wall_time REAL, "
            "PRIMARY KEY(run_id, step, key_id)) WITHOUT ROWID"
        )

    def flush(self) -> None:
        pass

    def write(self, step: int, logs: dict[str, float]) -> None:
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO m VALUES(?, ?, ?, ?, ?)", [(1, k, step, v, now) for k, v in enumerate(logs.values())]
        )
        self.conn.execute("COMMIT")


class MLflow:
    """`MlflowClient.log_batch` with one batch per step on a `sqlite:///` store (schema creation not timed)."""

    def __init__(self, folder: str):
        import logging

        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self.Metric = Metric
        self.client = MlflowClient(tracking_uri=f"sqlite:///{os.path.join(folder, 'mlflow.db')}")
        self.experiment = self.client.create_experiment("bench")
        self.run = self.client.create_run(self.experiment).info.run_id

    def flush(self) -> None:
        pass

    def write(self, step: int, logs: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run, metrics=[self.Metric(k, v, now, step) for k, v in logs.items()])


class Trackio:
    """`trackio.log` in local mode, into its SQLite file under `folder` (trackio reads `TRACKIO_DIR` at import)."""

    def __init__(self, folder: str):
        import contextlib
        import io

        os.environ["TRACKIO_DIR"] = os.path.join(folder, "trackio")
        with contextlib.redirect_stdout(io.StringIO()):  # its banner and dashboard hints
            import trackio

            trackio.init(project="bench", name="bench-0", embed=False, auto_log_cpu=False, auto_log_gpu=False)
        self.trackio = trackio
        self.thread_s = 0.0

    def write(self, step: int, logs: dict[str, float]) -> None:
        start = time.perf_counter()
        self.trackio.log(logs, step=step)
        self.thread_s += time.perf_counter() - start

    def finish(self) -> None:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            self.trackio.finish()  # joins its sender thread: every queued value is committed when this returns

    def curves(self, keys: list[str]) -> list[list[float]]:
        from trackio.sqlite_storage import SQLiteStorage

        return [[row["value"] for row in SQLiteStorage.get_metric_values("bench", "bench-0", key)] for key in keys]


def bench_trackio(folder: str, steps: int, keys: int) -> dict:
    """trackio's whole run, timed from the first `log` until `finish()` has committed it; then its five curves read
    back (median of 3) and checked against what was logged."""
    writer = Trackio(folder)
    rng = random.Random(0)
    payloads = [_values(keys, step, rng) for step in range(1, steps + 1)]
    start, start_cpu = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        writer.write(step, payloads[step - 1])
    writer.finish()
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    curve_keys = [f"metric_{k}" for k in range(min(5, keys))]
    times = []
    for _ in range(3):
        begin = time.perf_counter()
        curves = writer.curves(curve_keys)
        times.append(time.perf_counter() - begin)
    assert curves == [[p[key] for p in payloads] for key in curve_keys], "trackio read back other values"
    return {
        "steps": steps,
        "write_s": seconds,
        "per_step_s": seconds / steps,
        "per_value_s": seconds / (steps * keys),
        "cpu_per_value_s": cpu / (steps * keys),
        "thread_per_step_s": writer.thread_s / steps,
        "curves_s": statistics.median(times),
    }


def bench_writes(folder: str, steps: int, keys: int, mlflow_steps: int, rounds: int = 10) -> dict[str, dict]:
    """All three writers in `rounds` interleaved slices, so a change in machine load hits them alike."""
    writers = {"ours": Ours(folder, keys), "raw": Raw(folder), "mlflow": MLflow(folder)}
    counts = {"ours": steps, "raw": steps, "mlflow": mlflow_steps}
    rng = random.Random(0)
    payloads = [_values(keys, step, rng) for step in range(1, steps + 1)]  # built before timing
    seconds = dict.fromkeys(writers, 0.0)
    cpu = dict.fromkeys(writers, 0.0)  # this process's CPU time: what a quiet machine's wall time would be, roughly
    done = dict.fromkeys(writers, 0)
    for index in range(rounds):
        for name, writer in writers.items():
            upto = counts[name] * (index + 1) // rounds
            start, start_cpu = time.perf_counter(), time.process_time()
            for step in range(done[name] + 1, upto + 1):
                writer.write(step, payloads[step - 1])
            writer.flush()  # timed: a write counts once it is committed, not when it is queued
            seconds[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
            done[name] = upto
    return {
        name: {
            "steps": counts[name],
            "write_s": seconds[name],
            "per_step_s": seconds[name] / counts[name],
            "per_value_s": seconds[name] / (counts[name] * keys),
            "cpu_per_value_s": cpu[name] / (counts[name] * keys),
            "writer": writers[name],
        }
        for name in writers
    }


def _time_curves(db: str, run_id: int, keys: list[str], repeats: int = 7) -> tuple[float, float, list]:
    """Median wall and CPU seconds to read the curves of `keys` on a fresh connection (like `hftrain runs`)."""
    from hftrain.tracking.store import TrackerStore

    times, cpu = [], []
    with TrackerStore(db) as reader:
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            curves = [reader.curve_points(run_id, key) for key in keys]
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(cpu), curves


def bench_reads(ours: Ours, keys: int, steps: int, runs: int) -> dict[str, float]:
    """Five full curves of the written run (`TrackerStore.curve_points`, what the report reads) while it is live
    (every point a row) and once it has finished (curves packed by `on_train_end`, which is timed too); and a
    leaderboard of one metric over `runs` runs (`TrackerStore.leaderboard`)."""
    from hftrain.tracking.store import TrackerStore

    rng = random.Random(1)
    with TrackerStore(ours.db) as other_writer:  # the other runs: 100 steps each, one transaction per step; not timed
        for index in range(1, runs):
            other = other_writer.create_run("bench", f"bench-{index}")
            for step in range(1, 101):
                other_writer.log_metrics(other, step, _values(keys, step, rng))
    run_id = ours.callback.run_id
    curve_keys = [f"metric_{k}" for k in range(min(5, keys))]
    live_s, live_cpu, live = _time_curves(ours.db, run_id, curve_keys)
    start = time.perf_counter()
    ours.finish()
    finish_s = time.perf_counter() - start
    packed_s, packed_cpu, packed = _time_curves(ours.db, run_id, curve_keys)
    assert packed == live and all(len(c) == steps for c in packed), [len(c) for c in packed]
    board_times = []
    with TrackerStore(ours.db) as reader:
        for _ in range(7):
            start = time.perf_counter()
            board = reader.leaderboard("metric_0")
            board_times.append(time.perf_counter() - start)
    assert len(board) == runs and all(row["min_step"] is not None for row in board)
    ours.store.close()
    return {
        "curves_s": packed_s,
        "curves_cpu_s": packed_cpu,
        "live_curves_s": live_s,
        "live_curves_cpu_s": live_cpu,
        "finish_s": finish_s,
        "curve_points": sum(len(c) for c in packed),
        "board_s": statistics.median(board_times),
        "db_mb": os.path.getsize(ours.db) / 2**20,
    }


def bench_mlflow_reads(mlflow: MLflow, keys: int, steps: int) -> float:
    """`get_metric_history` for five curves of `steps` points, bulk-loaded first (1,000 values per `log_batch`,
    MLflow's limit; not timed)."""
    rng = random.Random(2)
    run = mlflow.client.create_run(mlflow.experiment).info.run_id
    batch: list = []
    now = int(time.time() * 1000)
    for step in range(1, steps + 1):
        for k in range(min(5, keys)):
            batch.append(mlflow.Metric(f"metric_{k}", rng.random(), now, step))
            if len(batch) == 1000:
                mlflow.client.log_batch(run, metrics=batch)
                batch = []
    if batch:
        mlflow.client.log_batch(run, metrics=batch)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        curves = [mlflow.client.get_metric_history(run, f"metric_{k}") for k in range(min(5, keys))]
        times.append(time.perf_counter() - start)
    assert all(len(c) == steps for c in curves), [len(c) for c in curves]
    return statistics.median(times)


def _print_writes(opts, writes: dict, trk: Optional[dict]) -> None:
    us = 1e6
    ours, raw, theirs = writes["ours"], writes["raw"], writes["mlflow"]
    thread_per_step = ours["writer"].thread_s / ours["steps"]
    print(
        f"writes: {opts.keys} keys per step, one transaction per step; hftrain, bare sqlite3 and MLflow interleaved in "
        "10 rounds, each round timed until its last write is committed"
    )
    print(
        f"  hftrain TrackerCallback.on_log: {ours['steps']} steps committed in {ours['write_s']:.3f} s = "
        f"{ours['per_step_s'] * us:.1f} us/step, {ours['per_value_s'] * us:.2f} us/value (target < 20); "
        f"CPU time {ours['cpu_per_value_s'] * us:.2f} us/value (both threads)"
    )
    print(
        f"    of which the training thread spent {thread_per_step * us:.1f} us/step in on_log "
        f"({thread_per_step / opts.keys * us:.2f} us/value); the writer thread commits in the background"
    )
    print(
        f"  bare sqlite3 reference (same layout and pragmas, default autocheckpoint, no summary, no heartbeat, "
        f"no callback, no thread): {raw['per_step_s'] * us:.1f} us/step, {raw['per_value_s'] * us:.2f} us/value "
        f"(CPU {raw['cpu_per_value_s'] * us:.2f}); hftrain = {ours['per_step_s'] / raw['per_step_s']:.2f}x it"
    )
    if trk is not None:
        print(
            f"  trackio {_version('trackio')} local mode, one whole run after the rounds (log + finish, which commits): "
            f"{trk['steps']} steps in {trk['write_s']:.3f} s = {trk['per_step_s'] * us:.1f} us/step, "
            f"{trk['per_value_s'] * us:.2f} us/value (CPU {trk['cpu_per_value_s'] * us:.2f}); training thread "
            f"{trk['thread_per_step_s'] * us:.1f} us/step in log"
        )
    print(
        f"  MLflow {_version('mlflow-skinny')} log_batch per step: {theirs['steps']} steps (fewer, to bound its time) "
        f"in {theirs['write_s']:.3f} s = {theirs['per_step_s'] * us:.1f} us/step, {theirs['per_value_s'] * us:.1f} us/value"
    )
    line = f"  per committed step hftrain is {theirs['per_step_s'] / ours['per_step_s']:.0f}x faster than MLflow (target >= 50x)"
    if trk is not None:
        speed = trk["per_step_s"] / ours["per_step_s"]
        line += (
            f" and {speed:.1f}x faster than trackio"
            if speed >= 1
            else f" and {1 / speed:.1f}x slower than trackio (which commits 0.5 s of logs per transaction)"
        )
    line += f"; per step of training-thread time: {theirs['per_step_s'] / thread_per_step:.0f}x MLflow"
    if trk is not None:
        line += f", {trk['thread_per_step_s'] / thread_per_step:.1f}x trackio"
    print(line)


def _print_reads(opts, reads: dict, trk: Optional[dict], mlflow_curves_s: Optional[float]) -> None:
    print(f"reads (median of 7, trackio and MLflow of 3; database {reads['db_mb']:.1f} MB)")
    line = (
        f"  five full curves, {reads['curve_points']} points, finished run: hftrain {reads['curves_s'] * 1e3:.2f} ms "
        f"(target < 10; CPU time {reads['curves_cpu_s'] * 1e3:.2f} ms)"
    )
    if trk is not None:
        line += f", trackio {trk['curves_s'] * 1e3:.1f} ms ({trk['curves_s'] / reads['curves_s']:.0f}x)"
    if mlflow_curves_s is not None:
        line += (
            f", MLflow get_metric_history {mlflow_curves_s * 1e3:.1f} ms ({mlflow_curves_s / reads['curves_s']:.0f}x)"
        )
    print(line)
    print(
        f"  the same five curves while the run was live (packed every 1,000 logs, the newest points rows): "
        f"{reads['live_curves_s'] * 1e3:.2f} ms; on_train_end (drain the writer, pack the curves): "
        f"{reads['finish_s'] * 1e3:.0f} ms"
    )
    print(
        f"  leaderboard of one metric over {opts.runs} runs (last/min/max and their steps): "
        f"{reads['board_s'] * 1e3:.3f} ms"
    )


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--mlflow-steps", type=int, default=300, help="steps MLflow logs (its per-step cost is used)")
    parser.add_argument("--trackio-steps", type=int, default=None, help="steps trackio logs (default: --steps)")
    parser.add_argument("--runs", type=int, default=100, help="runs in the leaderboard")
    parser.add_argument("--skip-mlflow-reads", action="store_true", help="skip loading MLflow's curves (~100k values)")
    parser.add_argument("--skip-trackio", action="store_true", help="leave trackio out (it is in the dev extra)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hftrain-bench-") as folder:
        writes = bench_writes(folder, opts.steps, opts.keys, opts.mlflow_steps)
        trk = None if opts.skip_trackio else bench_trackio(folder, opts.trackio_steps or opts.steps, opts.keys)
        reads = bench_reads(writes["ours"]["writer"], opts.keys, opts.steps, opts.runs)
        mlflow_curves_s = (
            None if opts.skip_mlflow_reads else bench_mlflow_reads(writes["mlflow"]["writer"], opts.keys, opts.steps)
        )
    _print_writes(opts, writes, trk)
    _print_reads(opts, reads, trk, mlflow_curves_s)
    ours, theirs = writes["ours"], writes["mlflow"]
    met = {
        "write ratio >= 50x": theirs["per_step_s"] / ours["per_step_s"] >= 50,
        "< 20 us/value": ours["per_value_s"] < 20e-6,
        "five curves < 10 ms": reads["curves_s"] < 0.01,
    }
    if trk is not None:
        met["ahead of trackio on writes"] = trk["per_step_s"] > ours["per_step_s"]
        met["and on reads"] = trk["curves_s"] > reads["curves_s"]
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in met.items()))
    try:
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    except OSError:
        pass


if __name__ == "__main__":
    main()
