"""`TrackerCallback`: records every run of any `transformers.Trainer` (and the diffusion loop) in the SQLite store.

Only world rank 0 writes. One transaction per `on_log`, committed by the tracker's writer thread while training
goes on (`writer.py`); the queue is drained before every checkpoint and at the end. It reads from the trainer and
never writes to it (except its own entry in `state.stateful_callbacks`, which is how a resumed run finds its run
id), draws no random numbers and moves no tensors, so training is unchanged with it on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import sys
import threading
import time
from typing import Any, Optional

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from ..errors import TrackerError
from ..host import BatchGeometry
from . import lifecycle
from .lineage import parent_tags
from .store import TrackerStore, default_db_path, flatten
from .sysinfo import SystemMonitor, git_info, system_info
from .writer import TrackerWriter

__all__ = ["TrackerCallback", "find_tracker", "log_samples", "parse_tags"]

logger = logging.get_logger(__name__)

_PACK_EVERY_LOGS = 1000  # logs between packings of a live run's curves when no checkpoint comes sooner


def parse_tags(text: Optional[str]) -> dict[str, str]:
    """`"team=nlp,ablation"` as `{"team": "nlp", "ablation": ""}` (the `--tracker_tags` format)."""
    tags: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if item:
            key, _, value = item.partition("=")
            tags[key.strip()] = value.strip()
    return tags


def find_tracker(trainer: Any) -> Optional["TrackerCallback"]:
    """The trainer's `TrackerCallback`, if it has one (for other features that want to record events)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TrackerCallback):
            return callback
    return None


def log_samples(trainer: Any, name: str, rows: list[dict], file: Optional[str] = None) -> None:
    """Generation samples as a table, from world rank 0: a `samples` event of the tracked run (the report shows it
    as a table), a markdown table for TensorBoard's text tab and a `wandb.Table` for W&B, each only when that
    integration is on. Both go through the integration's own `on_log`, so they land where its other values do
    (`eval/samples` at the current step). A failing integration is a warning, never a failed evaluation."""
    from transformers.integrations import TensorBoardCallback, WandbCallback

    if not rows or not trainer.is_world_process_zero():
        return
    state, step = trainer.state, trainer.state.global_step
    tracker = find_tracker(trainer)
    if tracker is not None:
        tracker.log_event("samples", {"name": name, "file": file, "rows": rows}, step=step)
    columns = list(dict.fromkeys(key for row in rows for key in row if key != "step"))
    for callback in trainer.callback_handler.callbacks:
        try:
            if isinstance(callback, TensorBoardCallback):
                logs = {f"{name}_samples": _markdown_table(columns, rows)}
            elif isinstance(callback, WandbCallback):
                import wandb

                cells = [[_cell_text(row.get(c)) for c in columns] for row in rows]
                logs = {f"{name}_samples": wandb.Table(columns=columns, data=cells)}
            else:
                continue
            callback.on_log(trainer.args, state, trainer.control, logs=logs)
        except Exception as exc:
            logger.warning(f"hftrain: {name} samples not logged to {type(callback).__name__} ({exc})")


def _cell_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _markdown_table(columns: list[str], rows: list[dict]) -> str:
    """Rows as a markdown table (TensorBoard renders text as markdown); pipes escaped, line breaks as <br>."""

    def cell(value: Any) -> str:
        return _cell_text(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _scalar(value: Any) -> tuple[bool, Optional[float]]:
    if isinstance(value, bool):
        return True, float(value)
    if isinstance(value, (int, float)):
        number = float(value)
        return True, (None if math.isnan(number) else number)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d tensor or numpy scalar
        return _scalar(value.item())
    return False, None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class TrackerCallback(TrainerCallback, ExportableState):
    """Records params, metric curves, system info, git state, checkpoints, events and a true final status.

    Args:
        db_path: the SQLite file (default: `$HFTRAIN_TRACKER_DB` or `~/.cache/hftrain/runs.db`).
        experiment: experiment name (default: `$HFTRAIN_EXPERIMENT` or `default`).
        tags: tags for every run this callback records.
        system_interval: seconds between `sys/` samples (throughput, memory, GPU use) and heartbeats; 0 turns
            the sampler off (heartbeats then come with the logs).
        heartbeat_timeout: seconds without a heartbeat after which a running run reads as crashed.
        hash_max_mb: checkpoint files up to this size get a SHA-256 in the artifacts table.
        trainer_name: the trainer class, recorded with the run.
        validate: open the database now, so a bad path fails before any training work (rank 0 only).
    """

    def __init__(
        self,
        db_path: Optional[str] = None,
        experiment: Optional[str] = None,
        tags: Optional[dict[str, str]] = None,
        system_interval: float = 30.0,
        heartbeat_timeout: float = 300.0,
        hash_max_mb: float = 100.0,
        trainer_name: Optional[str] = None,
        validate: bool = False,
    ):
        self.db_path = os.path.abspath(os.path.expanduser(db_path or default_db_path()))
        self.experiment = experiment or os.environ.get("HFTRAIN_EXPERIMENT") or "default"
        self.tags = dict(tags or {})
        self.system_interval = float(system_interval)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.hash_max_mb = float(hash_max_mb)
        self.trainer_name = trainer_name
        self.run_uuid: Optional[str] = None
        self.run_id: Optional[int] = None
        self._store: Optional[TrackerStore] = None
        self._live = False
        self._signalled: Optional[int] = None
        self._sampler: Optional[_Sampler] = None
        self._writer: Optional[TrackerWriter] = None
        self._logs_since_pack = 0
        self._last_step = 0
        self._write_failures = 0
        if validate:
            self._open()

    # -- ExportableState: the run id travels in the checkpoint's trainer_state.json ---------------------------------
    def state(self) -> dict:
        """Constructor arguments and the run id, saved with each checkpoint so a resume continues the same run."""
        return {
            "args": {
                "db_path": self.db_path,
                "experiment": self.experiment,
                "tags": self.tags,
                "system_interval": self.system_interval,
                "heartbeat_timeout": self.heartbeat_timeout,
                "hash_max_mb": self.hash_max_mb,
                "trainer_name": self.trainer_name,
            },
            "attributes": {"run_uuid": self.run_uuid},
        }

    def _open(self) -> TrackerStore:
        if self._store is None:
            self._store = TrackerStore(self.db_path)
        return self._store

    # -- public API for other features ------------------------------------------------------------------------------
    def log_event(self, kind: str, payload: Any = None, step: Optional[int] = None) -> None:
        """Record an event (e.g. an anomaly found by the monitor) in the current run; no-op off rank 0."""
        if self.run_id is not None and self._store is not None:
            step = self._last_step if step is None else step
            self._write(kind, step, self._store.log_event, self.run_id, step, kind, payload)

    # -- events -----------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # transformers indexes `stateful_callbacks[name]` when saving; a checkpoint written without this callback
        # (tracker off, or the parent trainer) would otherwise make the next save fail after a resume.
        if isinstance(state.stateful_callbacks, dict):
            state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        if not state.is_world_process_zero:
            return
        if self._live:  # the previous train() of this trainer raised and never reached on_train_end
            self.end_abnormally("failed", "training raised before on_train_end; a new train() started")
        self._close_writer()  # (none is left running normally; never two threads on one connection)
        store = self._open()
        self._signalled = None
        self._last_step = state.global_step
        self._logs_since_pack = 0
        saved_uuid = _saved_run_uuid(state) if state.global_step > 0 else None
        existing = store.run_by_uuid(saved_uuid) if saved_uuid else None
        restart = existing is None and state.global_step == 0
        if restart:
            existing = _restartable_run(store, self.experiment, args, state)
        if existing is not None:
            self.run_id, self.run_uuid = existing["id"], existing["uuid"]
            store.resume_run(self.run_id, state.global_step)
            if restart:  # the same run started over: its params are this start's
                store.log_params(self.run_id, _params_and_config(args, state, model)[0])
            logger.info(f"hftrain tracker: resuming run {self.run_uuid} at step {state.global_step} ({self.db_path})")
        else:
            self._create_run(store, args, state, model)
            logger.info(f"hftrain tracker: run {self.run_uuid} in {self.db_path}")
        self._live = True
        lifecycle.register(self)
        self._writer = TrackerWriter(store, self._report_failure)
        self._writer.start()
        if self.system_interval > 0:
            self._sampler = _Sampler(self, args, state)
            self._sampler.start()

    def _create_run(self, store: TrackerStore, args, state, model) -> None:
        import uuid

        self.run_uuid = uuid.uuid4().hex
        params, config = _params_and_config(args, state, model)
        # a model loaded from another run's output folder: that run is this one's parent (the user's tags win)
        tags = {**parent_tags(getattr(model, "name_or_path", None), self.db_path, self.run_uuid), **self.tags}
        if state.trial_name:
            tags["trial"] = state.trial_name
        name = (
            state.trial_name or getattr(args, "run_name", None) or os.path.basename(str(args.output_dir).rstrip("/"))
        )
        self.run_id = store.create_run(
            self.experiment,
            name,
            run_uuid=self.run_uuid,
            params=params,
            tags=tags,
            config=config,
            system=system_info(),
            git=git_info(),
            trainer=self.trainer_name,
            output_dir=os.path.abspath(str(args.output_dir)) if args.output_dir else None,
            heartbeat_timeout=self.heartbeat_timeout,
        )

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.run_id is None:  # evaluate() or predict() without train(): still a run worth keeping
            self._create_run(self._open(), args, state, model)
            self._store.set_status(self.run_id, "finished")
        metrics: dict[str, Optional[float]] = {}
        events = []
        for key, value in logs.items():
            is_number, number = _scalar(value)
            if is_number:
                metrics[key] = number
            else:  # lists, strings, tables: kept whole as an event, not dropped
                events.append(("log", {"key": key, "value": _jsonable(value)}))
        self._last_step = state.global_step
        self._write(
            "metrics",
            state.global_step,
            self._open().log_metrics,
            self.run_id,
            state.global_step,
            metrics,
            epoch=state.epoch,
            events=events,
        )
        self._logs_since_pack += 1
        if self._logs_since_pack >= _PACK_EVERY_LOGS:
            self._pack(below_step=state.global_step)
        if control is not None and control.should_save and self._writer is not None:
            # a checkpoint is saved right after this log: its steps must be in the database before it exists, so
            # that a resume from it (which drops what came later) finds every step up to it
            self._writer.flush()

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.run_id is None:
            return
        if self._writer is not None:
            self._writer.flush()  # checkpoints saved without a log just before (hftrain's SIGTERM stop, a user's)
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            # the files are listed now (a later save may rotate this checkpoint away) and hashed on the writer
            store, files = self._open(), _list_files(folder)
            self._write(
                "checkpoint",
                state.global_step,
                lambda: store.log_artifacts(self.run_id, self._artifact_rows(files, "checkpoint", state.global_step)),
            )
        self._pack(below_step=state.global_step)

    def _pack(self, below_step: Optional[int]) -> None:
        """Queue the packing of every curve's new points (see `TrackerStore.pack_curves`), so a long curve reads
        as a few blobs, live or finished. Below the current step while training: every later write is at this
        step or after, so none lands behind a chunk. 256 points at least, so frequent checkpoints or logs do not
        leave many tiny chunks; the end of training packs the rest."""
        self._logs_since_pack = 0
        self._write(
            "packed curves",
            self._last_step,
            self._open().pack_curves,
            self.run_id,
            below_step=below_step,
            min_points=1 if below_step is None else 256,
        )

    def log_artifact(self, path: str, kind: str = "file", step: Optional[int] = None) -> None:
        """Record a file, or every file under a folder, by path, size and SHA-256 in the current run (the files stay
        where they are); no-op off rank 0 or outside a run. The diffusion loop records its sample grids this way."""
        if self.run_id is None or self._store is None or not os.path.exists(path):
            return
        step = self._last_step if step is None else step
        store, files = self._store, _list_files(path)
        self._write(kind, step, lambda: store.log_artifacts(self.run_id, self._artifact_rows(files, kind, step)))

    def _write(self, what: str, step: int, write, *args, **kwargs) -> None:
        """Queue a write to the writer thread while it runs (training); outside training, write now."""
        writer = self._writer
        if writer is not None and writer.is_alive():
            writer.submit(what, step, write, *args, **kwargs)
            return
        try:
            write(*args, **kwargs)
        except (sqlite3.Error, TrackerError, OSError) as exc:
            self._report_failure(what, step, exc)

    def _report_failure(self, what: str, step: int, exc: BaseException) -> None:
        # A database that fails mid-run (disk full, file removed, I/O error) must never stop training: the store
        # already retried a busy database; report the gap loudly and carry on.
        self._write_failures += 1
        if self._write_failures == 1 or self._write_failures % 100 == 0:
            logger.error(
                f"hftrain tracker: could not record {what} at step {step} in {self.db_path} "
                f"({type(exc).__name__}: {exc}); training goes on, the run record has a gap "
                f"({self._write_failures} failed write(s) so far)"
            )

    def _close_writer(self, timeout: Optional[float] = None) -> None:
        """Drain the writer's queue and stop it; afterwards the main connection is this thread's again."""
        writer, self._writer = self._writer, None
        if writer is not None and not writer.close(timeout):
            self._store = None  # the writer still uses that connection: it keeps it, later writes open a new one
            logger.warning(
                f"hftrain tracker: {self.db_path} still busy after {timeout} s; "
                "the last queued values of this run may be missing"
            )

    def _artifact_rows(self, files: list[tuple[str, int]], kind: str, step: Optional[int]) -> list:
        limit = self.hash_max_mb * 1024 * 1024
        return [(file, kind, step, size, _sha256(file) if size <= limit else None) for file, size in files]

    def on_train_error(self, trainer: Any, exc: BaseException) -> None:
        """`train()` raised (hftrain.resilience calls this): record the true status, failed, or killed for Ctrl-C,
        even when the caller catches the exception (a notebook, an HPO loop) and no excepthook ever runs."""
        if self._live:
            status = "killed" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.end_abnormally(status, f"{type(exc).__name__}: {exc}")

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self._live:
            return
        self._stop_sampler(final=True)
        self._pack(below_step=None)
        self._close_writer()
        status = "killed" if self._signalled is not None else "finished"
        error = f"signal {self._signalled}" if self._signalled is not None else None
        try:
            self._open().set_status(self.run_id, status, error)
            self._store.checkpoint()
        except (
            sqlite3.Error,
            TrackerError,
        ):  # the long-lived connection failed mid-run: one fresh try for the final status
            try:
                with TrackerStore(self.db_path, timeout=5.0) as store:
                    store.set_status(self.run_id, status, error)
            except Exception as exc:  # never fail a finished training over its record
                logger.error(f"hftrain tracker: could not record status {status} for run {self.run_uuid}: {exc}")
        self._live = False
        lifecycle.unregister(self)

    # -- lifecycle hooks (called from signal handlers, excepthook, atexit) -----------------------------------------
    def end_abnormally(self, status: str, error: str) -> None:
        """Write a final status for a run that did not reach `on_train_end` (on a fresh connection: this may run
        inside a signal handler while the main connection is mid-transaction)."""
        if not self._live:
            return
        self._live = False
        lifecycle.unregister(self)
        self._stop_sampler(final=False)
        self._close_writer(timeout=5.0)  # may run in a signal handler or at exit: what is queued, within reason
        if self._signalled is not None:
            status, error = "killed", f"signal {self._signalled}; then {error}"
        try:
            with TrackerStore(self.db_path, timeout=5.0) as store:
                store.set_status(self.run_id, status, error, only_if_running=True)
        except Exception as exc:  # the process is going down anyway; the heartbeat will tell
            logger.warning(f"hftrain tracker: could not record status {status} for run {self.run_uuid}: {exc}")

    def note_signal(self, signum: int, terminating: bool) -> None:
        """Remember that the run was signalled; if the signal ends the process, record the run as killed now."""
        self._signalled = signum
        try:
            with TrackerStore(self.db_path, timeout=5.0) as store:
                store.log_event(self.run_id, self._last_step, "signal", {"signal": int(signum)})
        except Exception as exc:
            logger.warning(f"hftrain tracker: could not record signal {signum}: {exc}")
        if terminating:
            self.end_abnormally("killed", f"signal {signum}")

    def _stop_sampler(self, final: bool) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop(final)


def _params_and_config(args, state, model) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's params (flat) and config (nested): the arguments, the model and PEFT configs, parameter counts and
    hyperparameter-search trial params."""
    args_dict = args.to_dict()
    config: dict[str, Any] = {"args": args_dict}
    params = flatten(args_dict, "args")
    sources = getattr(args, "hftrain_config_sources", None)  # field -> yaml|env|flag|..., from HFTrainParser
    if sources:  # also as params: `hftrain runs show` and run_history/run.json list params
        config["config_sources"] = dict(sources)
        params.update(flatten(config["config_sources"], "config_source"))
    model_config = getattr(model, "config", None)
    if model_config is not None and hasattr(model_config, "to_dict"):
        config["model"] = model_config.to_dict()
        params.update(flatten(config["model"], "model"))
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        config["peft"] = {name: cfg.to_dict() for name, cfg in peft_config.items()}
        params.update(flatten(config["peft"], "peft"))
    if model is not None and hasattr(model, "parameters"):
        params["num_parameters"] = sum(p.numel() for p in model.parameters())
        params["num_trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if state.trial_params:
        params.update(flatten(dict(state.trial_params), "trial"))
    return params, config


def _restartable_run(store: TrackerStore, experiment: str, args, state) -> Optional[dict[str, Any]]:
    """The run a start from step 0 continues: the newest run of this experiment in the same output_dir, when it
    ended killed, crashed or failed before writing any checkpoint. With nothing to resume from, the restarted
    process is the same run started over, not a second run (a trial of a search always gets its own)."""
    if state.trial_name or not getattr(args, "output_dir", None):
        return None
    output_dir = os.path.abspath(str(args.output_dir))
    for run in store.runs(experiment=experiment):  # newest first
        if run["output_dir"] != output_dir:
            continue
        if run["status"] not in ("killed", "crashed", "failed"):
            return None
        checkpoints = [a for a in store.artifacts(run["id"]) if a["kind"] == "checkpoint"]
        return None if checkpoints else run
    return None


# The checkpoint keys its callback states by class name; a run recorded by hftrain's trainer and resumed through
# `report_to: [hftrain]` (or the other way round) is still the same run.
_STATE_NAMES = ("TrackerCallback", "ReportToTrackerCallback")


def _saved_run_uuid(state) -> Optional[str]:
    saved_states = state.stateful_callbacks or {}
    for name in _STATE_NAMES:
        saved = saved_states.get(name)
        for entry in saved if isinstance(saved, list) else [saved]:
            run_uuid = entry.get("attributes", {}).get("run_uuid") if isinstance(entry, dict) else None
            if run_uuid:
                return run_uuid
    return None


def _list_files(path: str) -> list[tuple[str, int]]:
    """`(absolute path, size)` of a file, or of every file under a folder."""
    files = (
        [path]
        if os.path.isfile(path)
        else [os.path.join(root, name) for root, _, names in os.walk(path) for name in sorted(names)]
    )
    return [(os.path.abspath(file), os.path.getsize(file)) for file in files]


def _sha256(path: str) -> Optional[str]:
    """The file's SHA-256, or None if it is gone by the time it is read (a rotated checkpoint)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


class _Sampler(threading.Thread):
    """Every `system_interval` seconds: throughput and the machine's figures (`SystemMonitor`: CPU, memory, disk,
    network, GPUs) as `sys/` series, whose write is the heartbeat.

    A daemon thread that only reads counters the trainer already keeps and queues its sample to the writer thread,
    so training never waits for it. Tokens/s comes from `state.num_input_tokens_seen` (transformers'
    `include_num_input_tokens_seen`) or, without it, from the `num_tokens` TRL's trainers log anyway; nothing is
    counted for it.
    """

    def __init__(self, tracker: TrackerCallback, args, state):
        super().__init__(name="hftrain-tracker-sampler", daemon=True)
        self.tracker, self.state = tracker, state
        self.interval = tracker.system_interval
        self.samples_per_step = BatchGeometry.from_args(args).global_batch
        self._stop_event = threading.Event()
        self._monitor: Optional[SystemMonitor] = None
        self._last = (time.perf_counter(), state.global_step, self._tokens_seen())

    def run(self) -> None:
        self._system()  # psutil and NVML start here, off the training thread
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self, final: bool) -> None:
        self._stop_event.set()
        if threading.current_thread() is not self:
            self.join(timeout=10)
        if final and self.tracker._store is not None:
            self.sample()

    def _system(self) -> Optional[SystemMonitor]:
        if self._monitor is None:
            try:
                self._monitor = SystemMonitor()
            except Exception as exc:  # psutil missing or refused: throughput is still worth recording
                logger.warning(f"hftrain tracker: no system figures ({type(exc).__name__}: {exc})")
                self._monitor = False
        return self._monitor or None

    def _tokens_seen(self) -> Optional[float]:
        """Tokens trained on so far: transformers' own count, else the newest `num_tokens` TRL logged (read from the
        log history, which the training thread only appends to); None when the trainer counts none."""
        if self.state.num_input_tokens_seen:
            return float(self.state.num_input_tokens_seen)
        history = self.state.log_history
        for entry in history[-1:-6:-1]:  # a train log is among the last few (eval logs come between)
            if isinstance(entry.get("num_tokens"), (int, float)):
                return float(entry["num_tokens"])
        return None

    def sample(self) -> None:
        """Write one `sys/` sample at the current step."""
        now, step, tokens = time.perf_counter(), self.state.global_step, self._tokens_seen()
        then, step0, tokens0 = self._last
        self._last = (now, step, tokens)
        elapsed = max(now - then, 1e-9)
        values: dict[str, Optional[float]] = {}
        if step > step0:  # no step in between (evaluation, saving): keep the last rate rather than write a 0
            values["sys/steps_per_second"] = (step - step0) / elapsed
            values["sys/samples_per_second"] = (step - step0) * self.samples_per_step / elapsed
            if tokens is not None and tokens0 is not None and tokens > tokens0:
                values["sys/tokens_per_second"] = (tokens - tokens0) / elapsed
        monitor = self._system()
        if monitor is not None:
            values.update(monitor.sample())
        values.update(_torch_gpu_values())
        # Only ever through the writer: this may be the sampler's own thread, which must never use the connection.
        writer, store, run_id = self.tracker._writer, self.tracker._store, self.tracker.run_id
        if writer is not None and writer.is_alive() and store is not None and run_id is not None:
            writer.submit("system sample", step, store.log_metrics, run_id, step, values)


def _torch_gpu_values() -> dict[str, float]:
    """This process's allocated and reserved CUDA memory, as torch's allocator sees it (NVML gives the device's)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    values: dict[str, float] = {}
    for index in range(torch.cuda.device_count()):
        values[f"sys/gpu{index}_memory_allocated_mb"] = torch.cuda.memory_allocated(index) / 2**20
        values[f"sys/gpu{index}_memory_reserved_mb"] = torch.cuda.memory_reserved(index) / 2**20
    return values
