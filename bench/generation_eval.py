"""Generation evaluation: hftrain's batched evaluator against upstream's own path and a one-at-a-time loop.

Two parts, same model, prompts and metrics within each:

* causal (SFT, tiny Llama): hftrain's evaluator with `eval_generation_batch_size=B` (left-padded batches) vs the
  same evaluator with 1 (one prompt per `generate` call, the usual hand-written loop);
* seq2seq (tiny T5 spelling numbers, briefly trained so the answers mean something): `hftrain.Seq2SeqTrainer` with
  `eval_metrics` vs `transformers.Seq2SeqTrainer(predict_with_generate=True)` with a `compute_metrics` for the same
  metrics, both as a full `evaluate()` (eval loss + generation), and the one-at-a-time loop beside them.

Each line gives the median time over `--repeats`, the peak memory above the process's level before the block
(CUDA allocator peak on a GPU, resident set size sampled every 5 ms on CPU) and the metrics; they must agree
(a difference is printed).

    python bench/generation_eval.py                         # both parts
    python bench/generation_eval.py --parts seq2seq --rows 256 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

METRICS = ["chrf", "exact_match"]


class PeakMemory:
    """Peak memory of a block above the level at its start: the CUDA allocator on a GPU, else the process RSS."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        self._process, self._stop = psutil.Process(), threading.Event()
        self.base = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        self.added_mib = (self.peak - self.base) / 2**20
        return False


def timed(fn, repeats: int) -> tuple[float, float, dict]:
    """(median seconds, largest peak MiB above the start level, last result) of `repeats` calls after a warm-up."""
    fn()
    times, peaks, result = [], [], {}
    for _ in range(repeats):
        with PeakMemory() as memory:
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        peaks.append(memory.added_mib)
    return statistics.median(times), max(peaks), result


def _metrics(values: dict) -> dict:
    return {
        k.removeprefix("eval_"): round(float(v), 4) for k, v in values.items() if k.removeprefix("eval_") in METRICS
    }


def _compare(name_a: str, a: dict, name_b: str, b: dict) -> None:
    for key in sorted(set(a) & set(b)):
        if abs(a[key] - b[key]) > 1e-6:
            print(f"  note: {key} differs ({name_a} {a[key]} vs {name_b} {b[key]}): padding changes float rounding")


# -- causal LM ---------------------------------------------------------------------------------------------------
def causal(options) -> None:
    import torch

    from hftrain import SFTConfig, SFTTrainer
    from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer

    tok = build_tokenizer()
    train, evaluation = arithmetic_splits(16, options.rows)
    model = build_tiny_causal_lm(tok, hidden_size=options.hidden, seed=0)

    def evaluator_timing(batch_size: int):
        args = SFTConfig(
            output_dir=os.path.join(options.workdir, "causal"),
            bf16=False,
            report_to="none",
            tracker=False,
            eval_metrics=METRICS + ["numeric_match"],
            eval_generation_samples=0,
            eval_generation_batch_size=batch_size,
            eval_max_new_tokens=options.max_new_tokens,
            eval_log_samples=0,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=tok
        )
        evaluator = trainer._hftrain_evaluator
        return timed(lambda: evaluator.compute(trainer, evaluation, None, "eval"), options.repeats)

    batched_s, batched_mib, batched = evaluator_timing(options.batch)
    single_s, single_mib, single = evaluator_timing(1)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"causal: tiny Llama hidden={options.hidden} ({params:.2f}M params); {options.rows} prompts, "
        f"max_new_tokens={options.max_new_tokens}, torch threads={torch.get_num_threads()}"
    )
    print(f"  one at a time  : {single_s:8.2f} s  peak +{single_mib:7.1f} MiB  {single}")
    print(f"  batched ({options.batch:3d}) : {batched_s:8.2f} s  peak +{batched_mib:7.1f} MiB  {batched}")
    print(f"  speed-up batched / one-at-a-time: {single_s / batched_s:.1f}x")
    _compare("one-at-a-time", single, "batched", batched)


# -- seq2seq -----------------------------------------------------------------------------------------------------
def seq2seq(options) -> None:
    import numpy as np
    import torch
    import transformers
    from transformers import DataCollatorForSeq2Seq

    import hftrain
    from hftrain.builtin import build_tiny_seq2seq, build_tokenizer, number_spelling_splits
    from hftrain.metrics import MetricSuite

    tok = build_tokenizer()
    train_rows, eval_rows = number_spelling_splits(min(800, 900 - options.rows), options.rows, seed=0)

    def encode(batch):  # what recipes/seq2seq.py does: the byte tokenizer adds no EOS, so the targets get one
        encoded = tok(batch["source"])
        encoded["labels"] = tok(text_target=[t + tok.eos_token for t in batch["target"]])["input_ids"]
        encoded["source"], encoded["target"] = batch["source"], batch["target"]
        return encoded

    train = train_rows.map(encode, batched=True, remove_columns=train_rows.column_names)
    evaluation = eval_rows.map(encode, batched=True, remove_columns=eval_rows.column_names)
    model = build_tiny_seq2seq(tok, d_model=options.t5_d_model, seed=0)
    collator = DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100)
    gpu = torch.cuda.is_available()
    common = dict(
        per_device_eval_batch_size=options.batch,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not gpu,
        seed=0,
    )
    if options.train_steps:  # a few hundred steps: answers the metrics can tell apart
        warm = transformers.Seq2SeqTrainer(
            model=model,
            args=transformers.Seq2SeqTrainingArguments(
                output_dir=os.path.join(options.workdir, "s2s-train"),
                max_steps=options.train_steps,
                per_device_train_batch_size=32,
                learning_rate=3e-3,
                save_strategy="no",
                logging_steps=options.train_steps,
                **common,
            ),
            train_dataset=train.remove_columns(["source", "target"]),
            data_collator=collator,
        )
        _quiet(warm)
        warm.train()

    ours_args = hftrain.Seq2SeqTrainingArguments(
        output_dir=os.path.join(options.workdir, "s2s-hftrain"),
        tracker=False,
        eval_metrics=METRICS,
        eval_generation_samples=0,
        eval_generation_batch_size=options.batch,
        eval_max_new_tokens=options.seq2seq_max_new_tokens,
        eval_log_samples=0,
        **common,
    )
    ours = hftrain.Seq2SeqTrainer(
        model=model, args=ours_args, eval_dataset=evaluation, processing_class=tok, data_collator=collator
    )
    _quiet(ours)

    def compute_metrics(prediction):  # the usual user code: decode, strip, score with the same metric definitions
        predictions = np.where(prediction.predictions != -100, prediction.predictions, tok.pad_token_id)
        labels = np.where(prediction.label_ids != -100, prediction.label_ids, tok.pad_token_id)
        texts = [t.strip() for t in tok.batch_decode(predictions, skip_special_tokens=True)]
        references = [t.strip() for t in tok.batch_decode(labels, skip_special_tokens=True)]
        suite = MetricSuite(METRICS, ours_args)
        suite.update(texts, references, [""] * len(texts))
        return suite.compute([suite.states()])

    upstream = transformers.Seq2SeqTrainer(
        model=model,
        args=transformers.Seq2SeqTrainingArguments(
            output_dir=os.path.join(options.workdir, "s2s-upstream"),
            predict_with_generate=True,
            generation_max_length=None,
            **common,
        ),
        eval_dataset=evaluation,
        processing_class=tok,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    _quiet(upstream)
    generation = dict(max_new_tokens=options.seq2seq_max_new_tokens, num_beams=1, do_sample=False)

    ours_s, ours_mib, ours_values = timed(ours.evaluate, options.repeats)
    up_s, up_mib, up_values = timed(lambda: upstream.evaluate(**generation), options.repeats)
    single_args = hftrain.Seq2SeqTrainingArguments(
        output_dir=os.path.join(options.workdir, "s2s-single"),
        tracker=False,
        eval_metrics=METRICS,
        eval_generation_samples=0,
        eval_generation_batch_size=1,
        eval_max_new_tokens=options.seq2seq_max_new_tokens,
        eval_log_samples=0,
        **common,
    )
    single = hftrain.Seq2SeqTrainer(model=model, args=single_args, eval_dataset=evaluation, processing_class=tok)
    evaluator = single._hftrain_evaluator
    single_s, single_mib, single_values = timed(
        lambda: evaluator.compute(single, evaluation, None, "eval"), options.repeats
    )
    ours_m, up_m, single_m = _metrics(ours_values), _metrics(up_values), _metrics(single_values)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"seq2seq: tiny T5 d_model={options.t5_d_model} ({params:.2f}M params, {options.train_steps} training steps); "
        f"{options.rows} eval rows, batch {options.batch}, max_new_tokens={options.seq2seq_max_new_tokens}, "
        f"{'cuda' if gpu else f'cpu, {torch.get_num_threads()} threads'}"
    )
    for label, seconds, mib, values in (
        ("hftrain Seq2SeqTrainer.evaluate()", ours_s, ours_mib, ours_m),
        ("transformers Seq2SeqTrainer(predict_with_generate).evaluate()", up_s, up_mib, up_m),
        ("one prompt at a time (generation metrics only)", single_s, single_mib, single_m),
    ):
        print(f"  {label:62s}: {seconds:7.2f} s  peak +{mib:7.1f} MiB  {values}")
    print(
        f"  hftrain vs predict_with_generate: time ratio {ours_s / up_s:.2f} (hftrain / upstream), peak memory "
        f"{ours_mib:.1f} vs {up_mib:.1f} MiB; vs one at a time: {single_s / ours_s:.1f}x faster"
    )
    _compare("hftrain", ours_m, "predict_with_generate", up_m)
    _compare("hftrain", ours_m, "one-at-a-time", single_m)


def _quiet(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("causal", "seq2seq"), default=["causal", "seq2seq"])
    parser.add_argument("--rows", type=int, default=128, help="eval prompts")
    parser.add_argument("--batch", type=int, default=16, help="generation batch")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="causal part")
    parser.add_argument("--seq2seq-max-new-tokens", type=int, default=32, help="seq2seq part (longest answer: 28)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64, help="tiny Llama hidden size (causal part)")
    parser.add_argument("--t5-d-model", type=int, default=64, help="tiny T5 width (seq2seq part)")
    parser.add_argument("--train-steps", type=int, default=300, help="seq2seq training steps before measuring")
    options = parser.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as workdir:
        options.workdir = workdir
        if "causal" in options.parts:
            causal(options)
        if "seq2seq" in options.parts:
            seq2seq(options)


if __name__ == "__main__":
    main()
