"""Does GRPO improve the task? Held-out exact match before and after `recipes/grpo.py`, with its wall time.

1. A start model at about 50% held-out exact match: the recipe's own warm-up (the first `--warmup_steps` steps of the
   SFT recipe's default run: 400 reach about 50%), saved once to `<workdir>/start/sft-warmup` (or `--start DIR`).
2. `python recipes/grpo.py --sft_output_dir <start>` as a real process, per seed, timed from launch to exit (the GRPO
   wall time; the warm-up is not in it). The recipe's default config is used; `--` passes more flags to it.
3. From the run's `trainer_state.json`: held-out exact match (greedy, 200 unseen questions) at every evaluation, the
   mean of the last three evaluations (the target is judged on it, not on the best one), the lowest one after the
   start (collapse), the training reward, and whether the reward-hacking check fired.

    python bench/grpo.py                                  # warm-up + 1 seed of the default recipe
    python bench/grpo.py --seeds 0 1 2 --start outputs/grpo-bench/start
    python bench/grpo.py -- --learning_rate 2e-4 --max_steps 600

Target (the issue's): from ~50%, the mean of the last three evaluations >= 65% within 10 minutes of GRPO wall time,
no collapse; 75% is the stretch goal. Timings depend on the machine's load: the script prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "grpo.py")


def build_start(opts) -> tuple[str, float]:
    """The recipe's own warm-up (`starting_model` in recipes/grpo.py: the first steps of the SFT recipe's default run),
    saved to `<workdir>/start/sft-warmup`; returns (folder, held-out exact match)."""
    from hftrain.builtin import arithmetic_splits
    from hftrain.recipe_utils import greedy_exact_match, load_causal_lm, load_tokenizer

    recipe = runpy.run_path(RECIPE)
    flags = [
        "--output_dir",
        os.path.join(opts.workdir, "start"),
        "--sft_output_dir",
        "",
        "--seed",
        str(opts.warmup_seed),
    ]
    _, training_args, model_args, grpo_args = recipe["parse_args"](
        [*flags, "--sft_warmup_steps", str(opts.warmup_steps)]
    )
    started = time.perf_counter()
    model_args.model_name_or_path = recipe["starting_model"](model_args, grpo_args, training_args)
    tokenizer = load_tokenizer(model_args)
    _, held_out = arithmetic_splits(4000, 200, seed=0, fmt="prompt_answer")
    score = greedy_exact_match(
        load_causal_lm(model_args, tokenizer), tokenizer, held_out["prompt"], held_out["answer"]
    )
    print(f"start: {opts.warmup_steps} SFT steps in {time.perf_counter() - started:.0f} s, exact match {score:.1%}")
    return model_args.model_name_or_path, score


def run_grpo(opts, start: str, seed: int) -> dict:
    """One recipe run as a process; its printed before/after and its evaluation history."""
    out = os.path.join(opts.workdir, f"grpo-seed{seed}")
    command = [sys.executable, RECIPE, "--sft_output_dir", start, "--output_dir", out, "--seed", str(seed),
               "--auto_resume", "false", "--overwrite_output_dir", "true", "--disable_tqdm", "true", *opts.recipe_args]  # fmt: skip
    env = {**os.environ, "HFTRAIN_TRACKER_DB": os.path.join(opts.workdir, "runs.db")}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"recipe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    printed = re.findall(r"exact match (before|after) GRPO: ([\d.]+)%", done.stdout)
    history = json.load(open(os.path.join(out, "trainer_state.json"), encoding="utf-8"))["log_history"]
    evals = [(h["step"], h["eval_exact_match"]) for h in history if "eval_exact_match" in h]
    rewards = [h["reward"] for h in history if "reward" in h and "eval_exact_match" not in h]
    return {
        "seed": seed,
        "wall_s": wall,
        "train_runtime_s": next(h["train_runtime"] for h in history if "train_runtime" in h),
        "steps": max(h["step"] for h in history),
        "printed": {when: float(value) / 100 for when, value in printed},
        "evals": evals,
        "last3_mean": sum(v for _, v in evals[-3:]) / len(evals[-3:]),
        "lowest": min(v for _, v in evals),
        "reward_first_last": (rewards[0], rewards[-1]) if rewards else None,
        "reward_hacking_alerts": done.stderr.count("reward_hacking") + done.stdout.count("reward_hacking"),
    }


def show(result: dict, start_score: float) -> None:
    nan = float("nan")
    before, after = result["printed"].get("before", nan), result["printed"].get("after", nan)
    first, last = result["reward_first_last"] or (nan, nan)
    print(f"seed {result['seed']}: {result['steps']} steps, wall {result['wall_s']:.0f} s")
    print(f"  training {result['train_runtime_s']:.0f} s; recipe printed: before {before:.1%}, after {after:.1%}")
    print("  eval exact match by step: " + ", ".join(f"{step}:{value:.3f}" for step, value in result["evals"]))
    print(f"  mean of the last three evaluations {result['last3_mean']:.1%}; lowest {result['lowest']:.1%} (start")
    print(f"  {start_score:.1%}); training reward {first:.3f} -> {last:.3f}; alerts {result['reward_hacking_alerts']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="outputs/grpo-bench")
    parser.add_argument("--start", default=None, help="a model folder to start from (skips the warm-up)")
    parser.add_argument("--warmup_steps", type=int, default=None, help="default: the recipe's sft_warmup_steps")
    parser.add_argument("--warmup_seed", type=int, default=42)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--json", default=None, help="also write the results to this file")
    own, rest = list(sys.argv[1:] if argv is None else argv), []
    if "--" in own:
        own, rest = own[: own.index("--")], own[own.index("--") + 1 :]
    opts = parser.parse_args(own)
    opts.recipe_args = rest
    if opts.warmup_steps is None:
        opts.warmup_steps = runpy.run_path(RECIPE)["GRPOScriptArguments"]().sft_warmup_steps
    os.makedirs(opts.workdir, exist_ok=True)
    flags = " ".join(rest) or "(default config)"
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; recipe flags: {flags}")
    if opts.start:
        start, start_score = opts.start, float("nan")
    else:
        start, start_score = build_start(opts)
    results = []
    for seed in opts.seeds:
        results.append(run_grpo(opts, start, seed))
        show(results[-1], results[-1]["printed"].get("before", start_score))
    met = [r["last3_mean"] >= 0.65 and r["wall_s"] <= 600 for r in results]
    print(
        f"target (last-three mean >= 65% within 600 s of GRPO wall time): {'met' if all(met) else 'NOT met'} "
        f"on {sum(met)}/{len(met)} seed(s); load average now {os.getloadavg()[0]:.1f}"
    )
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as handle:
            json.dump({"start": start, "start_exact_match": start_score, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
