"""Two-process diffusion run for tests/test_diffusion_ddp.py: trains, checkpoints, resumes, reports per rank.

Run with `accelerate launch --config_file accelerate_configs/cpu_ddp.yaml tests/scripts/diffusion_ddp.py OUT`.
"""

import json
import os
import sys

import torch
from transformers import TrainerCallback

from hftrain.diffusion import DiffusionConfig, DiffusionTrainer
from hftrain.diffusion.builtin import build_digits_unet, digits_dataset
from hftrain.recipe_utils import end_distributed


class StopAt(TrainerCallback):
    """Ends the run after step `at` (the schedule still spans max_steps, as in the uninterrupted run)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            control.should_training_stop = True


def run(out, max_steps, resume=None, stop_at=None):
    torch.manual_seed(0)
    unet = build_digits_unet((16, 16), layers_per_block=1, attention=False)
    args = DiffusionConfig(
        output_dir=out,
        per_device_train_batch_size=4,
        max_steps=max_steps,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        eval_num_samples=4,
        per_device_eval_batch_size=4,
        num_inference_steps=2,
        disable_tqdm=True,
        report_to="none",
        seed=0,
        learning_rate=1e-3,
    )
    callbacks = [StopAt(stop_at)] if stop_at else None
    # 24 rows / (batch 4 x 2 processes): 3 steps per epoch
    trainer = DiffusionTrainer(unet, args, digits_dataset(max_rows=24), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def main():
    root = sys.argv[1]
    full = run(os.path.join(root, "full"), 4)
    part = run(os.path.join(root, "part"), 4, stop_at=2)  # stops mid-epoch, at the checkpoint
    resumed = run(os.path.join(root, "part"), 4, resume=True)  # the newest complete checkpoint: checkpoint-2
    full.save_model()
    flat = torch.cat([p.detach().flatten() for p in full.model.parameters()])
    gathered = full.accelerator.gather(flat[None])
    report = {
        "rank": full.accelerator.process_index,
        "world_size": full.accelerator.num_processes,
        "losses_full": [h["loss"] for h in full.state.log_history if "loss" in h],
        "losses_resumed": [h["loss"] for h in resumed.state.log_history if "loss" in h],
        "partial_steps": part.state.global_step,
        "ranks_agree": bool(torch.equal(gathered[0], gathered[1])),
        "resumed_equals_full": same(resumed.unet.parameters(), full.unet.parameters()),
        "resumed_ema_equals_full": same(resumed.ema.shadow_params, full.ema.shadow_params),
        "resumed_step": resumed.state.global_step,
    }
    with open(os.path.join(root, f"report_{report['rank']}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
    end_distributed()  # no process exits with a live gloo group (it can abort at shutdown)
