"""A tiny causal-LM training run with hftrain's Trainer, for the tracker tests (single process or accelerate).

python tests/scripts/tracker_train.py OUTPUT_DIR [--max_steps N] [--save_steps N] [--sleep S] [--fail_at N]
    [--resume] [--heartbeat_timeout S] [--term_at N] [--hang_at N]
"""

import argparse
import os
import signal
import time

from transformers import DataCollatorForLanguageModeling, TrainerCallback

from hftrain import Trainer, TrainingArguments
from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer
from hftrain.recipe_utils import end_distributed


class _Pace(TrainerCallback):
    """Slows steps down (so a test can kill the process mid-run), raises, sends SIGTERM or hangs at a chosen step."""

    def __init__(self, sleep: float, fail_at: int, term_at: int, hang_at: int):
        self.sleep, self.fail_at, self.term_at, self.hang_at = sleep, fail_at, term_at, hang_at

    def on_step_end(self, args, state, control, **kwargs):
        if self.fail_at and state.global_step >= self.fail_at:
            raise RuntimeError(f"planned failure at step {state.global_step}")
        if self.term_at and state.global_step == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.hang_at and state.global_step == self.hang_at:
            time.sleep(600)  # wait here to be killed
        time.sleep(self.sleep)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail_at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--heartbeat_timeout", type=float, default=300.0)
    parser.add_argument("--run_name", default="tiny-lm")
    parser.add_argument("--term_at", type=int, default=0)
    parser.add_argument("--hang_at", type=int, default=0)
    opts = parser.parse_args()

    tokenizer = build_tokenizer()
    model = build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    train, test = arithmetic_splits(train_size=64, eval_size=16, seed=0, fmt="text")

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=32)

    train = train.map(tokenize, batched=True, remove_columns=train.column_names)
    test = test.map(tokenize, batched=True, remove_columns=test.column_names)
    args = TrainingArguments(
        output_dir=opts.output_dir,
        run_name=opts.run_name,
        max_steps=opts.max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=max(1, opts.max_steps // 2),
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
        report_to="none",
        seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        tracker_system_interval=0.2,
        tracker_heartbeat_timeout=opts.heartbeat_timeout,
        tracker_tags="suite=tracker",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=test,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[_Pace(opts.sleep, opts.fail_at, opts.term_at, opts.hang_at)],
    )
    trainer.train(resume_from_checkpoint=True if opts.resume else None)


if __name__ == "__main__":
    main()
    end_distributed()  # no process exits with a live gloo group (it can abort at shutdown)
