"""Curriculum learning: score examples by difficulty, open the data easiest first, and stay exact on resume.

Three parts, each usable alone:

* **scorers** turn the training set into one number per row (`length`, `column`, `loss`, a registered name,
  `"module:function"`, or a callable taking a row);
* **pacing** (`linear`, `root`, `geometric`, `step`, `none`) says what share of the rows (easiest first) is open
  at optimizer step t;
* `CurriculumSampler` is a `torch.utils.data.Sampler[int]` whose order is a pure function of (seed, epoch, scores,
  batch geometry). It is deliberately *not* a `RandomSampler` subclass: accelerate would swap it for its own.
  Its length never changes (pacing picks which rows fill the fixed number of slots, never how many slots).

`CurriculumCallback` pushes `state.epoch` into the sampler at every epoch start (accelerate does not reach a
custom sampler after a multi-process mid-epoch resume: its `DataLoaderShard` passes its own iteration count), refuses a resume whose curriculum
differs from the one in the checkpoint, and logs `curriculum/open_share` and `curriculum/mean_difficulty`.

Every loop gets all of this through the host contract: `HFTrainMixin._get_train_sampler` and the diffusion loop
both call `sampler_for_host(host)`; `build_curriculum_sampler` serves a loop outside hftrain.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import random
from typing import Any, Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from .config import hftrain_settings
from .config.groups import PACINGS
from .errors import ConfigError, DataError, ModelLoadError

logger = logging.get_logger(__name__)

__all__ = [
    "PACINGS",
    "SCORERS",
    "register_scorer",
    "pacing_share",
    "compute_scores",
    "CurriculumSampler",
    "CurriculumCallback",
    "build_curriculum_sampler",
    "curriculum_callbacks",
    "sampler_for_host",
]

SCORERS = ("length", "column", "loss")
_OFF = (None, "", "none", "off", "false")
_REGISTRY: dict[str, Callable[[dict], float]] = {}
_STATE_NAME = "CurriculumCallback"


# --- settings --------------------------------------------------------------------------------------------------
def register_scorer(name: str, fn: Callable[[dict], float]) -> None:
    """Make `fn(row) -> float` available as `--curriculum NAME` (YAML and command line can only name scorers)."""
    if name in SCORERS or name in _OFF:
        raise ConfigError(f"register_scorer: '{name}' is a built-in curriculum name; pick another")
    _REGISTRY[name] = fn


def resolve_scorer(value: Any) -> Any:
    """A built-in scorer name, or the user's callable (from the registry, a `module:function` path, or as given)."""
    if callable(value):
        return value
    if value in SCORERS:
        return value
    if value in _REGISTRY:
        return _REGISTRY[value]
    if isinstance(value, str) and ":" in value:
        module, _, name = value.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"curriculum: cannot import scorer '{value}' ({exc})") from exc
        if not callable(fn):
            raise ConfigError(f"curriculum: '{value}' is not callable")
        return fn
    allowed = ", ".join(list(SCORERS) + sorted(_REGISTRY) + ["module:function", "a callable", "none"])
    raise ConfigError(f"curriculum: unknown scorer {value!r}; expected one of {allowed}")


# --- pacing ----------------------------------------------------------------------------------------------------
def pacing_share(pacing: str, progress: float, start: float, stages: Optional[Sequence[float]] = None) -> float:
    """Share of the data open at `progress` (0 at the first step, 1 at `curriculum_full_at` of training).

    linear: start + (1 - start) x; root (Platanios et al. 2019, competence): sqrt(start² + (1 - start²) x);
    geometric: start · (1/start)^x (opens slowly, then fast); step: the shares in `stages`, each held for an equal
    part of the ramp (default: start and two evenly spaced shares); none: everything, in a fixed order.
    """
    x = min(max(progress, 0.0), 1.0)
    if pacing == "none" or x >= 1.0:
        return 1.0
    if pacing == "linear":
        return start + (1.0 - start) * x
    if pacing == "root":
        return math.sqrt(start**2 + (1.0 - start**2) * x)
    if pacing == "geometric":
        return start * (1.0 / start) ** x
    if pacing == "step":
        levels = list(stages) if stages else [start + (1.0 - start) * i / 3 for i in range(3)]
        return float(levels[min(int(x * len(levels)), len(levels) - 1)])
    raise ConfigError(f"curriculum_pacing: expected one of {', '.join(PACINGS)}, got {pacing!r}")


# --- the sampler -----------------------------------------------------------------------------------------------
class CurriculumSampler(Sampler[int]):
    """Deterministic curriculum order: a pure function of (seed, epoch, scores, batch geometry).

    Position p of epoch e is consumed at optimizer step `e * steps_per_epoch + p // samples_per_step`; at that
    step the easiest `ceil(share * N)` rows are open and p is drawn from them seeded-randomly, without
    replacement until the open pool is used up. Every process builds the same order, so accelerate's sharding
    and `skip_first_batches` on resume see exactly what one uninterrupted process sees.
    """

    def __init__(
        self,
        scores: Sequence[float],
        *,
        seed: int = 42,
        pacing: str = "linear",
        start: float = 0.2,
        full_at: float = 0.5,
        stages: Optional[Sequence[float]] = None,
        reverse: bool = False,
        samples_per_step: int = 1,
        steps_per_epoch: int = 1,
        total_steps: int = 1,
        settings: Optional[dict] = None,
    ):
        self.scores = np.asarray(scores, dtype=np.float64)
        if self.scores.ndim != 1 or len(self.scores) == 0:
            raise DataError("curriculum: expected one score per training row and at least one row")
        bad = np.flatnonzero(~np.isfinite(self.scores))
        if len(bad):
            raise DataError(f"curriculum: {len(bad)} score(s) are NaN or infinite (first at row {int(bad[0])})")
        self.seed, self.pacing, self.start, self.full_at = int(seed), pacing, float(start), float(full_at)
        self.stages = list(stages) if stages else None
        self.reverse = bool(reverse)
        self.samples_per_step = max(int(samples_per_step), 1)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.total_steps = max(int(total_steps), 1)
        # A seeded shuffle before a stable sort breaks ties randomly instead of by row position.
        perm = np.random.default_rng(self.seed).permutation(len(self.scores))
        key = -self.scores if self.reverse else self.scores
        self.order = perm[np.argsort(key[perm], kind="stable")]
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}
        self.fingerprint = {
            **(settings or {}),
            "pacing": pacing,
            "start": self.start,
            "full_at": self.full_at,
            "stages": self.stages,
            "reverse": self.reverse,
            "seed": self.seed,
            "rows": len(self.scores),
            "samples_per_step": self.samples_per_step,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "scores_sha1": hashlib.sha1(self.scores.astype(np.float32).tobytes()).hexdigest()[:16],
        }

    def __len__(self) -> int:
        return len(self.scores)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate (idempotent: accelerate and the Trainer both call it)."""
        self.epoch = int(epoch)

    def __iter__(self):
        return iter(self.epoch_indices(self.epoch).tolist())

    def share_at(self, step: int) -> float:
        """Share of the rows open at optimizer step `step` (0-based)."""
        return pacing_share(self.pacing, step / (self.full_at * self.total_steps), self.start, self.stages)

    def open_count(self, step: int) -> int:
        """Number of rows (easiest first) open at optimizer step `step`."""
        return min(len(self.order), max(1, math.ceil(self.share_at(step) * len(self.order) - 1e-9)))

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The whole order of `epoch`, computed once from (seed, epoch, scores) and cached."""
        if epoch not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = self._build_epoch(epoch)
        return self._cache[epoch]

    def _build_epoch(self, epoch: int) -> np.ndarray:
        n, g = len(self.order), self.samples_per_step
        if self.pacing == "none":
            return self.order.copy()
        rng = random.Random(self.seed * 1_000_003 + epoch)
        out: list[int] = []
        order = self.order.tolist()
        bag: list[int] = []
        opened = 0
        for local_step in range(math.ceil(n / g)):
            k = self.open_count(epoch * self.steps_per_epoch + local_step)
            if k > opened:  # newly opened rows join the rows not yet drawn in this pass
                bag.extend(order[opened:k])
                opened = k
            for _ in range(min(g, n - len(out))):
                if not bag:
                    bag = order[:opened]
                j = rng.randrange(len(bag))
                out.append(bag[j])
                bag[j] = bag[-1]
                bag.pop()
        return np.asarray(out, dtype=np.int64)

    def indices_for_steps(self, first: int, last: int) -> np.ndarray:
        """Rows consumed by optimizer steps `first`..`last` (1-based `global_step` values, inclusive)."""
        chunks = []
        for step in range(max(first, 1), last + 1):
            epoch, local = divmod(step - 1, self.steps_per_epoch)
            lo = local * self.samples_per_step
            chunks.append(self.epoch_indices(epoch)[lo : lo + self.samples_per_step])
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


# --- scorers ---------------------------------------------------------------------------------------------------
def _is_hf_dataset(dataset: Any) -> bool:
    return hasattr(dataset, "column_names") and hasattr(dataset, "with_format")


def _rows(dataset: Any):
    for i in range(len(dataset)):
        yield dataset[i]


def _length_scores(dataset: Any, is_encoder_decoder: bool, length_column: str) -> np.ndarray:
    if _is_hf_dataset(dataset):
        import pyarrow.compute as pc

        cols = set(dataset.column_names)
        table = None

        def lengths(name):
            nonlocal table
            table = dataset.with_format("arrow")[:] if table is None else table
            return np.asarray(pc.list_value_length(table.column(name)).to_numpy(zero_copy_only=False), dtype=float)

        if {"prompt_ids", "chosen_ids", "rejected_ids"} <= cols:  # DPO: the prompt plus the longer answer
            return lengths("prompt_ids") + np.maximum(lengths("chosen_ids"), lengths("rejected_ids"))
        if "input_ids" in cols:
            extra = lengths("labels") if is_encoder_decoder and "labels" in cols else 0.0
            return lengths("input_ids") + extra
        if length_column in cols:
            return np.asarray(dataset[length_column], dtype=float)
        raise DataError(
            f"curriculum=length: the training set has no token ids to measure (columns: {sorted(cols)}); expected "
            f"`input_ids`, DPO's `prompt_ids`/`chosen_ids`/`rejected_ids`, or a `{length_column}` column "
            "(length_column_name). Tokenize the data or use curriculum=column"
        )
    out = []
    for i, row in enumerate(_rows(dataset)):
        if not isinstance(row, dict) or "input_ids" not in row:
            raise DataError(f"curriculum=length: row {i} has no `input_ids`; use curriculum=column or a callable")
        out.append(len(row["input_ids"]))
    return np.asarray(out, dtype=float)


def _column_scores(dataset: Any, column: str) -> np.ndarray:
    if _is_hf_dataset(dataset):
        if column not in dataset.column_names:
            raise DataError(
                f"curriculum_column: no column {column!r} in the training set (columns: {sorted(dataset.column_names)})"
            )
        dtype = getattr(dataset.features[column], "dtype", None)
        if dtype is None or not (dtype.startswith(("int", "uint", "float")) or dtype == "bool"):
            raise DataError(f"curriculum_column: column {column!r} is {dtype or 'not a scalar'}, expected a number")
        values = dataset[column]
    else:
        values = [row.get(column) if isinstance(row, dict) else None for row in _rows(dataset)]
    try:
        return np.asarray([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"curriculum_column: column {column!r} holds values that are not numbers ({exc})") from exc


def _callable_scores(dataset: Any, fn: Callable) -> np.ndarray:
    out = []
    for i, row in enumerate(_rows(dataset)):
        value = fn(row)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise DataError(f"curriculum: the scorer returned {value!r} for row {i}, expected a number")
        out.append(float(value))
    return np.asarray(out, dtype=float)


def _check_finite(scores: np.ndarray, what: str) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise DataError(
            f"curriculum={what}: {len(bad)} score(s) are NaN or infinite (first at row {int(bad[0])}); "
            "fix or drop those rows"
        )
    return scores


def compute_scores(dataset: Any, args: Any, *, is_encoder_decoder: bool = False) -> np.ndarray:
    """One difficulty score per row of `dataset` for every scorer except `loss` (see `loss_scores`)."""
    s = hftrain_settings(args)
    scorer = resolve_scorer(s.curriculum)
    if scorer == "length":
        scores = _length_scores(dataset, is_encoder_decoder, getattr(args, "length_column_name", "length"))
    elif scorer == "column":
        scores = _column_scores(dataset, s.curriculum_column)
    elif scorer == "loss":
        raise ValueError("compute_scores: the loss scorer needs a model; use loss_scores")
    else:
        scores = _callable_scores(dataset, scorer)
    return _check_finite(scores, scorer if isinstance(scorer, str) else getattr(scorer, "__name__", "callable"))


def _content_key(dataset: Any, extra: Any) -> str:
    """A hash of the dataset's content (up to 256 evenly spaced rows) and `extra`, stable across runs."""
    h = hashlib.sha1(json.dumps(extra, sort_keys=True, default=str).encode())
    n = len(dataset)
    h.update(str(n).encode())
    for i in sorted({int(i) for i in np.linspace(0, n - 1, min(n, 256))}):
        h.update(json.dumps(dataset[i], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _load_reference(path: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(path)
        cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        return cls.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"curriculum_loss_model: cannot load {path!r} ({exc.__class__.__name__}: {exc})") from exc


def _per_example_loss(model, batch: dict) -> "np.ndarray":
    import torch

    from .metrics import token_nll

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    enc_dec = getattr(model.config, "is_encoder_decoder", False)
    keep = ("input_ids", "attention_mask", "position_ids", "decoder_input_ids", "decoder_attention_mask")
    inputs = {k: batch[k] for k in keep if k in batch}
    if "labels" in batch:
        labels = batch["labels"]
        if enc_dec:
            logits = model(**inputs, labels=labels).logits
        else:
            logits, labels = model(**inputs).logits[:, :-1], labels[:, 1:]
        mask = labels != -100
    elif "completion_mask" in batch:  # DPO: rows are [chosen; rejected]; score the chosen answer
        rows = batch["input_ids"].shape[0] // 2
        inputs = {k: v[:rows] for k, v in inputs.items()}
        logits = model(**inputs).logits[:, :-1]
        labels = batch["input_ids"][:rows, 1:]
        mask = batch["completion_mask"][:rows, 1:].bool()
        if "attention_mask" in batch:
            mask &= batch["attention_mask"][:rows, 1:].bool()
    else:
        raise DataError(
            f"curriculum=loss: the collated batch has neither `labels` nor DPO's `completion_mask` "
            f"(keys: {sorted(batch)}); use another scorer"
        )
    nll = token_nll(logits, labels)
    per_row = (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_row.cpu().numpy()


def loss_scores(host: Any, train_dataset: Any, collate_fn: Any) -> np.ndarray:
    """Per-row loss of the initial model (or `curriculum_loss_model`), computed once and gathered across processes.

    `train_dataset` is the column-pruned set the trainer's collator expects. Each process scores rows
    `rank::world`; the result is cached in `output_dir` so a resumed run (whose model has already trained)
    reuses the scores of the *initial* model instead of recomputing them.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    s, args = hftrain_settings(host.args), host.args
    key = _content_key(train_dataset, {"model": s.curriculum_loss_model or "initial", "what": "loss"})
    cache = os.path.join(args.output_dir, f"curriculum_scores-{key}.json")
    if os.path.isfile(cache):
        with open(cache, encoding="utf-8") as handle:
            logger.info(f"curriculum: loss scores read from {cache}")
            return np.asarray(json.load(handle), dtype=float)
    model = _load_reference(s.curriculum_loss_model) if s.curriculum_loss_model else host.model
    model = model.to(args.device)
    rank, world = args.process_index, args.world_size
    rows = list(range(rank, len(train_dataset), world))
    loader = DataLoader(
        Subset(train_dataset, rows), batch_size=s.curriculum_loss_batch_size, collate_fn=collate_fn, shuffle=False
    )
    was_training = model.training
    model.eval()
    local = []
    with torch.no_grad():
        for batch in loader:
            local.append(_per_example_loss(model, batch))
    model.train(was_training)
    local = np.concatenate(local) if local else np.zeros(0)
    pairs = list(zip(rows, local.tolist()))
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, pairs)
        pairs = [p for part in gathered for p in part]
    scores = np.full(len(train_dataset), np.nan)
    for i, value in pairs:
        scores[i] = value
    _check_finite(scores, "loss")
    if args.should_save:
        os.makedirs(args.output_dir, exist_ok=True)
        tmp = f"{cache}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(scores.tolist(), handle)
        os.replace(tmp, cache)
    return scores


# --- callback --------------------------------------------------------------------------------------------------
def _find_sampler(obj: Any, depth: int = 0) -> Optional[CurriculumSampler]:
    if isinstance(obj, CurriculumSampler):
        return obj
    if obj is None or depth > 6:
        return None
    for name in ("sampler", "batch_sampler", "base_dataloader"):
        found = _find_sampler(getattr(obj, name, None), depth + 1)
        if found is not None:
            return found
    return None


class CurriculumCallback(TrainerCallback, ExportableState):
    """Keeps a `CurriculumSampler` on the right epoch, checks resumes, and logs the schedule.

    * `on_epoch_begin`: `set_epoch(int(state.epoch))`. After a multi-process mid-epoch resume accelerate's
      `set_epoch` never reaches a custom sampler, which would replay epoch 0's order.
    * `on_train_begin`: compares the curriculum fingerprint stored in the checkpoint with this run's and
      raises `ConfigError` naming what differs (a different curriculum would silently change the data order).
    * `on_log`: adds `curriculum/open_share` (at the current step) and `curriculum/mean_difficulty` (mean score
      of the rows consumed since the previous log) to training logs.
    """

    def __init__(self, fingerprint: Optional[dict] = None, sampler: Optional[CurriculumSampler] = None):
        self.fingerprint = fingerprint
        self.sampler = sampler
        self.scores: Optional[np.ndarray] = None  # one score per training row, set when the loop is built
        self._last_logged = 0

    def state(self) -> dict:
        """What `trainer_state.json` keeps: the fingerprint of the curriculum this run trained with."""
        return {"args": {"fingerprint": self.fingerprint}, "attributes": {}}

    def attach(self, sampler: CurriculumSampler) -> None:
        """Point the callback at `sampler` (trainers call this when they build it)."""
        self.sampler, self.fingerprint = sampler, sampler.fingerprint

    def _sampler(self, kwargs: dict) -> Optional[CurriculumSampler]:
        if self.sampler is None:  # e.g. re-created by `restore_callback_states_from_checkpoint`
            found = _find_sampler(kwargs.get("train_dataloader"))
            if found is not None:
                self.sampler = found
        return self.sampler

    def on_train_begin(self, args, state, control, **kwargs):
        sampler = self._sampler(kwargs)
        if sampler is None:
            return
        stored = (state.stateful_callbacks or {}).get(_STATE_NAME)
        stored = stored[0] if isinstance(stored, list) else stored
        saved = (stored or {}).get("args", {}).get("fingerprint")
        if saved is not None and state.global_step > 0:
            current = json.loads(json.dumps(sampler.fingerprint))  # the JSON round trip the checkpoint went through
            diff = [
                f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
                for k in sorted(set(saved) | set(current))
                if saved.get(k) != current.get(k)
            ]
            if diff:
                raise ConfigError(
                    "curriculum: cannot resume, the checkpoint was trained with a different curriculum ("
                    + "; ".join(diff)
                    + "). Resume with the same settings and data, or start a new output_dir"
                )
        self.fingerprint = sampler.fingerprint
        self._last_logged = state.global_step

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = self._sampler(kwargs)
        if sampler is not None:
            sampler.set_epoch(int(state.epoch + 1e-6))  # equals global_step // steps_per_epoch on resume

    def on_log(self, args, state, control, logs=None, **kwargs):
        sampler = self._sampler(kwargs)
        if sampler is None or logs is None or any(k.startswith(("eval_", "test_")) for k in logs):
            return
        step = state.global_step
        if step <= self._last_logged:  # e.g. the end-of-training summary: nothing consumed since the last log
            return
        extra = {"curriculum/open_share": round(sampler.open_count(max(step - 1, 0)) / len(sampler), 6)}
        consumed = sampler.indices_for_steps(self._last_logged + 1, step)
        extra["curriculum/mean_difficulty"] = float(np.mean(sampler.scores[consumed]))
        self._last_logged = step
        logs.update(extra)
        # Trainer.log appended a copy of `logs` before calling us; keep the history (and so the tracker) complete.
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(extra)


# --- wiring ----------------------------------------------------------------------------------------------------
def _settings_dict(s: Any) -> dict:
    scorer = s.curriculum if isinstance(s.curriculum, str) else getattr(s.curriculum, "__qualname__", "callable")
    out = {"scorer": scorer}
    if scorer == "column":
        out["column"] = s.curriculum_column
    if scorer == "loss":
        out["loss_model"] = s.curriculum_loss_model
    return out


def build_curriculum_sampler(
    dataset: Any,
    args: Any,
    *,
    samples_per_step: int,
    steps_per_epoch: int,
    total_steps: int,
    scores: Optional[Sequence[float]] = None,
) -> tuple[CurriculumSampler, CurriculumCallback]:
    """A curriculum sampler for any training loop, plus the callback that must fire its events.

    `samples_per_step` is the global batch per optimizer step (per-device batch × processes × accumulation);
    `steps_per_epoch` and `total_steps` are optimizer steps. Pass `scores` to skip scoring (e.g. loss scores).
    The loop must call the callback's `on_train_begin`, `on_epoch_begin` (with `state.epoch` set) and `on_log`.
    """
    s = hftrain_settings(args)
    if scores is None:
        scores = compute_scores(dataset, args)
    if len(scores) != len(dataset):
        raise DataError(f"curriculum: got {len(scores)} scores for {len(dataset)} training rows")
    sampler = CurriculumSampler(
        scores,
        seed=args.data_seed if getattr(args, "data_seed", None) is not None else args.seed,
        pacing=s.curriculum_pacing,
        start=s.curriculum_start,
        full_at=s.curriculum_full_at,
        stages=s.curriculum_stages,
        reverse=s.curriculum_reverse,
        samples_per_step=samples_per_step,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        settings=_settings_dict(s),
    )
    callback = CurriculumCallback()
    callback.attach(sampler)
    return sampler, callback


def curriculum_callbacks(host: Any, settings: Any) -> list[TrainerCallback]:
    """Check that the loop can run its curriculum and return its callback, which holds the scores (computed now
    unless they need the model: the `loss` scorer runs when the sampler is built).

    Called while the loop is built, so bad data or settings fail before any training work.
    """
    rows = host.train_rows
    if rows is None:
        return []  # nothing to train on yet; `train()` itself will complain
    if getattr(host.args, "packing", False):
        raise ConfigError(
            "curriculum: SFT packing (packing=true) concatenates rows into fixed-length blocks, so a row's "
            "difficulty no longer exists; set packing=false to train with a curriculum"
        )
    try:
        len(rows)
    except TypeError:
        raise ConfigError(
            f"curriculum: the training set ({type(rows).__name__}) has no length; a curriculum orders a "
            "map-style dataset. Use a `datasets.Dataset` (not streaming) or set curriculum=none"
        ) from None
    callback = CurriculumCallback()
    if settings.curriculum != "loss":
        enc_dec = getattr(getattr(host.model, "config", None), "is_encoder_decoder", False)
        callback.scores = compute_scores(rows, host.args, is_encoder_decoder=enc_dec)
    return [callback]


def sampler_for_host(host: Any, pruned: Any = None, collate_fn: Any = None) -> Optional[CurriculumSampler]:
    """The curriculum sampler for a loop (None when it runs no curriculum), attached to its callback.

    Scores come from `host.train_rows`, which keeps every column (the dataset a Trainer hands its sampler has lost
    the ones the model does not take, `difficulty` included; the row order is the same). The `loss` scorer runs
    now, on `pruned` collated by `collate_fn`, with the initial model.
    """
    callback = next((cb for cb in host.callbacks if isinstance(cb, CurriculumCallback)), None)
    if callback is None:
        return None
    if callback.scores is None:
        callback.scores = loss_scores(host, pruned if pruned is not None else host.train_rows, collate_fn)
    geometry = host.batch_geometry()
    sampler = sampler_for_geometry(
        host.train_rows,
        host.args,
        callback.scores,
        per_device_batch=geometry.per_device,
        world_size=geometry.processes,
    )
    callback.attach(sampler)
    return sampler


def sampler_for_geometry(
    dataset: Any, args: Any, scores: Any, *, per_device_batch: int, world_size: int
) -> CurriculumSampler:
    """The curriculum sampler for a loop that draws `per_device_batch` rows per process and micro-batch on
    `world_size` processes (with `args.gradient_accumulation_steps`, `max_steps`/`num_train_epochs` and
    `dataloader_drop_last` as in Trainer). Used by `HFTrainMixin` and by the diffusion loop."""
    per_step_batches = math.ceil(len(scores) / (per_device_batch * world_size))
    if args.dataloader_drop_last:
        per_step_batches = max(len(scores) // (per_device_batch * world_size), 1)
    ga = args.gradient_accumulation_steps
    steps_per_epoch = max(per_step_batches // ga + int(per_step_batches % ga > 0), 1)
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    sampler, _ = build_curriculum_sampler(
        dataset,
        args,
        samples_per_step=per_device_batch * world_size * ga,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        scores=scores,
    )
    logger.info(
        f"curriculum: {len(sampler)} rows scored by {sampler.fingerprint['scorer']}, pacing {sampler.pacing} "
        f"from {sampler.start:.2f} to all by {sampler.full_at:.0%} of {total} steps"
    )
    return sampler
