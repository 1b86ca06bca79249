"""What the diffusion loop writes and reads back: checkpoints (`hftrain.host.DIFFUSION_FORMAT`) to resume from
or roll back to, and the final pipeline.

`checkpoint-N/` holds `unet/` and `unet_ema/` (`save_pretrained`), `optimizer.pt`, `scheduler.pt`, one
`rng_state_<rank>.pth` per process (Python, NumPy, torch and the loop's noise generator), `data_state.json`,
`training_args.bin` and, written last as in Trainer, `trainer_state.json`. The folder is written under a temporary
name and renamed when complete; `hftrain.checkpoints` judges it by this layout.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from diffusers import DDPMPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers.trainer_callback import ExportableState, TrainerState
from transformers.trainer_utils import rotate_checkpoints

from .evaluation import ema_weights
from .pipeline import ImagePipeline
from .schedules import training_scheduler

__all__ = ["load_checkpoint", "load_optimizer", "load_weights", "save_checkpoint", "save_pipeline"]

logger = get_logger(__name__)

_RESUMED_STATE = (
    "global_step",
    "epoch",
    "log_history",
    "best_metric",
    "best_global_step",
    "best_model_checkpoint",
    "total_flos",
)


def save_checkpoint(trainer: Any) -> str:
    """Write `output_dir/checkpoint-<global_step>` for `trainer` (every process takes part) and return its path."""
    args, accelerator, state = trainer.args, trainer.accelerator, trainer.state
    final = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(trainer), os.path.join(tmp, f"rng_state_{accelerator.process_index}.pth"))
    if accelerator.is_main_process:
        _write_main_parts(trainer, tmp)
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = final
        _write_state(trainer, tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        rotate_checkpoints(args.output_dir, args.save_total_limit, best_model_checkpoint=state.best_model_checkpoint)
    accelerator.wait_for_everyone()
    return final


def _rng_state(trainer: Any) -> dict:
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.get_rng_state(),
        "noise": trainer.noise_generator.get_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _write_main_parts(trainer: Any, folder: str) -> None:
    args, state = trainer.args, trainer.state
    trainer.unet.save_pretrained(os.path.join(folder, "unet"))
    if trainer.ema is not None:
        trainer.ema.save_pretrained(os.path.join(folder, "unet_ema"))
    torch.save(trainer.optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
    torch.save(trainer.lr_scheduler.state_dict(), os.path.join(folder, "scheduler.pt"))
    torch.save(args, os.path.join(folder, "training_args.bin"))
    with open(os.path.join(folder, "data_state.json"), "w") as handle:
        json.dump(
            {
                "global_step": state.global_step,
                "epoch": math.floor(state.epoch or 0),
                "sampler_seed": args.data_seed if args.data_seed is not None else args.seed,
                "num_processes": trainer.accelerator.num_processes,
            },
            handle,
        )


def _write_state(trainer: Any, folder: str) -> None:
    """`trainer_state.json` with the control and every stateful callback, last: it marks the folder complete."""
    state = trainer.state
    state.stateful_callbacks["TrainerControl"] = trainer.control.state()
    for callback in trainer.callbacks:
        if isinstance(callback, ExportableState):
            state.stateful_callbacks[type(callback).__name__] = callback.state()
    state.save_to_json(os.path.join(folder, "trainer_state.json"))


def load_weights(trainer: Any, folder: str) -> None:
    """The UNet's weights and the EMA (shadow weights and its step count) from `folder`."""
    unet = trainer.unet
    weights = type(unet).from_pretrained(os.path.join(folder, "unet"))
    unet.load_state_dict(weights.state_dict())
    if trainer.ema is not None:
        loaded = EMAModel.from_pretrained(os.path.join(folder, "unet_ema"), model_cls=type(unet))
        loaded.to(trainer.accelerator.device)
        trainer.ema.load_state_dict(loaded.state_dict())


def load_optimizer(optimizer: Any, folder: str, keep_learning_rate: bool = False) -> None:
    """The optimizer's state (moments, step counts) from `folder`; with `keep_learning_rate`, each group keeps the
    learning rate it has now, so the schedule stays where it is (a rollback)."""
    learning_rates = [(g["lr"], g.get("initial_lr")) for g in optimizer.param_groups]
    optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), map_location="cpu"))
    if keep_learning_rate:
        for group, (lr, initial) in zip(optimizer.param_groups, learning_rates):
            group["lr"] = lr
            if initial is not None:
                group["initial_lr"] = initial


def load_checkpoint(trainer: Any, folder: str) -> None:
    """Everything a run needs to continue exactly from `folder`: weights, EMA, optimizer, LR schedule, state and
    this process's random states (`hftrain.checkpoints.resume_checkpoint` has checked the folder)."""
    load_weights(trainer, folder)
    load_optimizer(trainer.optimizer, folder)
    trainer.lr_scheduler.load_state_dict(torch.load(os.path.join(folder, "scheduler.pt")))
    saved = TrainerState.load_from_json(os.path.join(folder, "trainer_state.json"))
    for key in _RESUMED_STATE:
        setattr(trainer.state, key, getattr(saved, key))
    trainer.state.stateful_callbacks = saved.stateful_callbacks
    rng_file = os.path.join(folder, f"rng_state_{trainer.accelerator.process_index}.pth")
    if os.path.exists(rng_file):
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["cpu"])
        trainer.noise_generator.set_state(rng["noise"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    else:
        logger.warning(f"{rng_file} missing (different number of processes?): noise will not match the first run")
    logger.info(f"resumed from {folder} at step {trainer.state.global_step}")


def save_pipeline(trainer: Any, output_dir: str) -> str:
    """The final pipeline in `output_dir` with the EMA weights: `DDPMPipeline` for an unconditional `UNet2DModel`,
    else `ImagePipeline` (shipped as a diffusers custom pipeline); plus the text side, arguments and state."""
    accelerator, args = trainer.accelerator, trainer.args
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = trainer.unet
        with ema_weights(unet, trainer.ema):
            scheduler = training_scheduler(args.noise_schedule, args.prediction_type, args.num_train_timesteps)
            if unet.config.get("num_class_embeds") or isinstance(unet, UNet2DConditionModel):
                ImagePipeline(unet, scheduler, trainer.text_encoder, trainer.tokenizer).save_pretrained(output_dir)
            else:
                DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(output_dir)
        # diffusers' save_pretrained skips transformers components it does not list as loadable (seen with
        # transformers 5 tokenizers), so the text side is written explicitly.
        if trainer.text_encoder is not None:
            trainer.text_encoder.save_pretrained(os.path.join(output_dir, "text_encoder"))
            trainer.tokenizer.save_pretrained(os.path.join(output_dir, "tokenizer"))
        torch.save(args, os.path.join(output_dir, "training_args.bin"))
        trainer.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
    accelerator.wait_for_everyone()
    return output_dir
