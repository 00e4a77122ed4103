"""The ``rfd`` command: parses arguments and dispatches to one module per command."""

from __future__ import annotations

import argparse
import importlib
import sys

from rfd import __version__
from rfd.cli.common import CLIError, setup_logging
from rfd.eval.store import StoreError
from rfd.extras import MissingExtra, missing_extra

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
        importlib.import_module(f"rfd.cli.{name}").register(sub)
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
    except (CLIError, ValueError, FileNotFoundError, StoreError, MissingExtra) as exc:
        print(f"rfd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional extra the command needs
        err = missing_extra(exc, f"rfd {args.command}")
        if not isinstance(err, MissingExtra):
            raise
        print(f"rfd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
