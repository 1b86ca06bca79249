"""Does curriculum help? Steps to a held-out exact-match target on the bundled arithmetic task.

Trains the embedded tiny Llama with `hftrain.Trainer`, once with random order (the plain upstream path:
curriculum off) and once per curriculum setting, for each seed; every `--eval_every` steps it greedy-generates
the answers of the held-out questions (batched, left padding) and stops when exact match reaches `--target`.
Prints the steps each run needed and the ratio curriculum / random (mean over seeds, same run, same machine).

    python bench/curriculum.py                                  # defaults below, 3 seeds
    python bench/curriculum.py --pacing linear --start 0.1 --full_at 0.3 --seeds 0 1 2

A run that never reaches the target counts as `--max_steps` (reported with a `>`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def build_data(tokenizer, train_size, eval_size):
    """Tokenized train rows (loss on the answer only) and raw held-out prompt/answer pairs."""
    from hftrain.builtin import arithmetic_splits

    train, held_out = arithmetic_splits(train_size, eval_size, seed=0)

    def tokenize(row):
        prompt = tokenizer(row["prompt"])["input_ids"]
        answer = tokenizer(row["completion"] + tokenizer.eos_token)["input_ids"]
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}

    train = train.map(tokenize, remove_columns=["prompt", "completion"])
    return train, list(held_out["prompt"]), list(held_out["completion"])


def collate(tokenizer):
    import torch

    def fn(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [tokenizer.pad_token_id] * (width - len(r["input_ids"])) for r in rows]
        labels = [r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    return fn


def run(opts, seed, curriculum):
    """Steps to reach the target (or None), plus the wall time of the run."""
    from transformers import TrainerCallback

    from hftrain import Trainer, TrainingArguments
    from hftrain.builtin import build_tiny_causal_lm, build_tokenizer
    from hftrain.recipe_utils import greedy_exact_match

    tokenizer = build_tokenizer()
    train, prompts, answers = build_data(tokenizer, opts.train_size, opts.eval_size)
    model = build_tiny_causal_lm(
        tokenizer, hidden_size=opts.hidden, num_layers=opts.layers, num_heads=max(1, opts.hidden // 32), seed=seed
    )
    reached = {}

    class StopAtTarget(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % opts.eval_every == 0:
                score = greedy_exact_match(
                    kwargs["model"], tokenizer, prompts, answers, batch_size=100, max_new_tokens=5
                )
                if opts.verbose:
                    print(f"  step {state.global_step}: exact match {score:.3f}", flush=True)
                if score >= opts.target:
                    reached["step"] = state.global_step
                    control.should_training_stop = True

    extra = {}
    if curriculum:
        extra = dict(
            curriculum=opts.scorer,
            curriculum_pacing=opts.pacing,
            curriculum_start=opts.start,
            curriculum_full_at=opts.full_at,
        )
    args = TrainingArguments(
        output_dir=os.path.join(opts.workdir, f"{'cur' if curriculum else 'rand'}-{seed}"),
        max_steps=opts.max_steps,
        per_device_train_batch_size=opts.batch,
        learning_rate=opts.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=opts.warmup,
        weight_decay=0.0,
        save_strategy="no",
        report_to="none",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=seed,
        use_cpu=True,
        tracker=False,
        monitor=False,  # measure the data order only
        **extra,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collate(tokenizer),
        processing_class=tokenizer,
        callbacks=[StopAtTarget()],
    )
    start = time.perf_counter()
    trainer.train()
    return reached.get("step"), time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.5, help="held-out exact match to reach")
    parser.add_argument("--max_steps", type=int, default=1200)
    parser.add_argument("--eval_every", type=int, default=25)
    parser.add_argument("--train_size", type=int, default=4000)
    parser.add_argument("--eval_size", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (the SFT recipe's default model)")
    parser.add_argument("--layers", type=int, default=3, help="layers (the SFT recipe's default model)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--scorer", default="column")
    parser.add_argument("--pacing", default="root")
    parser.add_argument("--start", type=float, default=0.2)
    parser.add_argument("--full_at", type=float, default=0.5)
    parser.add_argument("--workdir", default="/tmp/hftrain-bench-curriculum")
    parser.add_argument("--verbose", action="store_true", help="print every exact-match check")
    parser.add_argument("--only", choices=["random", "curriculum"], default=None)
    opts = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from transformers.utils import logging

    logging.set_verbosity_error()
    print(
        f"task: arithmetic, {opts.train_size} train rows, {opts.eval_size} held out; tiny Llama (hidden {opts.hidden}, "
        f"{opts.layers} layers); batch {opts.batch}, lr {opts.lr} constant after {opts.warmup} warmup; target exact match "
        f"{opts.target}, checked every {opts.eval_every} steps, cap {opts.max_steps} steps"
    )
    print(
        f"curriculum: scorer={opts.scorer} pacing={opts.pacing} start={opts.start} full_at={opts.full_at} "
        f"(of {opts.max_steps} steps)"
    )
    results = {"random": [], "curriculum": []}
    for seed in opts.seeds:
        for arm in ("random", "curriculum"):
            if opts.only and arm != opts.only:
                continue
            step, secs = run(opts, seed, arm == "curriculum")
            results[arm].append(step if step is not None else opts.max_steps)
            shown = step if step is not None else f">{opts.max_steps}"
            print(f"seed {seed} {arm:<10} steps to target: {shown:>6}  ({secs:.0f} s)", flush=True)
    if opts.only:
        return 0
    rand, cur = statistics.mean(results["random"]), statistics.mean(results["curriculum"])
    print(f"mean steps: random {rand:.0f}, curriculum {cur:.0f}; ratio curriculum/random = {cur / rand:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
