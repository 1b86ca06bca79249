"""`DiffusionTrainer`: one readable `accelerate` loop for pixel-space diffusion, on hftrain's rails.

It takes a `DiffusionConfig` (transformers' `TrainingArguments` + hftrain's fields + diffusion fields) and fires
the standard `TrainerCallback` events through transformers' `CallbackHandler` with a real `TrainerState` and
`TrainerControl`. `DefaultFlowCallback` decides when to log, evaluate, save and stop, exactly as in `Trainer`, so
the tracker and monitor callbacks (`hftrain.callbacks.build_callbacks`) and user callbacks work unchanged.
Schedulers, EMA, min-SNR weighting and pipelines come from diffusers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, set_seed
from diffusers import DDPMPipeline, UNet2DConditionModel, UNet2DModel
from diffusers.training_utils import EMAModel, compute_snr
from torch.utils.data import DataLoader
from transformers import get_scheduler
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
from transformers.trainer_utils import rotate_checkpoints

from ..args import hftrain_settings
from ..callbacks import build_callbacks
from ..errors import ConfigError
from .config import DiffusionConfig
from .data import EpochSampler, ImageDataset
from .pipeline import ImagePipeline
from .schedules import sampling_scheduler, training_scheduler

__all__ = ["DiffusionTrainer"]

logger = get_logger(__name__)


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
        optimizers: `(optimizer, lr_scheduler)`; by default AdamW and `lr_scheduler_type` from `args`.
    """

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
        self.args = args
        self.hftrain_args = hftrain_settings(args)
        set_seed(args.seed)
        self.model = model
        self._text_conditional = isinstance(model, UNet2DConditionModel)  # checked once, used every step
        self.resolution, num_classes = self._check_model(model, text_encoder, tokenizer)
        self.text_encoder, self.tokenizer, self.quality_fn = text_encoder, tokenizer, quality_fn
        self.noise_scheduler = training_scheduler(args.noise_schedule, args.prediction_type, args.num_train_timesteps)
        dataset_kwargs = dict(
            image_column=args.image_column, resolution=self.resolution, channels=model.config.in_channels,
            resize=args.image_resize, class_column=args.class_column, num_classes=num_classes,
            caption_column=args.caption_column,
        )
        # Every check on the data runs here, before the accelerator starts or anything is written.
        self.train_dataset = ImageDataset(train_dataset, **dataset_kwargs)
        self.train_rows = train_dataset  # the undecoded rows, for curriculum scorers (a `column`, a callable)
        self.eval_dataset = None if eval_dataset is None else ImageDataset(eval_dataset, **dataset_kwargs)
        if model.config.sample_size != self.resolution:
            logger.warning(f"UNet sample_size {model.config.sample_size} -> {self.resolution} (resolution), "
                           "so pipelines generate at the trained size")
            model.register_to_config(sample_size=self.resolution)

        mixed_precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        self.accelerator = Accelerator(mixed_precision=mixed_precision, cpu=args.use_cpu)
        self.optimizer, self.lr_scheduler = optimizers
        self.ema = None
        if args.use_ema:
            self.ema = EMAModel(
                model.parameters(), decay=args.ema_decay, min_decay=args.ema_min_decay,
                update_after_step=args.ema_update_after_step, use_ema_warmup=args.ema_use_warmup,
                inv_gamma=args.ema_inv_gamma, power=args.ema_power, model_cls=type(model), model_config=model.config,
            )

        # Callback order as in transformers.Trainer (+ hftrain's, added after, as HFTrainMixin does).
        default = [DefaultFlowCallback] + get_reporting_integration_callbacks(args.report_to)
        self.callback_handler = CallbackHandler(
            default + list(callbacks or []), model, tokenizer, self.optimizer, self.lr_scheduler
        )
        self.callback_handler.add_callback(PrinterCallback if args.disable_tqdm else ProgressCallback)
        self.state = TrainerState(
            is_local_process_zero=self.accelerator.is_local_main_process,
            is_world_process_zero=self.accelerator.is_main_process,
            stateful_callbacks=[cb for cb in self.callback_handler.callbacks if isinstance(cb, ExportableState)],
        )
        self.control = TrainerControl()
        if hftrain_settings(args).curriculum == "loss":
            raise ConfigError("curriculum: the `loss` scorer scores text with a language model; for diffusion use "
                              "`column` (e.g. curriculum_column=label) or a callable")
        for callback in build_callbacks(self):
            self.callback_handler.add_callback(callback)
        self.control = self.callback_handler.on_init_end(args, self.state, self.control)

    # -- checks -------------------------------------------------------------------------------------------------
    def _check_model(self, model, text_encoder, tokenizer) -> tuple[int, Optional[int]]:
        args = self.args
        if not isinstance(model, (UNet2DModel, UNet2DConditionModel)):
            raise ConfigError(f"model: expected a diffusers UNet2DModel or UNet2DConditionModel, got {type(model).__name__}")
        config = model.config
        sample_size = config.sample_size if isinstance(config.sample_size, int) else None
        resolution = args.resolution or sample_size
        if resolution is None:
            raise ConfigError("resolution: the UNet has no integer sample_size, so set resolution (pixels per side)")
        factor = 2 ** (len(config.down_block_types) - 1)  # every down block but the last halves the image
        if resolution % factor:
            raise ConfigError(
                f"resolution: {resolution} cannot pass the UNet's {len(config.down_block_types) - 1} downsamplings; "
                f"use a multiple of {factor} (e.g. {max(factor, resolution // factor * factor)})"
            )
        num_classes = getattr(config, "num_class_embeds", None)
        if num_classes and not args.class_column:
            raise ConfigError(f"class_column: the UNet is class-conditional (num_class_embeds={num_classes}); "
                              "name the dataset column with the integer labels")
        if args.class_column and not num_classes:
            raise ConfigError(f"class_column: {args.class_column!r} is set but the UNet has no num_class_embeds")
        cross_attention = any("CrossAttn" in name for name in getattr(config, "down_block_types", ()))
        if cross_attention and (text_encoder is None or tokenizer is None or not args.caption_column):
            raise ConfigError("caption_column: the UNet has cross-attention, so pass text_encoder and tokenizer "
                              "and set caption_column")
        if not cross_attention and (text_encoder is not None or args.caption_column):
            raise ConfigError("caption_column / text_encoder: the UNet has no cross-attention blocks to take text")
        return resolution, num_classes

    def _train_sampler(self):
        """The shuffled epoch order, or the curriculum's order when `args.curriculum` is set (build_callbacks made
        its callback and scores when the trainer was built; the sampler needs the batch geometry)."""
        args = self.args
        callback = getattr(self, "_curriculum_callback", None)
        if callback is None:
            return EpochSampler(len(self.train_dataset), seed=args.data_seed if args.data_seed is not None else args.seed)
        from ..curriculum import sampler_for_geometry

        sampler = sampler_for_geometry(self.train_rows, args, self._curriculum_scores,
                                       per_device_batch=args.per_device_train_batch_size,
                                       world_size=self.accelerator.num_processes)
        callback.attach(sampler)
        return sampler

    # -- the loop -------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: Optional[str] = None) -> dict:
        """Train to `max_steps` (or `num_train_epochs`), resuming exactly from `resume_from_checkpoint` if given."""
        try:
            return self._train(resume_from_checkpoint)
        except BaseException as exc:
            from ..resilience import notify_train_error

            notify_train_error(self, exc)  # the tracker records failed/killed, signal handlers are put back
            raise

    def _train(self, resume_from_checkpoint: Optional[str]) -> dict:
        args, accelerator = self.args, self.accelerator
        start_time = time.time()
        sampler = self._train_sampler()
        dataloader = DataLoader(
            self.train_dataset, batch_size=args.per_device_train_batch_size, sampler=sampler,
            collate_fn=self._collate, drop_last=args.dataloader_drop_last, num_workers=args.dataloader_num_workers,
        )
        ga = args.gradient_accumulation_steps
        if args.torch_compile:
            self.model = torch.compile(self.model, backend=args.torch_compile_backend or "inductor",
                                       mode=args.torch_compile_mode)
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                eps=args.adam_epsilon, weight_decay=args.weight_decay,
            )
        model, optimizer, dataloader = accelerator.prepare(self.model, self.optimizer, dataloader)
        # Unwrapping walks every module (~1 ms here); the parameters the EMA follows never change, so do it once.
        ema_targets = list(accelerator.unwrap_model(model).parameters())
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(False).eval().to(accelerator.device)
        if self.ema is not None:
            self.ema.to(accelerator.device)

        batches_per_epoch = len(dataloader)  # per process, after accelerate shards the batches
        updates_per_epoch = max(1, math.ceil(batches_per_epoch / ga))
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * updates_per_epoch)
        num_epochs = math.ceil(max_steps / updates_per_epoch)
        if self.lr_scheduler is None:
            # Stepped once per optimizer step by the loop (not prepared by accelerate, which would step it once
            # per process), so warmup and decay count optimizer steps, as in Trainer.
            self.lr_scheduler = get_scheduler(
                args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(max_steps),
                num_training_steps=max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs,
            )
        # Per-process noise stream: ranks draw different noise, and it is saved with each checkpoint.
        self._noise_rng = torch.Generator(accelerator.device).manual_seed(args.seed + 7919 * accelerator.process_index)

        self.state.max_steps, self.state.num_train_epochs = max_steps, num_epochs
        self.state.train_batch_size = args.per_device_train_batch_size
        self.state.compute_steps(args, max_steps)
        if resume_from_checkpoint:
            self._load_checkpoint(resume_from_checkpoint)
        handler = self.callback_handler
        handler.model, handler.optimizer, handler.lr_scheduler = model, optimizer, self.lr_scheduler
        handler.train_dataloader = dataloader
        self._model = model
        start_epoch = self.state.global_step // updates_per_epoch
        skip_batches = (self.state.global_step % updates_per_epoch) * ga
        steps_this_run, loss_sum = 0, torch.zeros((), device=accelerator.device)
        last_logged, grad_norm = self.state.global_step, None

        model.train()
        self.control = handler.on_train_begin(args, self.state, self.control)
        for epoch in range(start_epoch, num_epochs):
            if self.state.global_step >= max_steps:
                break
            sampler.epoch = epoch
            epoch_batches = accelerator.skip_first_batches(dataloader, skip_batches) if skip_batches else dataloader
            # DataLoaderShard hands its own iteration count to a sampler's `set_epoch` when iterated (0 again after
            # a resume); give it the true epoch so a curriculum sampler keeps its order.
            epoch_batches.set_epoch(epoch)
            batch_index, skip_batches = (self.state.global_step % updates_per_epoch) * ga, 0
            self.control = handler.on_epoch_begin(args, self.state, self.control)
            batch_iter = iter(epoch_batches)
            while batch_index < batches_per_epoch:
                group = [next(batch_iter) for _ in range(min(ga, batches_per_epoch - batch_index))]
                for i, batch in enumerate(group):
                    if i == 0:
                        self.control = handler.on_step_begin(args, self.state, self.control)
                    last = i == len(group) - 1
                    # Gradients are synchronised across processes only on the last micro-batch of a step.
                    with accelerator.no_sync(model) if not last else contextlib.nullcontext():
                        loss = self._loss(model, batch)
                        accelerator.backward(loss / len(group))
                    loss_sum += loss.detach() / len(group)
                    if not last:
                        self.control = handler.on_substep_end(args, self.state, self.control)
                batch_index += len(group)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.control = handler.on_pre_optimizer_step(args, self.state, self.control)
                optimizer.step()
                self.control = handler.on_optimizer_step(args, self.state, self.control)
                learning_rate = self.lr_scheduler.get_last_lr()[0]
                if not accelerator.optimizer_step_was_skipped:
                    self.lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.step(ema_targets)
                self.state.global_step += 1
                steps_this_run += 1
                self.state.epoch = epoch + batch_index / batches_per_epoch
                self.control = handler.on_step_end(args, self.state, self.control)
                if self.control.should_log and self.state.global_step > last_logged:
                    loss_mean = accelerator.reduce(loss_sum, reduction="mean").item()
                    logs = {"loss": loss_mean / (self.state.global_step - last_logged), "learning_rate": learning_rate}
                    if grad_norm is not None:
                        logs["grad_norm"] = float(grad_norm)
                    loss_sum.zero_()
                    last_logged = self.state.global_step
                    self.log(logs)
                self._maybe_evaluate_and_save()
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            self.control = handler.on_epoch_end(args, self.state, self.control)
            self._maybe_evaluate_and_save()
            if self.control.should_training_stop:
                break

        runtime = time.time() - start_time
        images = steps_this_run * args.per_device_train_batch_size * ga * accelerator.num_processes
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(images / runtime, 3),
            "train_steps_per_second": round(steps_this_run / runtime, 3),
        }
        self.log(dict(metrics))
        self.control = handler.on_train_end(args, self.state, self.control)
        return metrics

    def _maybe_evaluate_and_save(self) -> None:
        if self.control.should_evaluate:
            self.evaluate()
        if self.control.should_save:
            self._save_checkpoint()
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def _collate(self, rows: list[dict]) -> dict:
        batch = {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}
        if "class_labels" in rows[0]:
            batch["class_labels"] = torch.tensor([r["class_labels"] for r in rows], dtype=torch.long)
        if "caption" in rows[0]:
            batch["input_ids"] = self.tokenizer(
                [r["caption"] for r in rows], padding="max_length", truncation=True,
                max_length=self.tokenizer.model_max_length, return_tensors="pt",
            ).input_ids
        return batch

    def _loss(self, model, batch: dict, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Denoising loss of one batch: add noise at random timesteps, predict, weighted MSE."""
        args, scheduler = self.args, self.noise_scheduler
        generator = generator or self._noise_rng
        clean = batch["pixel_values"]
        device = generator.device
        noise = torch.randn(clean.shape, generator=generator, device=device).to(clean.device)
        if args.noise_offset:
            # Offset noise (Guttenberg 2023) lets the model change an image's mean brightness.
            noise += args.noise_offset * torch.randn((*clean.shape[:2], 1, 1), generator=generator, device=device).to(clean.device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator,
                                  device=device).to(clean.device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        if args.prediction_type == "epsilon":
            target = noise
        elif args.prediction_type == "v_prediction":
            target = scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = clean
        kwargs = {}
        if "class_labels" in batch:
            kwargs["class_labels"] = batch["class_labels"]
        if self._text_conditional:
            kwargs["encoder_hidden_states"] = None
            if "input_ids" in batch:
                with torch.no_grad():
                    kwargs["encoder_hidden_states"] = self.text_encoder(batch["input_ids"])[0]
        prediction = model(noisy, timesteps, **kwargs).sample
        if args.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float())
        # Min-SNR-gamma (Hang et al. 2023): weight each timestep by min(SNR, gamma), expressed for the target.
        snr = compute_snr(scheduler, timesteps)
        weights = torch.clamp(snr, max=args.snr_gamma)
        if args.prediction_type == "epsilon":
            weights = weights / snr
        elif args.prediction_type == "v_prediction":
            weights = weights / (snr + 1)
        per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_image * weights).mean()

    @property
    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # -- logging and evaluation ------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float]) -> None:
        """Record `logs` in `state.log_history` and send them to the callbacks' `on_log`, as `Trainer.log` does."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Sample a fixed-seed grid (EMA weights), save it under `output_dir/samples/`, score it, log `eval_*`."""
        args, accelerator = self.args, self.accelerator
        start = time.time()
        metrics: dict[str, float] = {}
        model = getattr(self, "_model", self.model)
        model.eval()
        if self.eval_dataset is not None:
            metrics["eval_loss"] = self._eval_loss(model)
        if accelerator.is_main_process:
            images = self._sample_grid()
            path = self._save_grid(images)
            if self.quality_fn is not None:
                metrics.update({f"eval_{k}": float(v) for k, v in self.quality_fn(images).items()})
            self._record_artifact(path)
        metrics = broadcast_object_list([metrics], from_process=0)[0] if accelerator.num_processes > 1 else metrics
        model.train()
        runtime = time.time() - start
        metrics.update(eval_runtime=round(runtime, 4),
                       eval_samples_per_second=round(args.eval_num_samples / runtime, 3))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(args, self.state, self.control, metrics=metrics)
        return metrics

    def _eval_loss(self, model) -> float:
        loader = DataLoader(self.eval_dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self._collate)
        loader = self.accelerator.prepare_data_loader(loader)
        # Same noise and timesteps at every evaluation, so eval_loss curves compare checkpoints, not noise draws.
        generator = torch.Generator(self.accelerator.device).manual_seed(self.args.seed + self.accelerator.process_index)
        total, count = torch.zeros((), device=self.accelerator.device), torch.zeros((), device=self.accelerator.device)
        for batch in loader:
            total += self._loss(model, batch, generator) * len(batch["pixel_values"])
            count += len(batch["pixel_values"])
            self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        return (self.accelerator.reduce(total) / self.accelerator.reduce(count)).item()

    def pipeline(self, sampler: Optional[str] = None) -> ImagePipeline:
        """An `ImagePipeline` over the current (raw) weights with the configured sampler."""
        scheduler = sampling_scheduler(sampler or self.args.sampler, self.noise_scheduler, self.args.karras_sigmas)
        return ImagePipeline(self._unwrapped, scheduler, text_encoder=self.text_encoder, tokenizer=self.tokenizer)

    def _sample_grid(self) -> torch.Tensor:
        args, unet = self.args, self._unwrapped
        if self.ema is not None:  # sample the EMA weights, then put the trained ones back
            self.ema.store(unet.parameters())
            self.ema.copy_to(unet.parameters())
        try:
            pipe = self.pipeline()
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator("cpu").manual_seed(args.seed)
            n, chunk, out = args.eval_num_samples, max(1, args.per_device_eval_batch_size), []
            num_classes = unet.config.get("num_class_embeds")
            captions = self._eval_captions(n)
            for first in range(0, n, chunk):
                size = min(chunk, n - first)
                kwargs = {}
                if num_classes:
                    kwargs["class_labels"] = [(first + j) % num_classes for j in range(size)]
                if captions is not None:
                    kwargs["prompt"] = captions[first:first + size]
                out.append(pipe(batch_size=size, generator=generator, num_inference_steps=args.num_inference_steps,
                                output_type="pt", **kwargs).images)
                self.control = self.callback_handler.on_prediction_step(args, self.state, self.control)
            return torch.cat(out).cpu()
        finally:
            if self.ema is not None:
                self.ema.restore(unet.parameters())

    def _eval_captions(self, n: int) -> Optional[list[str]]:
        if self.args.caption_column is None:
            return None
        source = self.eval_dataset or self.train_dataset
        return [source[i % len(source)]["caption"] for i in range(n)]

    def _save_grid(self, images: torch.Tensor) -> str:
        from PIL import Image

        n, channels, height, width = images.shape
        cols = self._unwrapped.config.get("num_class_embeds") or math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = torch.ones(channels, rows * (height + 2), cols * (width + 2))  # white 2-pixel gutters
        for k, image in enumerate(images):
            r, c = divmod(k, cols)
            grid[:, r * (height + 2) + 1:r * (height + 2) + 1 + height, c * (width + 2) + 1:c * (width + 2) + 1 + width] = image
        scale = max(1, 64 // height)  # small images are upscaled (nearest) so the grid is readable
        array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        picture = Image.fromarray(array[..., 0] if channels == 1 else array)
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        path = os.path.join(self.args.output_dir, "samples", f"step-{self.state.global_step:06d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        picture.save(path)
        logger.info(f"sample grid saved to {path}")
        return path

    def _record_artifact(self, path: str) -> None:
        for callback in self.callback_handler.callbacks:
            if callable(getattr(callback, "log_artifact", None)):  # the tracker's artifact API, when it has one
                callback.log_artifact(path, kind="samples", step=self.state.global_step)
            elif callable(getattr(callback, "log_event", None)):
                callback.log_event("sample_grid", {"path": os.path.abspath(path)}, step=self.state.global_step)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> str:
        """`checkpoint-N/`: unet/ and unet_ema/ (save_pretrained), optimizer, scheduler, RNG per process, data
        position and trainer_state.json, written to a temporary folder and renamed when complete."""
        args, accelerator = self.args, self.accelerator
        final = os.path.join(args.output_dir, f"checkpoint-{self.state.global_step}")
        tmp = final + ".tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state(),
               "noise": self._noise_rng.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, os.path.join(tmp, f"rng_state_{accelerator.process_index}.pth"))
        if accelerator.is_main_process:
            self._unwrapped.save_pretrained(os.path.join(tmp, "unet"))
            if self.ema is not None:
                self.ema.save_pretrained(os.path.join(tmp, "unet_ema"))
            torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
            torch.save(self.lr_scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
            torch.save(args, os.path.join(tmp, "training_args.bin"))
            with open(os.path.join(tmp, "data_state.json"), "w") as handle:
                json.dump({"global_step": self.state.global_step, "epoch": math.floor(self.state.epoch or 0),
                           "sampler_seed": args.data_seed if args.data_seed is not None else args.seed,
                           "num_processes": accelerator.num_processes}, handle)
            self.state.stateful_callbacks["TrainerControl"] = self.control.state()
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, ExportableState):
                    self.state.stateful_callbacks[type(callback).__name__] = callback.state()
            self.state.save_to_json(os.path.join(tmp, "trainer_state.json"))  # last: marks the folder complete
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            rotate_checkpoints(args.output_dir, args.save_total_limit)
        accelerator.wait_for_everyone()
        return final

    def _load_checkpoint(self, folder: str) -> None:
        accelerator = self.accelerator
        for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "unet"):
            if not os.path.exists(os.path.join(folder, name)):
                raise ConfigError(f"resume_from_checkpoint: {folder} is not a complete diffusion checkpoint (no {name})")
        self._load_from_checkpoint(folder)
        self._load_optimizer_and_scheduler(folder)
        saved = TrainerState.load_from_json(os.path.join(folder, "trainer_state.json"))
        for key in ("global_step", "epoch", "log_history", "best_metric", "best_model_checkpoint", "total_flos"):
            setattr(self.state, key, getattr(saved, key))
        self.state.stateful_callbacks = saved.stateful_callbacks
        rng_file = os.path.join(folder, f"rng_state_{accelerator.process_index}.pth")
        if os.path.exists(rng_file):
            rng = torch.load(rng_file, weights_only=False)
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["cpu"])
            self._noise_rng.set_state(rng["noise"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            logger.warning(f"{rng_file} missing (different number of processes?): noise will not match the first run")
        logger.info(f"resumed from {folder} at step {self.state.global_step}")

    def push_to_hub(self, commit_message: str = "End of training") -> Optional[str]:
        """Upload `output_dir` (pipeline, samples, card, history; not the checkpoints) to `args.hub_model_id`, with
        hftrain's uploader (one clear error and a retry command if it fails)."""
        if not self.accelerator.is_main_process:
            return None
        from ..hub import push_results

        self.control = self.callback_handler.on_push_begin(self.args, self.state, self.control)
        return push_results(self.args.output_dir, repo_id=self.args.hub_model_id, token=self.args.hub_token,
                            private=self.args.hub_private_repo, commit_message=commit_message)

    def _load_from_checkpoint(self, folder: str) -> None:
        """Weights and EMA from `folder`. Same name and meaning as in `Trainer`, for callbacks that roll back."""
        weights = type(self._unwrapped).from_pretrained(os.path.join(folder, "unet"))
        self._unwrapped.load_state_dict(weights.state_dict())
        if self.ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(folder, "unet_ema"), model_cls=type(self._unwrapped))
            loaded.to(self.accelerator.device)
            self.ema.load_state_dict(loaded.state_dict())

    def _load_optimizer_and_scheduler(self, folder: str) -> None:
        """Optimizer and learning-rate schedule from `folder` (as `Trainer` names it)."""
        self.optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), map_location="cpu"))
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(folder, "scheduler.pt")))

    # -- output ----------------------------------------------------------------------------------------------------
    def save_model(self, output_dir: Optional[str] = None) -> str:
        """Save the final pipeline (EMA weights when `use_ema`): `DDPMPipeline` for an unconditional `UNet2DModel`,
        `ImagePipeline` otherwise. Both load with `<Pipeline>.from_pretrained(output_dir)`."""
        output_dir = output_dir or self.args.output_dir
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            unet = self._unwrapped
            if self.ema is not None:
                self.ema.store(unet.parameters())
                self.ema.copy_to(unet.parameters())
            try:
                conditional = unet.config.get("num_class_embeds") or isinstance(unet, UNet2DConditionModel)
                scheduler = training_scheduler(self.args.noise_schedule, self.args.prediction_type,
                                               self.args.num_train_timesteps)
                if conditional:
                    pipe = ImagePipeline(unet, scheduler, text_encoder=self.text_encoder, tokenizer=self.tokenizer)
                else:
                    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
                pipe.save_pretrained(output_dir)
                # diffusers' save_pretrained skips transformers components it does not list as loadable (seen with
                # transformers 5 tokenizers), so the text side is written explicitly.
                if self.text_encoder is not None:
                    self.text_encoder.save_pretrained(os.path.join(output_dir, "text_encoder"))
                    self.tokenizer.save_pretrained(os.path.join(output_dir, "tokenizer"))
                torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
                self.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
            finally:
                if self.ema is not None:
                    self.ema.restore(unet.parameters())
        self.accelerator.wait_for_everyone()
        return output_dir
