"""Helpers shared by the CLI commands: common flags, output, logging. No experiment logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import torch

from rfd.jsonable import jsonable

if TYPE_CHECKING:
    from rfd.models.fast import FastSpec

__all__ = ["CLIError", "add_common", "emit", "resolve_device", "setup_logging", "to_jsonable"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def add_common(p: argparse.ArgumentParser, *, json_flag: bool = True, device: bool = True) -> None:
    """Flags every number-reporting command takes: --json, --quiet, --device, --threads."""
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress/logs go to stderr)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info logs")
    if device:
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")


def add_output_arg(p: argparse.ArgumentParser, *, what: str, default: str | None = "logits",
                   default_text: str | None = None) -> None:
    """``--output SETTING``: an output setting of :mod:`rfd.blackbox.outputs`, parsed (bad text: a usage error
    naming the allowed forms)."""
    from rfd.blackbox.outputs import parse_output

    def parse(text: str) -> object:
        try:
            return parse_output(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument("--output", type=parse, default=None if default is None else parse_output(default),
                   metavar="SETTING", help=f"{what}: logits, probs, topk:K (the K best classes with their "
                   "probabilities), top1, rounded:D (probabilities to D decimals) or labels (default "
                   f"{default_text or default})")


CLI_FAST_DEFAULT = "heap"  # a CLI process is dedicated to its forwards: keeping freed memory changes no answer


def add_fast_arg(p: argparse.ArgumentParser) -> None:
    """``--fast OPTIONS``: forward speed-ups of :mod:`rfd.models.fast`, parsed (bad text: a usage error naming the
    options). Left out, it is None: :func:`fast_from_args` gives the CLI's default."""
    from rfd.models.fast import FAST_OPTIONS, parse_fast

    def parse(text: str) -> object:
        try:
            return parse_fast(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument("--fast", type=parse, default=None, metavar="OPTIONS",
                   help=f"faster forwards of the model: {', '.join(FAST_OPTIONS)} (comma-separated), all, or plain. "
                   f"Default {CLI_FAST_DEFAULT}: the process keeps the memory its forwards free for the next one "
                   "instead of handing it back to the OS (bit-identical answers; resident memory stays at its "
                   "peak); plain turns it off. The other options answer equal to plain up to float tolerance; "
                   "compile spends seconds to a minute compiling first")


def fast_from_args(args: argparse.Namespace) -> FastSpec:
    """The ``--fast`` setting given, or the CLI's default (:data:`CLI_FAST_DEFAULT`)."""
    from rfd.models.fast import parse_fast

    return args.fast if args.fast is not None else parse_fast(CLI_FAST_DEFAULT)


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise CLIError(f"--device {name!r} is not a torch device (use cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    return dev


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))


to_jsonable = jsonable  # the CLI's name for the shared converter


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print ``payload`` as one JSON object with --json, else the human ``text``."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(to_jsonable(payload), indent=None) + "\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` flag values as a dict, each VALUE parsed as JSON when it is JSON (else kept as a string)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
