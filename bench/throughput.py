"""SFT throughput: hftrain's `SFTTrainer` against plain `trl.SFTTrainer`, and each `optimization_level` against none.

The model is a Qwen2 with Qwen2.5-0.5B's shape built from its config (no download, random weights, built on the
device); the data are pre-tokenised rows of exactly `--length` tokens, so every token counts. For each run it prints
tokens/s over the measured steps (between two `cuda.synchronize()`), MFU, peak memory and, for the hftrain/TRL pair,
host reads per step (device-to-host syncs, counted at the dispatcher on steps after the measured ones).

MFU = model FLOPs per token x tokens/s / peak: 6 x (matmul parameters: all but the input embedding lookup, the
tied LM head counted) + 12 x layers x hidden x sequence (attention scores and values), forward and backward, as in
PaLM's appendix B; activation-checkpointing recomputation is not counted (that would be hardware FLOPs). The peak
is the datasheet's dense bf16 figure for the device (H100/H200: 989 TFLOPS) or `--peak_tflops`.

    python bench/throughput.py                                   # GPU: 0.5B, bf16, hftrain vs TRL, 30 measured steps
    python bench/throughput.py --levels none light standard aggressive extreme --level_steps 20
    python bench/throughput.py --tiny --steps 4 --warmup 2       # CPU smoke check with a tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
LEVELS = ("none", "light", "standard", "aggressive", "extreme")
QWEN_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def model_config(tiny: bool, tokenizer):
    """Qwen2.5-0.5B's shape (or a tiny one) with the byte tokenizer's special tokens."""
    from transformers import Qwen2Config

    shape = dict(TINY, vocab_size=264) if tiny else QWEN_05B
    return Qwen2Config(
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )


def build_model(config, device: str):
    """Random weights, built on `device` (initialising 0.5B parameters on the CPU takes longer than training)."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(config)


def flops_per_token(config, sequence: int) -> float:
    """Training FLOPs per token (see the module docstring)."""
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = hidden // heads
    attention = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2  # q, o; k, v
    mlp = 3 * hidden * config.intermediate_size
    matmul = layers * (attention + mlp) + vocab * hidden  # + the LM head
    return 6 * matmul + 12 * layers * hidden * sequence


def dataset(rows: int, length: int, vocab: int):
    """Pre-tokenised rows of exactly `length` tokens (no padding)."""
    import random

    from datasets import Dataset

    rng = random.Random(0)
    return Dataset.from_list([{"input_ids": [rng.randrange(5, vocab) for _ in range(length)]} for _ in range(rows)])


class HostReads:
    """Counts device-to-host reads from step begin to step end on steps after `after` (as tests/test_host_reads.py
    does: `.item()`/`bool()`/`equal` at the dispatcher, plus `tolist()`/`numpy()`)."""

    def __init__(self, after: int):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        reads = {
            torch.ops.aten._local_scalar_dense.default,
            torch.ops.aten.is_nonzero.default,
            torch.ops.aten.equal.default,
        }
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func in reads:
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.after, self.per_step, self.count, self._mode_cls, self._mode = after, [], 0, Mode, None

    def begin(self, step: int) -> None:
        import torch

        if step < self.after:
            return
        self.count, self._mode = 0, self._mode_cls()
        self._originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, self._counting(original))
        self._mode.__enter__()

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)

        return read

    def end(self) -> None:
        import torch

        if self._mode is None:
            return
        self._mode.__exit__(None, None, None)
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self.per_step.append(self.count)
        self._mode = None


def run(side: str, level: Optional[str], config, data, tokenizer, options, output_dir: str, steps: int) -> dict:
    """One training run; tokens/s over `steps` measured steps after `options.warmup`. `level` None: the hftrain/TRL
    pair (same precision and checkpointing set on both sides); else hftrain at that optimization level ("none": its
    defaults, no preset)."""
    import torch
    import trl
    from transformers import TrainerCallback

    import hftrain

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    count_reads = level is None and options.host_reads > 0
    reads = HostReads(after=options.warmup + steps + 1)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if count_reads:
                reads.begin(state.global_step + 1)

        def on_step_end(self, args, state, control, **kw):
            if count_reads:
                reads.end()
            if state.global_step in (options.warmup, options.warmup + steps):
                if gpu:
                    torch.cuda.synchronize()
                self.marks[state.global_step] = time.perf_counter()

    clock = Clock()
    clock.marks = {}
    common = dict(
        output_dir=output_dir,
        max_steps=options.warmup + steps + (options.host_reads if count_reads else 0),
        per_device_train_batch_size=options.batch,
        learning_rate=1e-5,
        logging_steps=10_000,  # no logging step among the measured or counted ones
        save_strategy="no",
        report_to="none",
        max_length=options.length,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not gpu,
        seed=0,
    )
    if level is None:  # the pair: same precision and checkpointing on both sides
        common.update(bf16=gpu, gradient_checkpointing=options.checkpointing)
    if side == "trl":
        args = trl.SFTConfig(**common)
        trainer_cls = trl.SFTTrainer
    else:
        extra = {} if level in (None, "none") else {"optimization_level": level}
        args = hftrain.SFTConfig(tracker_db=os.path.join(output_dir, "runs.db"), **common, **extra)
        trainer_cls = hftrain.SFTTrainer
    model = build_model(config, device)  # fresh each run, same seed: Liger and compile change a model in place
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[clock])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # disable_tqdm prints every log otherwise
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = clock.marks[options.warmup + steps] - clock.marks[options.warmup]
    result = {
        "side": side,
        "level": level or "pair",
        "tokens_per_s": steps * options.batch * options.length / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "preset": list(getattr(trainer.args, "hftrain_preset_report", []) or []),
    }
    if count_reads:
        result["host_reads_per_step"] = reads.per_step
    del trainer, model
    if gpu:
        torch.cuda.empty_cache()
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke check)")
    parser.add_argument("--steps", type=int, default=30, help="measured steps of the hftrain/TRL pair")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the pair")
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side of the pair, alternating; median")
    parser.add_argument("--host_reads", type=int, default=4, help="steps counted for host reads (0: none)")
    parser.add_argument(
        "--levels", nargs="*", choices=LEVELS, default=[], help="also run hftrain with these optimization levels"
    )
    parser.add_argument("--level_steps", type=int, default=20, help="measured steps per level run")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    options = parser.parse_args(argv)
    if options.tiny:
        options.length = min(options.length, 64)
    return options


def main(argv=None) -> dict:
    options = parse_args(argv)
    import torch
    from transformers.utils import logging

    from hftrain.builtin import build_tokenizer

    logging.set_verbosity_error()
    tokenizer = build_tokenizer()
    config = model_config(options.tiny, tokenizer)
    gpu = torch.cuda.is_available()
    model = build_model(config, "cuda" if gpu else "cpu")
    params = sum(p.numel() for p in model.parameters())
    del model
    rows = options.batch * (options.warmup + max(options.steps, options.level_steps) + options.host_reads + 2)
    data = dataset(rows, options.length, len(tokenizer))
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    peak = options.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    per_token = flops_per_token(config, options.length)

    def mfu(tps):
        return per_token * tps / (peak * 1e12) if peak else None

    results, pair = [], {"trl": [], "hftrain": []}
    with tempfile.TemporaryDirectory() as tmp:
        warm = argparse.Namespace(**{**vars(options), "warmup": 1, "host_reads": 0})
        run("trl", None, config, data, tokenizer, warm, os.path.join(tmp, "warm"), 1)  # CUDA, cuBLAS, allocator
        for index in range(options.repeats):
            for side in ("trl", "hftrain") if index % 2 == 0 else ("hftrain", "trl"):
                out = os.path.join(tmp, f"{side}-{index}")
                pair[side].append(run(side, None, config, data, tokenizer, options, out, options.steps))
        for side in ("trl", "hftrain"):  # the median run of each side
            runs = sorted(pair[side], key=lambda r: r["tokens_per_s"])
            results.append(runs[len(runs) // 2])
        for level in options.levels:
            out = os.path.join(tmp, f"level-{level}")
            try:
                results.append(run("hftrain", level, config, data, tokenizer, options, out, options.level_steps))
            except Exception as exc:  # one level failing (a kernel, compile) must not lose the others' figures
                import traceback

                traceback.print_exc()
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                results.append({"side": "hftrain", "level": level, "error": error, "tokens_per_s": None})
                if gpu:
                    torch.cuda.empty_cache()
    for r in results:
        r["mfu"] = mfu(r["tokens_per_s"]) if r["tokens_per_s"] else None
    trl_r, ours = results[0], results[1]
    summary = {
        "device": device,
        "params": params,
        "flops_per_token": per_token,
        "batch": options.batch,
        "length": options.length,
        "steps": options.steps,
        "peak_tflops": peak,
        "runs": results,
        "ratio": ours["tokens_per_s"] / trl_r["tokens_per_s"],
    }
    print(
        f"device: {device}; model: Qwen2 {params / 1e6:.1f}M parameters ({per_token / 1e9:.2f} GFLOPs per token); "
        f"batch {options.batch} x {options.length} tokens; {options.steps} measured steps after {options.warmup}; "
        f"MFU against {peak or 'no known'} TFLOPS"
    )
    for r in results:
        name = r["side"] if r["level"] == "pair" else f"level {r['level']}"
        if r.get("error"):
            print(f"{name:20s} failed: {r['error']}")
            continue
        print(
            f"{name:20s} {r['tokens_per_s']:12,.0f} tokens/s"
            + (f"  MFU {r['mfu']:6.1%}" if r["mfu"] is not None else "")
            + (f"  peak {r['peak_gib']:6.2f} GiB" if r["peak_gib"] is not None else "")
            + (f"  host reads/step {r['host_reads_per_step']}" if "host_reads_per_step" in r else "")
        )
    print(f"ratio hftrain / trl: {summary['ratio']:.3f}")
    base = next((r for r in results[2:] if r["level"] == "none"), None)
    for r in results[2:]:
        if base is None or r is base or r.get("error") or base.get("error"):
            continue
        memory = f", peak memory {r['peak_gib'] / base['peak_gib']:.2f}x" if r["peak_gib"] and base["peak_gib"] else ""
        print(f"level {r['level']:10s} vs no preset: tokens/s {r['tokens_per_s'] / base['tokens_per_s']:.2f}x{memory}")
        for line in r["preset"]:
            print(f"    {line}")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
    return summary


if __name__ == "__main__":
    main()
