"""SFT (three layouts), Seq2Seq and DPO evaluation metrics: one process and two (`accelerate launch`, CPU, gloo)
give the same numbers and the same generations. One launch covers all five trainers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def _without_paths(results: dict) -> dict:
    return {
        name: {k: v for k, v in metrics.items() if not k.endswith("samples_file")} for name, metrics in results.items()
    }


def _samples(results: dict) -> dict:
    return {name: open(metrics["eval_samples_file"], encoding="utf-8").read() for name, metrics in results.items()}


def test_one_and_two_processes_give_identical_metrics(tmp_path, repo_root, python):
    sys.path.insert(0, str(repo_root / "tests" / "scripts"))
    try:
        from generation_eval_ddp import run_all
    finally:
        sys.path.pop(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun gives each process one thread; keep the same kernels here
    try:
        single = run_all(str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)

    # What each trainer reports, on one process
    for name in ("sft_prompt_completion", "sft_messages", "sft_text", "seq2seq"):
        assert {"eval_bleu", "eval_chrf", "eval_rougeL", "eval_exact_match", "eval_perplexity"} <= set(single[name])
        assert single[name]["eval_perplexity"] > 1 and single[name]["eval_nll_tokens"] > 0
    dpo = single["dpo"]
    assert {"eval_chrf", "eval_numeric_match"} <= set(dpo) and "eval_perplexity" not in dpo
    assert 0 <= dpo["eval_dpo_preference_accuracy"] <= 1 and dpo["eval_dpo_implied_kl"] != 0
    for name, text in _samples(single).items():
        rows = [json.loads(line) for line in text.splitlines()]
        assert len(rows) == 13 and [r["index"] for r in rows] == list(range(13)), name
    assert json.loads(_samples(single)["sft_text"].splitlines()[0])["prompt"].endswith("=")

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    launched = subprocess.run(
        [
            python,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(repo_root / "accelerate_configs/cpu_ddp.yaml"),
            str(repo_root / "tests/scripts/generation_eval_ddp.py"),
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=repo_root,
    )
    assert launched.returncode == 0, launched.stderr[-4000:]
    report = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert report["world_size"] == 2
    double = report["results"]
    assert _without_paths(double) == _without_paths(single)  # exact equality, every metric
    assert _samples(double) == _samples(single)  # the same generations, row by row


def test_perplexity_is_refused_for_dpo(tmp_path):
    import copy

    from hftrain import DPOConfig, DPOTrainer
    from hftrain.builtin import build_tiny_causal_lm, build_tokenizer, preference_splits
    from hftrain.errors import ConfigError

    tok = build_tokenizer()
    model = build_tiny_causal_lm(tok, hidden_size=32)
    train, evaluation = preference_splits(4, 4)
    args = DPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        tracker=False,
        eval_metrics=["perplexity"],
    )
    with pytest.raises(ConfigError, match="perplexity.*DPO"):
        DPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tok,
        )
