"""The ``rfd`` command: parses arguments and dispatches to one module per command."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from rfd import __version__
from rfd.cli.common import CLIError, setup_logging

# One module per command under rfd.cli; each defines register(subparsers).
COMMANDS = [
    "demo",  # the main job on the embedded default
    "data",
    "models",
    "train",
    "accuracy",
    "calibrate",
    "attack",
    "run",
    "merge",
    "report",
    "check",
    "reproduce",
    "analyze",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rfd",
        description="Randomized Feature Defense: defend image classifiers against query-based black-box attacks, "
        "and measure that defense honestly. Run `rfd COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"rfd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = f"rfd.cli.{name.replace('-', '_')}"
        if importlib.util.find_spec(module) is None:  # tests/test_cli.py asserts every command is present
            continue
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"rfd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
