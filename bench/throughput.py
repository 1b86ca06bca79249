"""SFT throughput: hftrain's `SFTTrainer` against plain `trl.SFTTrainer`, same model, data and settings, same run.

The model is a Qwen2.5-0.5B-class Qwen2 built from its config (no download, random weights); the data is
synthetic text of fixed length. Prints tokens/s, MFU (6 x parameters x tokens/s over the device's peak) for each
and the ratio hftrain / TRL.

    python bench/throughput.py                       # GPU: 0.5B-class model, bf16, 30 measured steps
    python bench/throughput.py --tiny --steps 4      # CPU smoke check with a tiny model
    python bench/throughput.py --peak_tflops 989     # MFU against a given peak (default: H100/H200 bf16 dense)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def build_model(tiny: bool):
    """A Qwen2 causal LM with Qwen2.5-0.5B's shape (or a tiny one), random weights."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
        )
        if tiny
        else dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
        )
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=4096, tie_word_embeddings=True, **shape))


def dataset(rows: int, length: int, vocab: int):
    """Pre-tokenised rows of exactly `length` tokens (no padding, so every token counts)."""
    import random

    from datasets import Dataset

    rng = random.Random(0)
    return Dataset.from_list([{"input_ids": [rng.randrange(3, vocab) for _ in range(length)]} for _ in range(rows)])


def run(trainer_cls, config_cls, model, data, tokenizer, args, output_dir):
    """Tokens/s of `args.steps` measured steps after `args.warmup` warm-up steps."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

    clock = Clock()
    gpu = torch.cuda.is_available()
    config = config_cls(
        output_dir=output_dir,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-5,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        bf16=gpu,
        use_cpu=not gpu,
        gradient_checkpointing=args.checkpointing,
        max_length=args.length,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **({"tracker": False} if config_cls.__module__.startswith("hftrain") else {}),
    )
    trainer = trainer_cls(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - clock.start
    return args.steps * args.batch * args.length / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke check)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=None)
    args = parser.parse_args()
    if args.tiny:
        args.length = min(args.length, 64)
    import torch
    import trl

    from hftrain import SFTConfig, SFTTrainer
    from hftrain.builtin import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(args.tiny)
    params = sum(p.numel() for p in model.parameters())
    data = dataset(args.batch * (args.warmup + args.steps), args.length, min(model.config.vocab_size, len(tokenizer)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, trainer_cls, config_cls in (
            ("trl", trl.SFTTrainer, trl.SFTConfig),
            ("hftrain", SFTTrainer, SFTConfig),
        ):
            model.load_state_dict(state)  # same starting weights for both
            results[name] = run(trainer_cls, config_cls, model, data, tokenizer, args, os.path.join(tmp, name))
    print(
        f"device: {device}; model: Qwen2 {params / 1e6:.1f}M parameters; batch {args.batch} x {args.length} tokens; "
        f"{args.steps} measured steps after {args.warmup}"
    )
    for name, tps in results.items():
        mfu = f", MFU {6 * params * tps / (peak * 1e12):.1%} of {peak:.0f} TFLOPS" if peak else ""
        print(f"{name:8s} {tps:12,.0f} tokens/s{mfu}")
    print(f"ratio hftrain / trl: {results['hftrain'] / results['trl']:.3f}")


if __name__ == "__main__":
    main()
