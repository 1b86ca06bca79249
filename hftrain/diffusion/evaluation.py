"""Evaluation for the diffusion loop: a fixed-noise `eval_loss`, a fixed-seed sample grid (EMA weights) saved as a
PNG, and the grid recorded with the tracker. Every draw comes from its own seeded generator, so evaluating changes
no random state of the run."""

from __future__ import annotations

import contextlib
import math
import operator
import os
import time
from typing import Any, Iterator, Optional

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader
from transformers.trainer_utils import speed_metrics

__all__ = ["ema_weights", "eval_loss", "evaluate", "note_best", "record_artifact", "sample_grid", "save_grid"]

logger = get_logger(__name__)


@torch.no_grad()
def evaluate(trainer: Any) -> dict[str, float]:
    """`eval_loss` (with an eval set), the sample grid saved as `output_dir/samples/step-N.png` and scored by
    `quality_fn`, logged as `eval_*` and sent to `on_evaluate`, as `Trainer.evaluate` does."""
    args, accelerator, step = trainer.args, trainer.accelerator, trainer.state.global_step
    start = time.time()
    metrics: dict[str, float] = {}
    trainer.model_wrapped.eval()
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = eval_loss(trainer, trainer.model_wrapped)
    if accelerator.is_main_process:
        images = sample_grid(trainer)
        path = save_grid(
            images,
            os.path.join(args.output_dir, "samples", f"step-{step:06d}.png"),
            trainer.unet.config.get("num_class_embeds"),
        )
        logger.info(f"sample grid saved to {path}")
        if trainer.quality_fn is not None:
            metrics.update({f"eval_{k}": float(v) for k, v in trainer.quality_fn(images).items()})
        record_artifact(trainer.callbacks, path, step)
    if accelerator.num_processes > 1:
        metrics = broadcast_object_list([metrics], from_process=0)[0]
    trainer.model_wrapped.train()
    metrics.update(speed_metrics("eval", start, num_samples=args.eval_num_samples))
    trainer.log(metrics)
    trainer.control = trainer.callback_handler.on_evaluate(args, trainer.state, trainer.control, metrics=metrics)
    return metrics


def note_best(state: Any, args: Any, metrics: dict) -> None:
    """`state.best_metric` / `best_global_step` from `metric_for_best_model`, kept as Trainer keeps them (early
    stopping compares against them; the checkpoint saved at that step becomes `best_model_checkpoint`)."""
    name = args.metric_for_best_model
    value = None if name is None else metrics.get(name if name.startswith("eval_") else f"eval_{name}")
    if value is None:
        return
    better = operator.gt if args.greater_is_better else operator.lt
    if state.best_metric is None or better(value, state.best_metric):
        state.best_metric, state.best_global_step = value, state.global_step


@contextlib.contextmanager
def ema_weights(unet: Any, ema: Any) -> Iterator[None]:
    """The EMA weights in `unet` inside the block, the trained ones put back after (no-op without an EMA)."""
    if ema is None:
        yield
        return
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    try:
        yield
    finally:
        ema.restore(unet.parameters())


def eval_loss(trainer: Any, model: Any) -> float:
    """The denoising loss over `trainer.eval_dataset`, with the same noise and timesteps at every evaluation (so the
    curve compares weights, not noise draws), averaged over all processes."""
    args, accelerator = trainer.args, trainer.accelerator
    loader = DataLoader(
        trainer.eval_dataset,
        batch_size=args.per_device_eval_batch_size,
        collate_fn=trainer.collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    loader = accelerator.prepare_data_loader(loader)
    generator = torch.Generator(accelerator.device).manual_seed(args.seed + accelerator.process_index)
    total = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    for batch in loader:
        total += trainer.compute_loss(model, batch, generator) * len(batch["pixel_values"])
        count += len(batch["pixel_values"])
        trainer.control = trainer.callback_handler.on_prediction_step(args, trainer.state, trainer.control)
    return (accelerator.reduce(total) / accelerator.reduce(count)).item()


def sample_grid(trainer: Any) -> torch.Tensor:
    """`eval_num_samples` images in [0, 1] from the EMA weights with the configured sampler and a fixed seed; one
    label per column for a class-conditional UNet, the data's captions for a text-conditional one."""
    args, unet = trainer.args, trainer.unet
    with ema_weights(unet, trainer.ema):
        pipe = trainer.pipeline()
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator("cpu").manual_seed(args.seed)
        n, chunk, out = args.eval_num_samples, max(1, args.per_device_eval_batch_size), []
        num_classes = unet.config.get("num_class_embeds")
        captions = _captions(trainer, n)
        for first in range(0, n, chunk):
            size = min(chunk, n - first)
            kwargs: dict[str, Any] = {}
            if num_classes:
                kwargs["class_labels"] = [(first + j) % num_classes for j in range(size)]
            if captions is not None:
                kwargs["prompt"] = captions[first : first + size]
            out.append(
                pipe(
                    batch_size=size,
                    generator=generator,
                    num_inference_steps=args.num_inference_steps,
                    output_type="pt",
                    **kwargs,
                ).images
            )
            trainer.control = trainer.callback_handler.on_prediction_step(args, trainer.state, trainer.control)
    return torch.cat(out).cpu()


def _captions(trainer: Any, n: int) -> Optional[list[str]]:
    if trainer.args.caption_column is None:
        return None
    source = trainer.eval_dataset or trainer.train_dataset
    return [source[i % len(source)]["caption"] for i in range(n)]


def save_grid(images: torch.Tensor, path: str, columns: Optional[int] = None) -> str:
    """`images` (N, C, H, W) in [0, 1] as one PNG with white 2-pixel gutters, `columns` wide (default: square);
    small images are upscaled (nearest) so the grid is readable."""
    from PIL import Image

    n, channels, height, width = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(channels, rows * (height + 2), cols * (width + 2))
    for k, image in enumerate(images):
        top, left = divmod(k, cols)
        top, left = top * (height + 2) + 1, left * (width + 2) + 1
        grid[:, top : top + height, left : left + width] = image
    scale = max(1, 64 // height)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[..., 0] if channels == 1 else array)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    picture.save(path)
    return path


def record_artifact(callbacks: list, path: str, step: int) -> None:
    """Tell the tracker about a saved grid: as an artifact where it has that API, else as an event."""
    for callback in callbacks:
        if callable(getattr(callback, "log_artifact", None)):
            callback.log_artifact(path, kind="samples", step=step)
        elif callable(getattr(callback, "log_event", None)):
            callback.log_event("sample_grid", {"path": os.path.abspath(path)}, step=step)
