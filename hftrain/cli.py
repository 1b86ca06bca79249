"""The `hftrain` console entry. Subcommands import what they need only when they run."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hftrain", description="hftrain command-line tools.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("env", help="print versions of hftrain and the libraries it builds on")
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command == "env":
        from importlib.metadata import PackageNotFoundError, version

        for name in ("hftrain", "torch", "transformers", "trl", "accelerate", "peft", "datasets", "diffusers"):
            try:
                print(f"{name}: {version(name)}")
            except PackageNotFoundError:
                print(f"{name}: not installed")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
