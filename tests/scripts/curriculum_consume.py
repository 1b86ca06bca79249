"""Train a tiny causal LM with a curriculum and record which rows each optimizer step consumed, per process.

Used by tests/test_curriculum_exact.py, in-process (one process) and under `accelerate launch` (two processes):

    python tests/scripts/curriculum_consume.py --out DIR [--kill_at K] [--resume] [--batch 8]

Each process appends `{"step": s, "rows": [...]}` to `DIR/consumed-rank{R}.jsonl` at every training step.
`--kill_at K` checkpoints at step K and then ends the process hard (`os._exit`), like a crash; `--resume` continues
from the newest checkpoint in DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hftrain.recipe_utils import end_distributed

ROWS, EPOCHS = 64, 2


class Killed(RuntimeError):
    """Raised instead of `os._exit` when the run is in-process (pytest must survive the 'crash')."""


def main(argv=None, hard_exit: bool = True) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill_at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch")
    opts = parser.parse_args(argv)

    import torch
    from transformers import DataCollatorForLanguageModeling, TrainerCallback

    from hftrain import Trainer, TrainingArguments
    from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer

    tokenizer = build_tokenizer()
    train, _ = arithmetic_splits(ROWS, 8, seed=3, fmt="text")
    train = train.map(lambda row: tokenizer(row["text"] + tokenizer.eos_token), remove_columns=["text"])
    row_of = {tuple(ids): i for i, ids in enumerate(train["input_ids"])}
    assert len(row_of) == ROWS, "rows must be distinguishable by their tokens"

    args = TrainingArguments(
        output_dir=opts.out,
        per_device_train_batch_size=opts.batch,
        num_train_epochs=EPOCHS,
        learning_rate=1e-3,
        logging_steps=4,
        save_strategy="steps",
        save_steps=opts.kill_at or 10_000,
        report_to="none",
        seed=11,
        disable_tqdm=True,
        dataloader_num_workers=0,
        tracker=False,  # other features stay out of the way of what is measured here
        monitor=False,
        curriculum="column",
        curriculum_pacing="linear",
        curriculum_start=0.25,
        curriculum_full_at=0.75,
    )

    class RecordingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            rows = [
                row_of[tuple(ids[mask.bool()].tolist())]
                for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])
            ]
            with open(record, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": self.state.global_step + 1, "rows": rows}) + "\n")
            return super().training_step(model, inputs, num_items_in_batch)

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if opts.kill_at and not opts.resume and state.global_step == opts.kill_at:
                if torch.distributed.is_initialized():
                    torch.distributed.barrier()  # every rank's checkpoint files are written
                if hard_exit:
                    os._exit(3)
                raise Killed(f"killed after checkpoint {state.global_step}")

    trainer = RecordingTrainer(
        model=build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0),
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=[KillAfterCheckpoint()],
    )
    # The trainer's resolved arguments know the process layout (use_cpu under a GPU-less two-process launch).
    rank = trainer.args.process_index
    record = os.path.join(opts.out, f"consumed-rank{rank}.jsonl")
    trainer.train(resume_from_checkpoint=True if opts.resume else None)
    if rank == 0:
        with open(os.path.join(opts.out, "log_history.json"), "w", encoding="utf-8") as handle:
            json.dump(trainer.state.log_history, handle)


if __name__ == "__main__":
    code = main()
    end_distributed()  # no process exits with a live gloo group (it can abort at shutdown)
    sys.exit(code)
