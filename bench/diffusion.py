"""hftrain's DiffusionTrainer against a plain accelerate loop written the way diffusers' unconditional example is.

Same UNet, data, batch, steps, optimizer, EMA and noise schedule; the runs alternate (plain, hftrain, plain, ...)
so machine load hits both alike. Prints images per second, peak memory and the hftrain/plain ratio (target >= 0.98).

    python bench/diffusion.py                      # 16x16 digits, default UNet, batch 64, 60 steps, 3 repeats
    python bench/diffusion.py --steps 200 --repeats 5 --channels 32 64 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from accelerate import Accelerator  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hftrain.diffusion import DiffusionConfig, DiffusionTrainer  # noqa: E402
from hftrain.diffusion.builtin import build_digits_unet, digits_dataset  # noqa: E402
from hftrain.diffusion.data import ImageDataset  # noqa: E402
from hftrain.diffusion.schedules import training_scheduler  # noqa: E402


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, else the process RSS sampled every 5 ms."""

    def __enter__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        self._process, self._stop, self.peak = psutil.Process(), threading.Event(), 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        return False


WARMUP = 5  # steady-state timing starts after this many optimizer steps (one-time setup is reported separately)


class StepClock(TrainerCallback):
    """Records the time at the end of step WARMUP and of the last step."""

    def __init__(self):
        self.marks = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.marks[state.global_step] = time.perf_counter()


def plain_loop(args, dataset, make_unet) -> tuple[float, float]:
    """diffusers' train_unconditional.py loop, trimmed to what both runs do: (total, steady-state) seconds."""
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    model = make_unet()
    noise_scheduler = training_scheduler("cosine", "epsilon", 1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True)
    lr_scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.steps)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(
        model.parameters(),
        decay=0.9999,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=0.75,
        model_cls=type(make_unet()),
        model_config=accelerator.unwrap_model(model).config,
    )
    start, step = time.perf_counter(), 0
    while step < args.steps:
        model.train()
        for batch in loader:
            clean = batch["pixel_values"]
            noise = torch.randn(clean.shape, device=clean.device)
            timesteps = torch.randint(0, 1000, (clean.shape[0],), device=clean.device).long()
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            with accelerator.accumulate(model):
                loss = F.mse_loss(model(noisy, timesteps).sample.float(), noise)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema.step(model.parameters())
                step += 1
                if step == WARMUP:
                    warm = time.perf_counter()
            if step >= args.steps:
                break
    end = time.perf_counter()
    return end - start, end - warm


def hftrain_loop(args, rows, make_unet) -> tuple[float, float]:
    """The same training through DiffusionTrainer (hftrain's default callbacks on): (total, steady-state) seconds."""
    with tempfile.TemporaryDirectory() as out:
        config = DiffusionConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            learning_rate=1e-3,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            logging_steps=args.steps,
            save_strategy="no",
            eval_strategy="no",
            noise_schedule="cosine",
            prediction_type="epsilon",
            ema_decay=0.9999,
            disable_tqdm=True,
            report_to="none",
            seed=0,
            optim="adamw_torch",  # the plain loop's optimizer (transformers' default is the fused AdamW)
        )
        clock = StepClock()
        trainer = DiffusionTrainer(make_unet(), config, rows, callbacks=[clock])
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start, clock.marks[args.steps] - clock.marks[WARMUP]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    args = parser.parse_args()
    os.environ.setdefault("HFTRAIN_TRACKER_DB", os.path.join(tempfile.mkdtemp(), "bench_runs.db"))

    rows = digits_dataset()
    dataset = ImageDataset(rows, image_column="image", resolution=16, channels=1)  # the same tensors for both

    def make_unet():
        torch.manual_seed(0)
        return build_digits_unet(args.channels, 1, True)

    n_params = sum(p.numel() for p in make_unet().parameters())
    print(
        f"UNet {args.channels} ({n_params / 1e6:.2f}M params), 16x16x1, batch {args.batch}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads, {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    plain_ips, ours_ips, plain_mem, ours_mem, plain_tot, ours_tot = [], [], [], [], [], []
    plain_loop(argparse.Namespace(steps=WARMUP + 1, batch=args.batch), dataset, make_unet)  # warm-up run
    steady_images = (args.steps - WARMUP) * args.batch
    for repeat in range(args.repeats):
        with PeakMemory() as memory:
            total, steady = plain_loop(args, dataset, make_unet)
        plain_ips.append(steady_images / steady)
        plain_tot.append(args.steps * args.batch / total)
        plain_mem.append(memory.peak)
        with PeakMemory() as memory:
            total, steady = hftrain_loop(args, rows, make_unet)
        ours_ips.append(steady_images / steady)
        ours_tot.append(args.steps * args.batch / total)
        ours_mem.append(memory.peak)
        print(
            f"  repeat {repeat}: steady-state plain {plain_ips[-1]:7.1f} img/s, hftrain {ours_ips[-1]:7.1f} img/s, "
            f"ratio {ours_ips[-1] / plain_ips[-1]:.3f} | end-to-end ratio {ours_tot[-1] / plain_tot[-1]:.3f}"
        )
    med = statistics.median
    print(
        f"plain accelerate loop   : {med(plain_ips):7.1f} images/s steady ({med(plain_tot):7.1f} end-to-end), "
        f"peak memory {max(plain_mem) / 2**20:7.1f} MiB"
    )
    print(
        f"hftrain DiffusionTrainer: {med(ours_ips):7.1f} images/s steady ({med(ours_tot):7.1f} end-to-end), "
        f"peak memory {max(ours_mem) / 2**20:7.1f} MiB"
    )
    print(
        f"ratio hftrain/plain, steady state after {WARMUP} steps (median of {args.repeats}): "
        f"{med(ours_ips) / med(plain_ips):.3f}  (target >= 0.98)"
    )
    print(
        f"ratio hftrain/plain, end to end incl. setup (tracker run creation, prepare): "
        f"{med(ours_tot) / med(plain_tot):.3f}"
    )


if __name__ == "__main__":
    main()
