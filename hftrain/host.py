"""The host contract: what hftrain's features need from a training loop, written down once.

Features (curriculum, evaluation metrics, monitor, signals, tracker, checkpoints) run as `TrainerCallback`s and use
nothing of the loop but a `TrainingHost`:

* `args`, `state`, `model`, `optimizer`, `lr_scheduler`, `callbacks` -- the public things every loop has;
* `train_rows` -- the training rows with every column (curriculum scorers read them);
* `step_values()` -- the current step's loss and pre-clip gradient norm, read in `on_pre_optimizer_step` (before
  the update), returned as tensors on the device: the contract adds no host sync, a feature decides when to read;
* `drop_update()` -- keep the coming optimizer update out of the weights (the monitor's `skip`);
* `reload_checkpoint(folder)` -- weights and optimizer state back from a checkpoint of this loop, the learning-rate
  schedule left where it is (the monitor's `rollback`);
* `batch_geometry()` -- per-device batch, gradient accumulation, processes (curriculum, tracker, signatures);
* `checkpoint_format` -- which checkpoint layout the loop writes (`hftrain.checkpoints` judges completeness by it).

`TrainerHost` implements it for transformers' `Trainer` family (TRL's trainers included). It is the only module
of hftrain that touches transformers' or TRL's private attributes, so an upstream change breaks one file.
`hftrain.diffusion.DiffusionTrainer` implements the contract itself. A new loop plugs in by implementing these
few members (or by being a `transformers.Trainer`) and passing the shared feature tests.
"""

from __future__ import annotations

import collections
import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol, runtime_checkable

__all__ = ["BatchGeometry", "TrainingHost", "TrainerHost", "host_of"]

TRAINER_FORMAT = "trainer"
DIFFUSION_FORMAT = "diffusion"


@dataclass(frozen=True)
class BatchGeometry:
    """Samples per device per micro-batch, micro-batches per optimizer step, and processes."""

    per_device: int
    accumulation: int
    processes: int

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all processes."""
        return self.per_device * self.accumulation * self.processes

    @classmethod
    def from_args(cls, args: Any, processes: Optional[int] = None) -> "BatchGeometry":
        """The geometry `args` asks for (per_device_train_batch_size, gradient_accumulation_steps, world size)."""
        world = processes if processes is not None else int(getattr(args, "world_size", 1) or 1)
        per_device = int(getattr(args, "per_device_train_batch_size", 1) or 1)
        return cls(per_device, int(getattr(args, "gradient_accumulation_steps", 1) or 1), max(1, world))


@runtime_checkable
class TrainingHost(Protocol):
    """What a training loop offers hftrain's features (see the module docstring)."""

    args: Any
    state: Any
    checkpoint_format: str

    @property
    def model(self) -> Any: ...

    @property
    def optimizer(self) -> Any: ...

    @property
    def lr_scheduler(self) -> Any: ...

    @property
    def callbacks(self) -> list: ...

    @property
    def train_rows(self) -> Any: ...

    def step_values(self) -> tuple[Any, Any]: ...

    def drop_update(self) -> None: ...

    def reload_checkpoint(self, folder: str) -> None: ...

    def batch_geometry(self) -> BatchGeometry: ...


def drop_gradients(optimizer: Any) -> None:
    """Set every gradient the optimizer would use to None: torch optimizers then skip those parameters entirely
    (no weight change, no weight decay, Adam moments and step counts untouched)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


class TrainerHost:
    """The contract for a `transformers.Trainer` (or TRL trainer). Built by `HFTrainMixin`; holds a weak reference.

    The step's loss is the growth of the trainer's on-device running loss sum (`_tr_loss`) since the last step;
    the pre-clip gradient norm is the value `accelerator.clip_grad_norm_` returned (transformers calls it every
    optimizer step, with `max_norm=inf` when clipping is off), seen by wrapping that bound method while training.
    """

    checkpoint_format = TRAINER_FORMAT

    def __init__(self, trainer: Any):
        self._trainer = weakref.ref(trainer)
        self._grad_norm: Any = None
        self._loss_seen: Any = None
        self._last_logged_step: Optional[int] = None
        self._accelerator: Any = None

    # -- public members every Trainer has ----------------------------------------------------------------------
    @property
    def trainer(self) -> Any:
        return self._trainer()

    args = property(lambda self: self.trainer.args)
    state = property(lambda self: self.trainer.state)
    model = property(lambda self: self.trainer.model)
    optimizer = property(lambda self: self.trainer.optimizer)
    lr_scheduler = property(lambda self: self.trainer.lr_scheduler)
    callbacks = property(lambda self: self.trainer.callback_handler.callbacks)
    train_rows = property(lambda self: self.trainer.train_dataset)

    # -- wiring, for the callback that owns per-step reads (the monitor) -------------------------------------------
    def attach(self) -> None:
        """Start seeing the gradient norm; call at `on_train_begin`."""
        accelerator = self.trainer.accelerator
        if self._accelerator is not None:
            return
        original = accelerator.clip_grad_norm_

        def clip_grad_norm_(*args, **kwargs):
            norm = original(*args, **kwargs)
            self._grad_norm = norm  # the value transformers already computed; kept, not recomputed
            return norm

        accelerator.clip_grad_norm_ = clip_grad_norm_
        self._accelerator = accelerator
        self._loss_seen, self._last_logged_step = None, None

    def detach(self) -> None:
        """Stop seeing the gradient norm; call at `on_train_end`. The wrapper was an instance attribute: removing it
        brings back the class's method."""
        if self._accelerator is not None:
            self._accelerator.__dict__.pop("clip_grad_norm_", None)
            self._accelerator = None

    def step_values(self) -> tuple[Any, Any]:
        trainer = self.trainer
        grad_norm, self._grad_norm = self._grad_norm, None
        running = getattr(trainer, "_tr_loss", None)
        if running is None:
            return None, grad_norm
        logged = getattr(trainer, "_globalstep_last_logged", None)
        if logged != self._last_logged_step or self._loss_seen is None:
            # transformers zeroed its running sum when it logged (or training just began): count from zero
            self._loss_seen, self._last_logged_step = running.new_zeros(()), logged
        loss = running.detach() - self._loss_seen
        self._loss_seen = running.detach().clone()
        return loss, grad_norm

    def drop_update(self) -> None:
        drop_gradients(self.trainer.optimizer)

    def reload_checkpoint(self, folder: str) -> None:
        trainer = self.trainer
        schedule = trainer.lr_scheduler.state_dict()  # keep the schedule at this step; only weights/moments go back
        trainer._load_from_checkpoint(folder)
        trainer._load_optimizer_and_scheduler(folder)
        trainer.lr_scheduler.load_state_dict(schedule)

    # -- TRL's DPO rewards, for hftrain's DPO evaluation metrics (not part of the contract) -------------------------
    def dpo_batch_rewards(self, model: Any, batch: dict) -> dict[str, float]:
        """TRL's DPO rewards for one collated batch: the batch means of its `rewards/{chosen,rejected,margins,accuracies}`.

        TRL 1.16 computes the policy and reference log-probs (ld_alpha, precomputed or
        PEFT-adapter reference, ...) and the rewards only inside the private `DPOTrainer._compute_loss`, which returns
        the loss and records the rewards' batch means in the private `trainer._metrics`. It is reached here through the
        public `prediction_step`, as TRL's eval loop does per batch; `_metrics` is swapped out meanwhile so TRL's own eval
        logs do not see these batches.
        """
        trainer = self.trainer
        saved = trainer._metrics
        trainer._metrics = {mode: collections.defaultdict(list) for mode in saved}
        try:
            with _local_gathers(trainer.accelerator):
                trainer.prediction_step(model, batch, prediction_loss_only=True)
            recorded = {key: values for mode in trainer._metrics.values() for key, values in mode.items() if values}
        finally:
            trainer._metrics = saved
        return {name: recorded[f"rewards/{name}"][-1] for name in ("chosen", "rejected", "margins", "accuracies")}

    # -- TRL's GRPO/RLOO reward functions, for the samples hftrain's evaluation writes (not part of the contract) ---
    def reward_scores(self, rows: list, prompts: list, completions: list, completion_ids: list) -> list[dict]:
        """Each reward function's score of `completions`, computed as TRL scores a rollout: one dict per row,
        `{reward function name: score}` (None where the function returned None).

        TRL 1.16 calls the reward functions (callables with the row's columns as keyword arguments, async ones,
        reward models with their tokenizers) only in the private `_calculate_rewards`, which then gathers the
        scores over processes: every process must call this with the same rows, and the first `len(rows)` are
        this call's. What reward functions log meanwhile (`log_extra`, `log_metric`) is kept out of TRL's logs.
        """
        trainer = self.trainer
        saved = trainer._pending_extra_logs, trainer._pending_metrics
        trainer._pending_extra_logs = collections.defaultdict(list)
        trainer._pending_metrics = collections.defaultdict(list)
        try:
            scores = trainer._calculate_rewards(rows, prompts, completions, completion_ids)[: len(rows)]
        finally:
            trainer._pending_extra_logs, trainer._pending_metrics = saved
        names = trainer.reward_func_names
        return [{n: (None if v != v else v) for n, v in zip(names, row)} for row in scores.tolist()]

    def batch_geometry(self) -> BatchGeometry:
        trainer = self.trainer
        per_device = getattr(trainer, "_train_batch_size", None) or trainer.args.per_device_train_batch_size
        args = trainer.args
        return BatchGeometry(int(per_device), int(args.gradient_accumulation_steps), max(1, int(args.world_size)))


@contextlib.contextmanager
def _local_gathers(accelerator: Any) -> Iterator[None]:
    """Part of `TrainerHost.dpo_batch_rewards`: `accelerator.gather`/`gather_for_metrics` return the local tensor meanwhile.

    `_compute_loss` gathers every batch's metrics over processes, which needs all processes to run same-sized
    batches in step (TRL's even eval batches). hftrain's fixed batches differ per process (uneven shards, a partial
    last batch), so a gather there would hang or mix batches; hftrain merges its per-batch sums itself instead.
    """
    if accelerator.num_processes <= 1:
        yield
        return

    def local(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    accelerator.gather = accelerator.gather_for_metrics = local
    try:
        yield
    finally:
        del accelerator.gather, accelerator.gather_for_metrics


def host_of(trainer: Any) -> TrainingHost:
    """The contract of `trainer`: the loop itself when it implements it, else its `TrainerHost` (made once)."""
    if isinstance(trainer, TrainingHost):
        return trainer
    host = trainer.__dict__.get("hftrain_host")
    if host is None:
        host = trainer.__dict__["hftrain_host"] = TrainerHost(trainer)
    return host
