"""`hftrain sft|dpo|seq2seq|pretrain|diffusion|grpo|kto|reward [flags]`: the recipes as subcommands.

The recipes stay readable scripts under `recipes/` (`python recipes/sft.py` in a checkout); pyproject.toml installs
that folder, configs included, as the package `hftrain.recipes`. A subcommand runs the same file's `main` the way its
`__main__` block does: the same flags, the same bundled default config (found next to the file, so inside the
installed package), the same one-line errors with exit status 2. Several processes: `accelerate launch [flags] -m
hftrain.cli sft ...`, or `python -m hftrain.launch [flags] -m hftrain.cli sft ...`, which checks the accelerate
config first and ends a user error in the recipe's one line.

Importing this module imports nothing heavy: `hftrain runs` keeps its fast start.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["RECIPES", "add_recipe_parsers", "run_recipe"]

# name -> what it trains; each name is recipes/<name>.py
RECIPES = {
    "sft": "supervised fine-tuning of a causal LM (TRL's SFTTrainer)",
    "dpo": "preference tuning (TRL's DPOTrainer)",
    "seq2seq": "encoder-decoder fine-tuning, T5 family (Seq2SeqTrainer)",
    "pretrain": "causal LM from scratch, model built from a config (Trainer)",
    "diffusion": "class-conditional UNet (diffusers, DiffusionTrainer)",
    "grpo": "reinforcement learning from a verifiable reward (TRL's GRPOTrainer)",
    "kto": "preference tuning from unpaired feedback (TRL's KTOTrainer)",
    "reward": "reward model: scores chosen above rejected (TRL's RewardTrainer)",
}


def add_recipe_parsers(sub: argparse._SubParsersAction) -> None:
    """One entry per recipe in `hftrain --help`; the recipe itself parses its flags (see `run_recipe`)."""
    for name, summary in RECIPES.items():
        sub.add_parser(name, help=summary, add_help=False)


def run_recipe(name: str, argv: list[str]) -> int:
    """Run `recipes/<name>.py` with `argv` as `python recipes/<name>.py ARGV` would; returns the exit status
    (0 after training or `--help`, 2 after a user error printed as one `error:` line)."""
    from .recipe_utils import run_main

    recipe = importlib.import_module(f"hftrain.recipes.{name}")
    saved = sys.argv
    # A recipe reads its flags from sys.argv like the script it is, and argparse names its usage after argv[0].
    sys.argv = [f"hftrain {name}", *argv]
    try:
        run_main(recipe.main)
    except SystemExit as exc:  # run_main's status after a user error, argparse's after --help
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0
