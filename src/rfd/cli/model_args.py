"""CLI glue for commands that take a model: ``--model`` (registry name or ``timm:NAME``) and its options."""

from __future__ import annotations

import argparse
from typing import Any

from rfd.cli.common import parse_key_values
from rfd.models import list_models
from rfd.models.classifier import ImageClassifier
from rfd.models.loading import load_model

__all__ = ["add_model_args", "model_from_args"]


def add_model_args(p: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """Add --model, --checkpoint and the timm options (--num-classes, --mean, --std, --input-size, --timm-arg)."""
    p.add_argument("--model", default=default, required=default is None,
                   help=f"registry name ({', '.join(list_models())}) or timm:NAME for any timm model"
                   + (f" (default: {default})" if default else ""))
    p.add_argument("--checkpoint", default=None,
                   help="local weights (.safetensors, or .pt/.pth read with weights_only=True); "
                   "default for registry models: the shipped checkpoint")
    g = p.add_argument_group("timm models (--model timm:NAME)")
    g.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: timm's)")
    g.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean in [0,1] units")
    g.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std in [0,1] units")
    g.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="input shape (default: the model's)")
    g.add_argument("--timm-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="extra timm.create_model keyword, repeatable, e.g. --timm-arg img_size=32 "
                   "(VALUE parsed as JSON when possible)")


def model_from_args(args: argparse.Namespace, device: Any = "cpu") -> ImageClassifier:
    """The model the parsed ``args`` describe (see :func:`rfd.models.load_model`), on ``device``."""
    size = tuple(args.input_size) if args.input_size is not None else None
    return load_model(args.model, args.checkpoint, device, num_classes=args.num_classes, mean=args.mean,
                      std=args.std, input_size=size,  # type: ignore[arg-type]
                      model_kwargs=parse_key_values(args.timm_arg, "--timm-arg") or None)
