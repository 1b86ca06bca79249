"""The tracker's write and read cost against MLflow's SQLite store, measured in the same run.

    python bench/tracker.py [--steps 10000] [--keys 10] [--mlflow-steps 300] [--runs 100]

Writes: `--keys` metrics per step for `--steps` steps through the real `TrackerCallback.on_log` (one transaction per
step, exactly what training does), against MLflow's `MlflowClient.log_batch` with one batch per step on a
`sqlite:///` store in a temporary directory. MLflow costs several ms per step, so by default it logs only
`--mlflow-steps` steps and its per-step cost is compared (the output says so); MLflow's database creation and
migrations are not timed.

Reads: five full curves of `--steps` points each (`TrackerStore.curve_points`, what the report reads), against MLflow's `get_metric_history` on a
run holding the same five curves (bulk-loaded 1,000 values per `log_batch`, not timed); and a leaderboard of one
metric over `--runs` runs (last, min, max and the best step of each, `TrackerStore.leaderboard`).

Targets (issue 3): >= 50x faster writes per step than MLflow, < 20 us per value, < 10 ms for five 10,000-point curves.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def _values(keys: int, step: int, rng: random.Random) -> dict[str, float]:
    return {f"metric_{k}": rng.random() + 1.0 / (1 + step) for k in range(keys)}


class Ours:
    """The real callback path: `TrackerCallback.on_log` with one log dict per step (one transaction each)."""

    def __init__(self, folder: str, keys: int):
        from hftrain.tracking.callback import TrackerCallback

        self.db = os.path.join(folder, "hftrain.db")
        self.callback = TrackerCallback(db_path=self.db, experiment="bench", system_interval=0)
        self.store = self.callback._open()
        self.callback.run_id = self.store.create_run("bench", "bench-0", params={"keys": keys})
        self.state = SimpleNamespace(is_world_process_zero=True, global_step=0, epoch=0.0)

    def write(self, step: int, logs: dict[str, float]) -> None:
        self.state.global_step, self.state.epoch = step, step / 1000
        self.callback.on_log(None, self.state, None, logs=logs)


class Raw:
    """The leanest possible writer (TRACKER_NOTES §5.1 `raw_wal_step_commit`: WAL + NORMAL, one `executemany` +
    COMMIT per step, no summary, no heartbeat): the floor, to see how much of a figure is this machine's load."""

    def __init__(self, folder: str):
        import sqlite3

        self.conn = sqlite3.connect(os.path.join(folder, "raw.db"), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE m(run_id INTEGER, key_id INTEGER, step INTEGER, value REAL, wall_time REAL, "
                          "PRIMARY KEY(run_id, key_id, step)) WITHOUT ROWID")

    def write(self, step: int, logs: dict[str, float]) -> None:
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany("INSERT INTO m VALUES(?, ?, ?, ?, ?)",
                              [(1, k, step, v, now) for k, v in enumerate(logs.values())])
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

    def write(self, step: int, logs: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run, metrics=[self.Metric(k, v, now, step) for k, v in logs.items()])


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
            seconds[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
            done[name] = upto
    return {name: {"steps": counts[name], "write_s": seconds[name], "per_step_s": seconds[name] / counts[name],
                   "per_value_s": seconds[name] / (counts[name] * keys),
                   "cpu_per_value_s": cpu[name] / (counts[name] * keys), "writer": writers[name]} for name in writers}


def bench_reads(ours: Ours, keys: int, steps: int, runs: int) -> dict[str, float]:
    """Five full curves of the written run (`TrackerStore.curve_points`, what the report reads) and a leaderboard
    of one metric over `runs` runs (`TrackerStore.leaderboard`), on a fresh connection like `hftrain runs`."""
    from hftrain.tracking.store import TrackerStore

    rng = random.Random(1)
    for index in range(1, runs):  # the other runs: 100 steps each, one transaction per step; not timed
        other = ours.store.create_run("bench", f"bench-{index}")
        for step in range(1, 101):
            ours.store.log_metrics(other, step, _values(keys, step, rng))
    run_id = ours.callback.run_id
    curve_keys = [f"metric_{k}" for k in range(min(5, keys))]
    curve_times, curve_cpu, board_times = [], [], []
    with TrackerStore(ours.db) as reader:
        for _ in range(7):
            start, start_cpu = time.perf_counter(), time.process_time()
            curves = [reader.curve_points(run_id, key) for key in curve_keys]
            curve_times.append(time.perf_counter() - start)
            curve_cpu.append(time.process_time() - start_cpu)
            start = time.perf_counter()
            board = reader.leaderboard("metric_0")
            board_times.append(time.perf_counter() - start)
    assert all(len(c) == steps for c in curves), [len(c) for c in curves]
    assert len(board) == runs and all(row["min_step"] is not None for row in board)
    ours.store.close()
    return {"curves_s": statistics.median(curve_times), "curves_cpu_s": statistics.median(curve_cpu),
            "curve_points": sum(len(c) for c in curves),
            "board_s": statistics.median(board_times), "db_mb": os.path.getsize(ours.db) / 2**20}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--mlflow-steps", type=int, default=300, help="steps MLflow logs (its per-step cost is used)")
    parser.add_argument("--runs", type=int, default=100, help="runs in the leaderboard")
    parser.add_argument("--skip-mlflow-reads", action="store_true", help="skip loading MLflow's curves (~100k values)")
    opts = parser.parse_args()
    us = 1e6
    with tempfile.TemporaryDirectory(prefix="hftrain-bench-") as folder:
        writes = bench_writes(folder, opts.steps, opts.keys, opts.mlflow_steps)
        reads = bench_reads(writes["ours"]["writer"], opts.keys, opts.steps, opts.runs)
        mlflow_curves_s = None if opts.skip_mlflow_reads else bench_mlflow_reads(writes["mlflow"]["writer"], opts.keys,
                                                                                  opts.steps)
    ours, raw, theirs = writes["ours"], writes["raw"], writes["mlflow"]
    ratio = theirs["per_step_s"] / ours["per_step_s"]
    print(f"writes: {opts.keys} keys per step, one transaction per step; the three writers interleaved in 10 rounds")
    print(f"  hftrain TrackerCallback.on_log: {ours['steps']} steps in {ours['write_s']:.3f} s = "
          f"{ours['per_step_s'] * us:.1f} us/step, {ours['per_value_s'] * us:.2f} us/value (target < 20); "
          f"CPU time {ours['cpu_per_value_s'] * us:.2f} us/value")
    print(f"  bare sqlite3 floor (no summary, no heartbeat, no callback): {raw['per_step_s'] * us:.1f} us/step, "
          f"{raw['per_value_s'] * us:.2f} us/value (CPU {raw['cpu_per_value_s'] * us:.2f}); "
          f"hftrain = {ours['per_step_s'] / raw['per_step_s']:.2f}x the floor")
    print(f"  MLflow log_batch per step: {theirs['steps']} steps (fewer, to bound its time) in {theirs['write_s']:.3f} s"
          f" = {theirs['per_step_s'] * us:.1f} us/step, {theirs['per_value_s'] * us:.1f} us/value")
    print(f"  ratio per step: hftrain is {ratio:.0f}x faster than MLflow (target >= 50x)")
    print(f"reads (median of repeats; database {reads['db_mb']:.1f} MB)")
    line = (f"  five full curves, {reads['curve_points']} points: hftrain {reads['curves_s'] * 1e3:.2f} ms (target < 10;"
            f" CPU time {reads['curves_cpu_s'] * 1e3:.2f} ms)")
    if mlflow_curves_s is not None:
        line += (f", MLflow get_metric_history {mlflow_curves_s * 1e3:.1f} ms, "
                 f"ratio {mlflow_curves_s / reads['curves_s']:.0f}x")
    print(line)
    print(f"  leaderboard of one metric over {opts.runs} runs (last/min/max and their steps): "
          f"{reads['board_s'] * 1e3:.3f} ms")
    met = {"write ratio >= 50x": ratio >= 50, "< 20 us/value": ours["per_value_s"] < 20e-6,
           "five curves < 10 ms": reads["curves_s"] < 0.01}
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in met.items()))
    try:
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    except OSError:
        pass


if __name__ == "__main__":
    main()
