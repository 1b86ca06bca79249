"""`DiffusionTrainer`: one readable `accelerate` loop for pixel-space diffusion, on hftrain's rails.

It takes a `DiffusionConfig` (transformers' `TrainingArguments` + hftrain's fields + diffusion fields) and fires
the standard `TrainerCallback` events through transformers' `CallbackHandler` with a real `TrainerState` and
`TrainerControl`. `DefaultFlowCallback` decides when to log, evaluate, save and stop, exactly as in `Trainer`, so
reporting integrations and user callbacks work unchanged. The loop implements hftrain's host contract
(`hftrain.host.TrainingHost`) itself, so every hftrain feature (`hftrain.callbacks.build_callbacks`: monitor,
tracker, curriculum, signals, checkpoint marker) runs on it. Schedulers, EMA, min-SNR weighting and pipelines come
from diffusers; checkpoints, evaluation and the objective live in their own modules.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import UNet2DConditionModel
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_callback import (
    CallbackHandler,
    DefaultFlowCallback,
    ExportableState,
    PrinterCallback,
    ProgressCallback,
    TrainerControl,
    TrainerState,
)
from transformers.trainer_utils import enable_full_determinism, speed_metrics
from transformers.utils import logging as transformers_logging

from ..callbacks import build_callbacks
from ..errors import ConfigError
from ..host import DIFFUSION_FORMAT, BatchGeometry, drop_gradients
from ..launch import resolve_arguments
from ..signals import run_train
from .checkpointing import load_checkpoint, load_optimizer, load_weights, save_checkpoint, save_pipeline
from .config import DiffusionConfig
from .data import EpochSampler, collate_images, image_datasets, train_loader
from .evaluation import evaluate, note_best
from .objective import denoising_loss
from .pipeline import ImagePipeline
from .prepare import (
    check_model,
    enable_activation_checkpointing,
    make_accelerator,
    make_ema,
    make_lr_scheduler,
    make_optimizer,
)
from .schedules import sampling_scheduler, training_scheduler

__all__ = ["DiffusionTrainer"]

logger = get_logger(__name__)


@dataclass
class _Plan:
    """The run's data and length, fixed when training starts."""

    loader: Any
    sampler: Any
    batches_per_epoch: int
    updates_per_epoch: int
    max_steps: int
    num_epochs: int


class DiffusionTrainer:
    """Trains a `UNet2DModel` or `UNet2DConditionModel` on an image dataset with `accelerate`.

    Args:
        model: the UNet. Class-conditional when its config has `num_class_embeds` (set `class_column`);
            text-conditional when it has cross-attention (pass `text_encoder`, `tokenizer`, set `caption_column`).
        args: a `DiffusionConfig`.
        train_dataset / eval_dataset: datasets with a PIL image column (`args.image_column`). The eval set only
            gives `eval_loss` (fixed-seed noise); grids are sampled at every evaluation either way.
        text_encoder / tokenizer: a frozen text encoder (e.g. `CLIPTextModel`) and its tokenizer.
        quality_fn: maps sampled images in [0, 1], shape (N, C, H, W), to a dict of scores logged as `eval_*`.
        callbacks: extra `TrainerCallback`s, as in `transformers.Trainer`.
        optimizers: `(optimizer, lr_scheduler)`; by default `args.optim` and `lr_scheduler_type`.
    """

    checkpoint_format = DIFFUSION_FORMAT

    def __init__(
        self,
        model: torch.nn.Module,
        args: DiffusionConfig,
        train_dataset: Any,
        eval_dataset: Any = None,
        text_encoder: Optional[torch.nn.Module] = None,
        tokenizer: Any = None,
        quality_fn: Optional[Callable[[torch.Tensor], dict]] = None,
        callbacks: Optional[list] = None,
        optimizers: tuple = (None, None),
    ):
        if not isinstance(args, DiffusionConfig):
            raise ConfigError(f"args: expected a hftrain DiffusionConfig, got {type(args).__name__}")
        self.args = args = resolve_arguments(args)
        if args.full_determinism:
            enable_full_determinism(args.seed)
        else:
            set_seed(args.seed)
        transformers_logging.set_verbosity(args.get_process_log_level())
        self.model, self.model_wrapped = model, model
        self.resolution, num_classes = check_model(model, args, text_encoder, tokenizer)
        self.text_encoder, self.tokenizer, self.quality_fn = text_encoder, tokenizer, quality_fn
        self._text_conditional = isinstance(model, UNet2DConditionModel)  # checked once, used every step
        self.noise_scheduler = training_scheduler(args.noise_schedule, args.prediction_type, args.num_train_timesteps)
        self.collate = functools.partial(collate_images, tokenizer=tokenizer)
        # Every check on the data runs here, before the accelerator starts or anything is written.
        self.train_dataset, self.eval_dataset = image_datasets(
            train_dataset, eval_dataset, args, model, self.resolution, num_classes
        )
        self.train_rows = train_dataset  # the undecoded rows, for curriculum scorers (a `column`, a callable)
        enable_activation_checkpointing(model, args)
        self.accelerator = make_accelerator(args)
        self.optimizer, self.lr_scheduler = optimizers
        if self.optimizer is None:
            self.optimizer = make_optimizer(args, model)
        self.ema = make_ema(model, args)
        self.noise_generator: Optional[torch.Generator] = None
        self._step_loss = self._grad_norm = self._learning_rate = None
        self._update_dropped = False
        self._make_callback_handler(callbacks)

    def _make_callback_handler(self, callbacks: Optional[list]) -> None:
        """Callbacks in `transformers.Trainer`'s order, then hftrain's (`build_callbacks` reads this host)."""
        args = self.args
        default = [DefaultFlowCallback] + get_reporting_integration_callbacks(args.report_to)
        self.callback_handler = CallbackHandler(
            default + list(callbacks or []), self.model, self.tokenizer, self.optimizer, self.lr_scheduler
        )
        self.callback_handler.add_callback(PrinterCallback if args.disable_tqdm else ProgressCallback)
        self.state = TrainerState(
            is_local_process_zero=self.accelerator.is_local_main_process,
            is_world_process_zero=self.accelerator.is_main_process,
            stateful_callbacks=[cb for cb in self.callbacks if isinstance(cb, ExportableState)],
        )
        self.control = TrainerControl()
        for callback in build_callbacks(self):
            self.callback_handler.add_callback(callback)
        self.control = self.callback_handler.on_init_end(args, self.state, self.control)

    # -- the host contract (hftrain.host.TrainingHost) ----------------------------------------------------------
    @property
    def callbacks(self) -> list:
        return self.callback_handler.callbacks

    @property
    def unet(self) -> torch.nn.Module:
        """The UNet itself (no DDP or compile wrapper): what is saved and sampled."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def step_values(self) -> tuple[Any, Any]:
        """This optimizer step's mean loss on this process and the pre-clip gradient norm (device tensors)."""
        return self._step_loss, self._grad_norm

    def drop_update(self) -> None:
        """Keep the coming update out of the weights and the EMA; the LR schedule still advances."""
        drop_gradients(self.optimizer)
        self._update_dropped = True

    def reload_checkpoint(self, folder: str) -> None:
        """Weights, EMA and optimizer state from `folder`; the learning rate stays at this step's."""
        load_weights(self, folder)
        load_optimizer(self.optimizer, folder, keep_learning_rate=True)

    def batch_geometry(self) -> BatchGeometry:
        args = self.args
        return BatchGeometry(
            args.per_device_train_batch_size, args.gradient_accumulation_steps, self.accelerator.num_processes
        )

    # -- the loop -------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: Optional[str | bool] = None) -> dict:
        """Train to `max_steps` (or `num_train_epochs`), resuming exactly from `resume_from_checkpoint` if given (a
        path, or True for the newest complete checkpoint in `output_dir`)."""
        return run_train(self, self._train, resume_from_checkpoint)

    def _train(self, resume_from_checkpoint: Optional[str]) -> dict:
        args, handler = self.args, self.callback_handler
        start = time.time()
        plan = self._prepare()
        if resume_from_checkpoint:
            load_checkpoint(self, resume_from_checkpoint)
        steps_before = self._last_logged = self.state.global_step
        self._loss_sum = torch.zeros((), device=self.accelerator.device)
        self.model_wrapped.train()
        self.control = handler.on_train_begin(args, self.state, self.control)
        if args.eval_on_start:
            self.evaluate()
        for epoch in range(self.state.global_step // plan.updates_per_epoch, plan.num_epochs):
            if self.state.global_step >= plan.max_steps:
                break
            self._train_epoch(plan, epoch)
            if self.control.should_training_stop:
                break
        steps = self.state.global_step - steps_before
        metrics = speed_metrics(
            "train", start, num_samples=steps * self.batch_geometry().global_batch, num_steps=steps
        )
        self.log(dict(metrics))
        self.control = handler.on_train_end(args, self.state, self.control)
        return metrics

    def _prepare(self) -> _Plan:
        """Data loader, accelerate wrappers, LR schedule, noise generator and state for the run."""
        args, accelerator = self.args, self.accelerator
        from ..curriculum import sampler_for_host

        sampler = sampler_for_host(self) or EpochSampler(
            len(self.train_dataset), seed=args.seed if args.data_seed is None else args.data_seed
        )
        loader = train_loader(self.train_dataset, sampler, self.collate, args)
        if args.torch_compile:
            self.model = torch.compile(
                self.model, backend=args.torch_compile_backend or "inductor", mode=args.torch_compile_mode
            )
        self.model_wrapped, self.optimizer, loader = accelerator.prepare(self.model, self.optimizer, loader)
        self._ema_targets = list(self.unet.parameters())  # unwrapping walks every module: once, not every step
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(False).eval().to(accelerator.device)
        if self.ema is not None:
            self.ema.to(accelerator.device)
        batches = len(loader)  # per process, after accelerate shards the batches
        updates = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * updates)
        if self.lr_scheduler is None:
            self.lr_scheduler = make_lr_scheduler(args, self.optimizer, max_steps)
        # Per-process noise stream: ranks draw different noise, and it is saved with each checkpoint.
        self.noise_generator = torch.Generator(accelerator.device).manual_seed(
            args.seed + 7919 * accelerator.process_index
        )
        self.state.max_steps, self.state.num_train_epochs = max_steps, math.ceil(max_steps / updates)
        self.state.train_batch_size = args.per_device_train_batch_size
        self.state.compute_steps(args, max_steps)
        handler = self.callback_handler
        handler.model, handler.optimizer, handler.lr_scheduler = self.model_wrapped, self.optimizer, self.lr_scheduler
        handler.train_dataloader = loader
        return _Plan(loader, sampler, batches, updates, max_steps, self.state.num_train_epochs)

    def _train_epoch(self, plan: _Plan, epoch: int) -> None:
        args, handler = self.args, self.callback_handler
        ga = args.gradient_accumulation_steps
        # Batches of this epoch already trained (a resume mid-epoch skips them, unless ignore_data_skip).
        done = 0 if args.ignore_data_skip else (self.state.global_step % plan.updates_per_epoch) * ga
        plan.sampler.epoch = epoch
        batches = self.accelerator.skip_first_batches(plan.loader, done) if done else plan.loader
        # DataLoaderShard hands its own iteration count to a sampler's `set_epoch` when iterated (0 again after a
        # resume); give it the true epoch so a curriculum sampler keeps its order.
        batches.set_epoch(epoch)
        self.control = handler.on_epoch_begin(args, self.state, self.control)
        iterator = iter(batches)
        while done < plan.batches_per_epoch:
            group = [next(iterator) for _ in range(min(ga, plan.batches_per_epoch - done))]
            done += len(group)
            self._optimizer_step(group)
            self.state.epoch = epoch + done / plan.batches_per_epoch
            self.control = handler.on_step_end(args, self.state, self.control)
            self._maybe_log()
            self._maybe_evaluate_and_save()
            if self.control.should_epoch_stop or self.control.should_training_stop:
                break
        self.control = handler.on_epoch_end(args, self.state, self.control)
        self._maybe_evaluate_and_save()

    def _optimizer_step(self, group: list[dict]) -> None:
        """One optimizer step over the micro-batches of `group`, with the callback events of `Trainer`."""
        args, accelerator, handler, model = self.args, self.accelerator, self.callback_handler, self.model_wrapped
        self.control = handler.on_step_begin(args, self.state, self.control)
        step_loss = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            # Gradients are synchronised across processes only on the last micro-batch of a step.
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                loss = self.compute_loss(model, batch, self.noise_generator)
                accelerator.backward(loss / len(group))
            step_loss += loss.detach() / len(group)
            if not last:
                self.control = handler.on_substep_end(args, self.state, self.control)
        # With clipping off, max_norm=inf still measures the norm (for the logs and the monitor) and scales by 1.
        max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else math.inf
        self._grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        self._step_loss, self._update_dropped = step_loss, False
        self.control = handler.on_pre_optimizer_step(args, self.state, self.control)
        self.optimizer.step()
        self.control = handler.on_optimizer_step(args, self.state, self.control)
        self._learning_rate = self.lr_scheduler.get_last_lr()[0]
        if not accelerator.optimizer_step_was_skipped:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and not self._update_dropped:
            self.ema.step(self._ema_targets)
        if args.logging_nan_inf_filter:  # as Trainer: a non-finite step counts as the mean of the logged window
            window = max(1, self.state.global_step - self._last_logged)
            step_loss = torch.where(torch.isfinite(step_loss), step_loss, self._loss_sum / window)
        self._loss_sum += step_loss
        self.state.global_step += 1

    def compute_loss(self, model: Any, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The denoising loss of one batch (`hftrain.diffusion.objective.denoising_loss`) with its conditioning."""
        conditioning = {}
        if "class_labels" in batch:
            conditioning["class_labels"] = batch["class_labels"]
        if self._text_conditional:
            conditioning["encoder_hidden_states"] = None
            if "input_ids" in batch:
                with torch.no_grad():
                    conditioning["encoder_hidden_states"] = self.text_encoder(batch["input_ids"])[0]
        return denoising_loss(
            model,
            batch["pixel_values"],
            self.noise_scheduler,
            generator,
            snr_gamma=self.args.snr_gamma,
            noise_offset=self.args.noise_offset,
            **conditioning,
        )

    def _maybe_log(self) -> None:
        if not self.control.should_log or self.state.global_step <= self._last_logged:
            return
        steps = self.state.global_step - self._last_logged
        loss = self.accelerator.reduce(self._loss_sum, reduction="mean").item() / steps
        logs = {"loss": loss, "learning_rate": self._learning_rate}
        if self._grad_norm is not None:
            logs["grad_norm"] = float(self._grad_norm)
        self._loss_sum.zero_()
        self._last_logged = self.state.global_step
        self.log(logs)

    def _maybe_evaluate_and_save(self) -> None:
        if self.control.should_evaluate:
            note_best(self.state, self.args, self.evaluate())
        if self.control.should_save:
            save_checkpoint(self)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    # -- logging and evaluation ------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float]) -> None:
        """Record `logs` in `state.log_history` and send them to the callbacks' `on_log`, as `Trainer.log` does."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def evaluate(self) -> dict[str, float]:
        """Sample a fixed-seed grid (EMA weights), save it under `output_dir/samples/`, score it, log `eval_*`."""
        return evaluate(self)

    def pipeline(self, sampler: Optional[str] = None) -> ImagePipeline:
        """An `ImagePipeline` over the current (raw) weights with the configured sampler."""
        scheduler = sampling_scheduler(sampler or self.args.sampler, self.noise_scheduler, self.args.karras_sigmas)
        return ImagePipeline(self.unet, scheduler, text_encoder=self.text_encoder, tokenizer=self.tokenizer)

    # -- output ----------------------------------------------------------------------------------------------------
    def save_model(self, output_dir: Optional[str] = None) -> str:
        """Save the final pipeline (EMA weights when `use_ema`): `DDPMPipeline` for an unconditional `UNet2DModel`,
        `ImagePipeline` otherwise. Both load with `diffusers.DiffusionPipeline.from_pretrained(output_dir)`; the
        `ImagePipeline` ships as a custom pipeline, so add `trust_remote_code=True` (or use hftrain's class)."""
        return save_pipeline(self, output_dir or self.args.output_dir)

    def push_to_hub(self, commit_message: str = "End of training") -> Optional[str]:
        """Upload `output_dir` (pipeline, samples, card, history; not the checkpoints) to `args.hub_model_id`, with
        hftrain's uploader (one clear error and a retry command if it fails)."""
        if not self.accelerator.is_main_process:
            return None
        from ..hub import push_results

        self.control = self.callback_handler.on_push_begin(self.args, self.state, self.control)
        return push_results(
            self.args.output_dir,
            repo_id=self.args.hub_model_id,
            token=self.args.hub_token,
            private=self.args.hub_private_repo,
            commit_message=commit_message,
        )
