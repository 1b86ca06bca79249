"""Step-time overhead of hftrain's SFTTrainer (defaults on) against trl.SFTTrainer, same model and data.

Runs alternate (trl, hftrain, hftrain, trl, ...) so drift in machine load hits both sides alike. Each run trains the
embedded tiny Llama for `--steps` optimizer steps; a timing callback (present in both) records the wall time of each
loop iteration (step begin to next step begin, so logging and the tracker are counted).
The first `--warmup` steps of every run are dropped. Prints the median step time of each side and the ratio.

    python bench/overhead.py                 # 6 runs per side x 60 steps
    python bench/overhead.py --runs 10 --steps 100 --hidden 128
Target: ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import trl  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.utils import logging  # noqa: E402

import hftrain  # noqa: E402
from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer  # noqa: E402


class StepTimer(TrainerCallback):
    """Wall time of each whole training-loop iteration, from one on_step_begin to the next: the step itself and
    everything after it (logging, so the tracker's share is inside the figure)."""

    def __init__(self):
        self.durations, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._start is not None:
            self.durations.append(now - self._start)
        self._start = now


def one_run(side: str, workdir: str, steps: int, hidden: int, dataset, tokenizer) -> list[float]:
    common = dict(
        output_dir=os.path.join(workdir, side),
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        max_length=32,
        disable_tqdm=True,
        seed=0,
    )
    if side == "trl":
        trainer_cls, args = trl.SFTTrainer, trl.SFTConfig(**common)
    else:  # hftrain's defaults on, the tracker writing to a real database file
        trainer_cls, args = (
            hftrain.SFTTrainer,
            hftrain.SFTConfig(tracker_db=os.path.join(workdir, "runs.db"), **common),
        )
    timer = StepTimer()
    trainer = trainer_cls(
        build_tiny_causal_lm(tokenizer, hidden_size=hidden),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    return timer.durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6, help="runs per side")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of each run")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny Llama")
    options = parser.parse_args()
    logging.set_verbosity_error()

    tokenizer = build_tokenizer()
    dataset, _ = arithmetic_splits(2000, 10, seed=0)
    samples = {"trl": [], "hftrain": []}
    with tempfile.TemporaryDirectory() as workdir:
        one_run("trl", workdir, 10, options.hidden, dataset, tokenizer)  # warm caches and lazy imports once
        for index in range(options.runs):
            order = ("trl", "hftrain") if index % 2 == 0 else ("hftrain", "trl")
            for side in order:
                samples[side] += one_run(side, workdir, options.steps, options.hidden, dataset, tokenizer)[
                    options.warmup :
                ]
    trl_median, hf_median = statistics.median(samples["trl"]), statistics.median(samples["hftrain"])
    print(
        f"model: tiny Llama hidden={options.hidden}, batch 16, max_length 32; "
        f"{options.runs} runs x {options.steps - options.warmup} timed steps per side"
    )
    print(f"trl.SFTTrainer     median step {trl_median * 1e3:8.3f} ms")
    print(f"hftrain.SFTTrainer median step {hf_median * 1e3:8.3f} ms  (defaults on: {describe_defaults()})")
    print(f"ratio hftrain/trl = {hf_median / trl_median:.4f}  (target <= 1.02)")


def describe_defaults() -> str:
    settings = hftrain.HFTrainArguments()
    names = ("tracker", "monitor", "monitor_nonfinite_action", "graceful_signals", "curriculum", "eval_metrics")
    return ", ".join(f"{name}={getattr(settings, name)!r}" for name in names if hasattr(settings, name))


if __name__ == "__main__":
    main()
