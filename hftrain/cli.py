"""The `hftrain` console entry: builds the top-level parser, lets each package register its subcommands, and
dispatches. Subcommands import what they need only when they run.

`hftrain runs ...` (`hftrain.tracking.cli`) reads the tracker database with the standard library only: it never
imports transformers, TRL or torch, so it starts in a fraction of a second. `hftrain sft|dpo|...`
(`hftrain.recipes_cli`) runs a recipe of recipes/, which the package installs as `hftrain.recipes`.
"""

from __future__ import annotations

import argparse
import sys

from .export import add_export_parser, run_export  # stdlib only: torch loads when an export runs
from .recipes_cli import RECIPES, add_recipe_parsers, run_recipe
from .tracking.cli import add_runs_parser
from .tracking.cli import dispatch as runs_dispatch


def main(argv: list[str] | None = None) -> int:
    """Run the `hftrain` command line; returns the exit status (2 for a user error, printed as one line)."""
    parser = argparse.ArgumentParser(
        prog="hftrain", description="hftrain command-line tools; a recipe's fields: hftrain sft --help"
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("env", help="print versions of hftrain and the libraries it builds on")
    sub.add_parser("tune", help="Optuna hyperparameter search over a recipe (`hftrain tune --help`)")
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["tune"]:  # the tuner parses its own flags and hands the rest to the recipe
        from .tune import main as tune_main  # lazy: only this subcommand imports optuna, transformers and TRL

        return tune_main(raw[1:])
    if raw[:1] and raw[0] in RECIPES:  # a recipe parses its own flags: `hftrain sft --help` lists every field
        return run_recipe(raw[0], raw[1:])
    add_recipe_parsers(sub)
    add_runs_parser(sub)
    _add_push_parser(sub)
    add_export_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "push":
        return _push(args)
    if args.command == "export":
        return run_export(args)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command == "env":
        return _env()
    if args.command == "runs":
        return runs_dispatch(args)
    parser.print_help()
    return 0


def _add_push_parser(sub: argparse._SubParsersAction) -> None:
    push = sub.add_parser(
        "push",
        help="push a finished run's output directory (model or adapter, tokenizer, card, "
        "run history) to the Hub, e.g. to retry a failed push",
    )
    push.add_argument("output_dir")
    push.add_argument("--repo_id", help="Hub repo (default: the one the run recorded)")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    push.add_argument("--private", action="store_true", default=None, help="create the repo as private")


def _push(args: argparse.Namespace) -> int:
    from .errors import HFTrainError, report_user_error
    from .hub import push_results  # lazy: only this subcommand imports huggingface_hub

    try:
        print(f"pushed to {push_results(args.output_dir, args.repo_id, args.token, args.private)}")
        return 0
    except HFTrainError as exc:
        return report_user_error(exc)


def _env() -> int:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("hftrain", "torch", "transformers", "trl", "accelerate", "peft", "datasets", "diffusers"):
        try:
            print(f"{name}: {version(name)}")
        except PackageNotFoundError:
            print(f"{name}: not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
