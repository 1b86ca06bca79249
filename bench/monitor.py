"""The monitor's cost per step: the same training with the monitor on and off, interleaved, in one process.

    python bench/monitor.py [--steps 200] [--repeats 3] [--hidden 64]

Prints the median seconds per step of each and their ratio (target: under 1% extra). Both runs use hftrain's
Trainer with identical arguments except `monitor`; the resilience callback (checkpoint marker, signal handlers) is
present in both, and no checkpoints are saved, so only the monitor's per-step work is measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "scripts"))

from transformers import TrainerCallback  # noqa: E402


class StepTimer(TrainerCallback):
    """Wall time of the steps after a warm-up, so start-up costs stay out of the figure."""

    def __init__(self, warmup: int = 10):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        elif state.global_step > self.warmup:
            self.steps += 1

    def on_train_end(self, args, state, control, **kw):
        self.per_step = (time.perf_counter() - self.start) / self.steps


def run(monitor: bool, steps: int, hidden: int, tmp: str) -> float:
    from monitor_common import TOKENIZER, make_args, token_rows

    from hftrain.builtin import build_tiny_causal_lm
    from hftrain.trainers import Trainer

    timer = StepTimer()
    model = build_tiny_causal_lm(TOKENIZER, hidden_size=hidden, num_layers=2)
    args = make_args(
        os.path.join(tmp, str(monitor)),
        max_steps=steps + timer.warmup,
        logging_steps=10,
        monitor=monitor,
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        tracker=False,
    )
    Trainer(model=model, args=args, train_dataset=token_rows(256), callbacks=[timer]).train()
    return timer.per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    opts = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    on, off = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(opts.repeats):  # interleaved, so drifting machine load hits both alike
            off.append(run(False, opts.steps, opts.hidden, tmp))
            on.append(run(True, opts.steps, opts.hidden, tmp))
    t_off, t_on = statistics.median(off), statistics.median(on)
    print(
        f"sizes: 2-layer Llama, hidden {opts.hidden}, batch 8 x 12 tokens, {opts.steps} timed steps, "
        f"{opts.repeats} repeats (median)"
    )
    print(f"monitor off: {t_off * 1e3:.3f} ms/step   monitor on: {t_on * 1e3:.3f} ms/step")
    print(f"ratio on/off: {t_on / t_off:.4f}  ({(t_on / t_off - 1) * 100:+.2f}% per step)")


if __name__ == "__main__":
    main()
