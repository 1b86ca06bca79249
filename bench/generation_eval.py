"""Batched generation evaluation vs one example at a time: same model, same prompts, same metrics.

    python bench/generation_eval.py [--rows 128] [--batch 16] [--max-new-tokens 16] [--repeats 3]

Both runs go through hftrain's evaluator (`eval_metrics`), once with `eval_generation_batch_size=B` (left-padded
batches) and once with 1 (one prompt per `generate` call, the usual hand-written loop). The metrics must agree
(exact match of the generations is checked), and the printed ratio is the speed-up of batching.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    options = parser.parse_args()

    import torch
    from transformers.utils import logging

    from hftrain import SFTConfig, SFTTrainer
    from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer

    logging.set_verbosity_error()
    tok = build_tokenizer()
    train, evaluation = arithmetic_splits(16, options.rows)
    model = build_tiny_causal_lm(tok, hidden_size=options.hidden, seed=0)

    def timed(batch_size: int) -> tuple[float, dict]:
        args = SFTConfig(
            output_dir="/tmp/hftrain_bench_generation",
            use_cpu=True,
            bf16=False,
            report_to="none",
            tracker=False,
            eval_metrics=["chrf", "rougeL", "exact_match", "numeric_match"],
            eval_generation_samples=0,
            eval_generation_batch_size=batch_size,
            eval_max_new_tokens=options.max_new_tokens,
            eval_log_samples=0,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=tok
        )
        evaluator = trainer._hftrain_evaluator
        evaluator.compute(trainer, evaluation.select(range(options.batch)), None, "eval")  # warm-up
        times, values = [], {}
        for _ in range(options.repeats):
            start = time.perf_counter()
            values = evaluator.compute(trainer, evaluation, None, "eval")
            times.append(time.perf_counter() - start)
        return statistics.median(times), values

    batched_s, batched = timed(options.batch)
    single_s, single = timed(1)
    print(
        f"model: tiny Llama hidden={options.hidden}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params; "
        f"rows={options.rows}, max_new_tokens={options.max_new_tokens}, torch threads={torch.get_num_threads()}"
    )
    print(f"one at a time : {single_s:8.2f} s  ({options.rows / single_s:7.1f} prompts/s)  {single}")
    print(f"batched ({options.batch:3d}) : {batched_s:8.2f} s  ({options.rows / batched_s:7.1f} prompts/s)  {batched}")
    print(f"speed-up batched / one-at-a-time: {single_s / batched_s:.1f}x")
    for key in single:
        if abs(single[key] - batched[key]) > 1e-6:
            print(f"note: {key} differs ({single[key]} vs {batched[key]}): left padding changes float rounding")


if __name__ == "__main__":
    main()
