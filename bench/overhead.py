"""Step-time overhead of hftrain's trainers (defaults on) against their plain upstream counterparts.

Four pairs, same model, data, optimizer and logging cadence on both sides:

    trainer    transformers.Trainer        vs hftrain.Trainer
    sft        trl.SFTTrainer              vs hftrain.SFTTrainer
    dpo        trl.DPOTrainer              vs hftrain.DPOTrainer
    diffusion  a plain accelerate loop     vs hftrain.DiffusionTrainer   (diffusers' example loop, fused AdamW, EMA)

Runs are interleaved (every pair in turn, its two sides back to back, upstream first on even rounds and hftrain
first on odd ones). Each run trains `--steps` optimizer steps; the first `--warmup` are dropped. A run's figure on
CPU is its median loop iteration (step begin to next step begin, so logging and the tracker are inside it); on a
GPU, the mean step between two `cuda.synchronize()` calls (per-step wall times of an asynchronous device are
queueing, not work). The ratio is the median over rounds of hftrain's figure over upstream's in the same round, so
slow drift in the machine's load cancels; the training thread's CPU time per step gives a second ratio that other
jobs on a shared machine disturb less.

    python bench/overhead.py                                  # CPU: tiny Llama, digits UNet; 6 rounds x 60 steps
    python bench/overhead.py --runs 12 --steps 80 --kinds sft dpo
    python bench/overhead.py --model qwen0.5b                 # GPU default: Qwen2.5-0.5B-shaped Qwen2 in bf16
Target: every ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes of upstream's own arguments
warnings.filterwarnings("ignore", message=".*pin_memory.*")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

KINDS = ("trainer", "sft", "dpo", "diffusion")
UPSTREAM = {
    "trainer": "transformers.Trainer",
    "sft": "trl.SFTTrainer",
    "dpo": "trl.DPOTrainer",
    "diffusion": "plain accelerate loop",
}
OURS = {
    "trainer": "hftrain.Trainer",
    "sft": "hftrain.SFTTrainer",
    "dpo": "hftrain.DPOTrainer",
    "diffusion": "hftrain.DiffusionTrainer",
}
# Qwen2.5-0.5B's shape (494M parameters with tied embeddings), random weights built from the config.
QWEN_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=4096,
)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Per-iteration wall times (on_step_begin to the next on_step_begin) and the training thread's CPU time over
    the same span (less sensitive to other jobs on a shared machine), and the synchronised time from the end of
    step `warmup` to the end of training, for the device figure."""

    def __init__(self, warmup: int):
        self.warmup, self.durations, self.cpu, self._start, self.window = warmup, [], [], None, None

    def on_step_begin(self, args, state, control, **kwargs):
        now, cpu = time.perf_counter(), time.thread_time()
        if self._start is not None and state.global_step > self.warmup:
            self.durations.append(now - self._start)
            self.cpu.append(cpu - self._cpu_start)
        self._start, self._cpu_start = now, cpu

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            _sync()
            self._window_start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        _sync()
        self.window = (time.perf_counter() - self._window_start) / max(1, state.global_step - self.warmup)


# -- the language-model pairs ------------------------------------------------------------------------------------
class LMSetup:
    """Model factory and data for the Trainer, SFT and DPO pairs (built once, shared by every run)."""

    def __init__(self, options):
        from hftrain.builtin import arithmetic_splits, build_tokenizer, preference_splits

        self.options, self.tokenizer = options, build_tokenizer()
        self.gpu = options.model == "qwen0.5b"
        if self.gpu:  # fixed-length synthetic text: every token is real work (the byte tokenizer: 1 char = 1 token)
            self.sft_rows = _random_text_rows(256, options.length)
            half = options.length // 2
            self.dpo_rows = _random_preference_rows(128, half, half)
        else:
            self.sft_rows, _ = arithmetic_splits(2000, 10, seed=0)
            self.dpo_rows, _ = preference_splits(2000, 10, seed=0)
        text = self.sft_rows if self.gpu else arithmetic_splits(2000, 10, seed=0, fmt="text")[0]
        tok = self.tokenizer
        self.lm_rows = text.map(
            lambda row: tok(row["text"], truncation=True, max_length=options.length), remove_columns=text.column_names
        )
        self._state = None

    def model(self):
        if not self.gpu:
            from hftrain.builtin import build_tiny_causal_lm

            return build_tiny_causal_lm(self.tokenizer, hidden_size=self.options.hidden)
        from transformers import Qwen2Config, Qwen2ForCausalLM

        tok = self.tokenizer
        config = Qwen2Config(
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **QWEN_05B
        )
        if self._state is None:
            torch.manual_seed(0)
            model = Qwen2ForCausalLM(config)
            self._state = {k: v.clone() for k, v in model.state_dict().items()}
            return model
        with torch.device("meta"):
            model = Qwen2ForCausalLM(config)
        model.load_state_dict(self._state, assign=True)  # same weights every run, without a second slow init
        model.tie_weights()
        return model


def _random_text_rows(rows: int, length: int):
    import random

    from datasets import Dataset

    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 +-=,."
    return Dataset.from_list([{"text": "".join(rng.choices(alphabet, k=length))} for _ in range(rows)])


def _random_preference_rows(rows: int, prompt: int, answer: int):
    import random

    from datasets import Dataset

    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 "

    def text(k):
        return "".join(rng.choices(alphabet, k=k))

    return Dataset.from_list(
        [{"prompt": text(prompt), "chosen": text(answer), "rejected": text(answer)} for _ in range(rows)]
    )


def lm_run(kind: str, side: str, workdir: str, options, setup: LMSetup, steps: int) -> StepTimer:
    import transformers
    import trl

    import hftrain

    common = dict(
        output_dir=os.path.join(workdir, f"{kind}-{side}"),
        max_steps=steps,
        per_device_train_batch_size=options.batch,
        learning_rate=1e-4 if setup.gpu else 1e-3,
        logging_steps=options.logging_steps,
        save_strategy="no",
        report_to="none",
        bf16=setup.gpu,
        disable_tqdm=True,
        seed=0,
    )
    if kind != "trainer":
        common.update(gradient_checkpointing=False, max_length=options.length)
    ours = side == "hftrain"
    extra = dict(tracker_db=os.path.join(workdir, "runs.db")) if ours else {}  # the tracker writes a real file
    timer = StepTimer(options.warmup)
    model = setup.model()
    if kind == "trainer":
        args_cls = hftrain.TrainingArguments if ours else transformers.TrainingArguments
        trainer_cls = hftrain.Trainer if ours else transformers.Trainer
        collator = transformers.DataCollatorForLanguageModeling(setup.tokenizer, mlm=False)
        trainer = trainer_cls(model, args_cls(**common, **extra), collator, setup.lm_rows, callbacks=[timer])
    elif kind == "sft":
        args_cls = hftrain.SFTConfig if ours else trl.SFTConfig
        trainer_cls = hftrain.SFTTrainer if ours else trl.SFTTrainer
        trainer = trainer_cls(
            model,
            args=args_cls(**common, **extra),
            train_dataset=setup.sft_rows,
            processing_class=setup.tokenizer,
            callbacks=[timer],
        )
    else:
        args_cls = hftrain.DPOConfig if ours else trl.DPOConfig
        trainer_cls = hftrain.DPOTrainer if ours else trl.DPOTrainer
        trainer = trainer_cls(
            model,
            copy.deepcopy(model),
            args=args_cls(**common, **extra),
            train_dataset=setup.dpo_rows,
            processing_class=setup.tokenizer,
            callbacks=[timer],
        )
    _quiet(trainer)
    trainer.train()
    return timer


def _quiet(trainer) -> None:
    """No per-log print on either side (disable_tqdm swaps the progress bar for a printer)."""
    from transformers.trainer_callback import PrinterCallback

    for callback in list(trainer.callback_handler.callbacks):
        if isinstance(callback, PrinterCallback):
            trainer.callback_handler.remove_callback(callback)


# -- the diffusion pair ------------------------------------------------------------------------------------------
class DiffusionSetup:
    """The recipe's default class-conditional digits UNet and data, decoded once for both sides."""

    def __init__(self, options):
        from hftrain.diffusion.builtin import digits_dataset
        from hftrain.diffusion.data import ImageDataset

        self.options = options
        self.rows = digits_dataset()
        self.images = ImageDataset(
            self.rows, image_column="image", resolution=16, channels=1, class_column="label", num_classes=10
        )

    def unet(self):
        from hftrain.diffusion.builtin import build_digits_unet

        return build_digits_unet(self.options.channels, 1, True, num_classes=10, seed=0)


def plain_diffusion_run(options, setup: DiffusionSetup, steps: int) -> StepTimer:
    """diffusers' train_unconditional.py loop, trimmed to what both sides do: fused AdamW (the default optimizer
    of both), linear LR schedule, clipping at 1.0, EMA, the loss read on the host every `logging_steps`."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from hftrain.diffusion.schedules import training_scheduler

    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    model = setup.unet()
    noise_scheduler = training_scheduler("cosine", "epsilon", 1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        setup.images, batch_size=options.image_batch, shuffle=True, generator=generator
    )
    lr_scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=steps)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    ema.to(accelerator.device)
    timer, step, loss_sum = StepTimer(options.warmup), 0, torch.zeros((), device=accelerator.device)
    while step < steps:
        for batch in loader:
            timer.on_step_begin(None, _Step(step), None)
            clean = batch["pixel_values"]
            noise = torch.randn(clean.shape, device=clean.device)
            timesteps = torch.randint(0, 1000, (clean.shape[0],), device=clean.device)
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            loss = F.mse_loss(model(noisy, timesteps, class_labels=batch["class_labels"]).sample.float(), noise)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())
            loss_sum += loss.detach()
            step += 1
            if step % options.logging_steps == 0:
                loss_sum.item()  # what the example's progress bar shows, at the same cadence as the other side
                loss_sum.zero_()
            timer.on_step_end(None, _Step(step), None)
            if step >= steps:
                break
    timer.on_train_end(None, _Step(step), None)
    return timer


class _Step:
    def __init__(self, step: int):
        self.global_step = step


def hftrain_diffusion_run(workdir: str, options, setup: DiffusionSetup, steps: int) -> StepTimer:
    from hftrain.diffusion import DiffusionConfig, DiffusionTrainer

    config = DiffusionConfig(
        output_dir=os.path.join(workdir, "diffusion-hftrain"),
        max_steps=steps,
        per_device_train_batch_size=options.image_batch,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        logging_steps=options.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        class_column="label",
        bf16=torch.cuda.is_available(),
        disable_tqdm=True,
        report_to="none",
        seed=0,
        tracker_db=os.path.join(workdir, "runs.db"),
    )
    timer = StepTimer(options.warmup)
    trainer = DiffusionTrainer(setup.unet(), config, setup.rows, callbacks=[timer])
    _quiet(trainer)
    trainer.train()
    return timer


# -- driver ------------------------------------------------------------------------------------------------------
def one_run(kind: str, side: str, workdir: str, options, setups: dict, steps: int) -> StepTimer:
    if kind == "diffusion":
        if side == "upstream":
            return plain_diffusion_run(options, setups[kind], steps)
        return hftrain_diffusion_run(workdir, options, setups[kind], steps)
    return lm_run(kind, side, workdir, options, setups["lm"], steps)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="pairs to measure")
    parser.add_argument("--runs", type=int, default=6, help="rounds; each round runs every pair once per side")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of each run")
    parser.add_argument("--logging_steps", type=int, default=5, help="logging cadence of both sides")
    parser.add_argument(
        "--model",
        choices=("auto", "tiny", "qwen0.5b"),
        default="auto",
        help="language model: tiny Llama (CPU default) or Qwen2.5-0.5B-shaped Qwen2 in bf16 (GPU default)",
    )
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny Llama")
    parser.add_argument("--batch", type=int, default=None, help="LM batch (default 16 tiny, 8 qwen0.5b)")
    parser.add_argument("--length", type=int, default=None, help="LM sequence length (default 32 tiny, 512 qwen)")
    parser.add_argument("--image_batch", type=int, default=32, help="diffusion batch")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="UNet block channels")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    options = parser.parse_args(argv)
    if options.model == "auto":
        options.model = "qwen0.5b" if torch.cuda.is_available() else "tiny"
    big = options.model == "qwen0.5b"
    options.batch = options.batch or (8 if big else 16)
    options.length = options.length or (512 if big else 32)
    if options.warmup >= options.steps:
        parser.error("--warmup must be smaller than --steps")
    return options


def main(argv=None) -> dict:
    from transformers.utils import logging

    options = parse_args(argv)
    logging.set_verbosity_error()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    setups = {}
    if set(options.kinds) - {"diffusion"}:
        setups["lm"] = LMSetup(options)
    if "diffusion" in options.kinds:
        setups["diffusion"] = DiffusionSetup(options)
    gpu = torch.cuda.is_available()
    # Per run: its step figure (median loop iteration on CPU, synchronised mean step on a GPU) and its median
    # training-thread CPU time per step. The two sides of a pair run back to back in each round.
    step = {(kind, side): [] for kind in options.kinds for side in ("upstream", "hftrain")}
    cpu = {key: [] for key in step}
    with tempfile.TemporaryDirectory() as workdir:
        for kind in options.kinds:  # warm caches, kernels and lazy imports once per pair
            for side in ("upstream", "hftrain"):
                one_run(kind, side, workdir, options, setups, options.warmup + 2)
        for index in range(options.runs):
            order = ("upstream", "hftrain") if index % 2 == 0 else ("hftrain", "upstream")
            for kind in options.kinds:
                for side in order:
                    timer = one_run(kind, side, workdir, options, setups, options.steps)
                    step[kind, side].append(timer.window if gpu else statistics.median(timer.durations))
                    cpu[kind, side].append(statistics.median(timer.cpu))
    lm = (
        f"Qwen2 ({QWEN_05B['hidden_size']} hidden, {QWEN_05B['num_hidden_layers']} layers, ~0.5B) bf16"
        if options.model == "qwen0.5b"
        else f"tiny Llama hidden={options.hidden} fp32"
    )
    print(
        f"device: {device}; LM: {lm}, batch {options.batch} x {options.length} tokens; diffusion: digits UNet "
        f"{options.channels}, batch {options.image_batch}; {options.runs} rounds x {options.steps - options.warmup} "
        f"timed steps per side; logging every {options.logging_steps} steps. Step: median over runs of "
        f"{'the synchronised mean step' if gpu else 'each run median loop iteration'}; ratio: median over rounds of "
        "hftrain / upstream in the same round (drift in machine load cancels)"
    )

    def paired(figures: dict, kind: str) -> float:
        return statistics.median(h / u for h, u in zip(figures[kind, "hftrain"], figures[kind, "upstream"]))

    ratios, figures = {}, {}
    for kind in options.kinds:
        upstream, ours = statistics.median(step[kind, "upstream"]), statistics.median(step[kind, "hftrain"])
        ratios[kind], cpu_ratio = paired(step, kind), paired(cpu, kind)
        figures[kind] = {"upstream_ms": upstream * 1e3, "hftrain_ms": ours * 1e3, "ratio": ratios[kind]}
        figures[kind]["cpu_ratio"] = cpu_ratio
        figures[kind]["round_ratios"] = [h / u for h, u in zip(step[kind, "hftrain"], step[kind, "upstream"])]
        if kind == "diffusion":
            figures[kind].update(
                upstream_images_per_s=options.image_batch / upstream, hftrain_images_per_s=options.image_batch / ours
            )
        print(
            f"{kind:9s} {UPSTREAM[kind]:22s} {upstream * 1e3:9.3f} ms | {OURS[kind]:24s} {ours * 1e3:9.3f} ms | "
            f"ratio {ratios[kind]:.3f} (training-thread CPU time: {cpu_ratio:.3f}; rounds: "
            + " ".join(f"{r:.2f}" for r in figures[kind]["round_ratios"])
            + ")"
        )
    print(f"hftrain defaults on: {describe_defaults()}")
    if "diffusion" in figures:
        d = figures["diffusion"]
        print(
            f"diffusion images/s: plain {d['upstream_images_per_s']:.1f}, hftrain {d['hftrain_images_per_s']:.1f} "
            f"(batch {options.image_batch})"
        )
    print("ratios hftrain/upstream: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()) + "  (target <= 1.02)")
    if options.json:
        import json

        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump({"device": device, "model": options.model, "figures": figures}, handle, indent=1)
    return ratios


def describe_defaults() -> str:
    import hftrain

    settings = hftrain.HFTrainArguments()
    names = ("tracker", "monitor", "monitor_nonfinite_action", "graceful_signals", "checkpoint_marker")
    return ", ".join(f"{name}={getattr(settings, name)!r}" for name in names if hasattr(settings, name))


if __name__ == "__main__":
    main()
