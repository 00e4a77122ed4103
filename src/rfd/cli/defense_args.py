"""Defense flags shared by every command that takes a defense, and the glue that builds it.

``add_defense_args(parser)`` adds --defense --layer --sigma --drop --scaled --noise-seed --calib-draws;
``build_defense(args, model)`` returns ``(defended_model, info)``. With ``--drop`` the sigma is calibrated on the
bundled calibration split (never the eval split) before the model is wrapped.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from torch import nn

from rfd.cli.common import CLIError
from rfd.defenses import KINDS, NOISE_KINDS, PENULTIMATE, DefendedModel, DefenseSpec, calibrate, defend

__all__ = ["add_defense_args", "build_defense", "defense_info"]


def add_defense_args(parser: argparse.ArgumentParser, *, default: str = "none") -> None:
    """Add the defense flags to ``parser`` (in their own help group)."""
    g = parser.add_argument_group("defense")
    g.add_argument("--defense", choices=KINDS, default=default,
                   help="feature: noise on hidden features (the paper); input: noise on the image (RND); logits: "
                        f"noise on the logits; aaa: AAA post-processing; none (default: {default})")
    g.add_argument("--layer", action="append", default=None, metavar="L",
                   help="layer for feature noise, a name from model.named_modules() or 'penultimate' (the input "
                        "of the final classifier layer; default); repeat for several layers")
    g.add_argument("--sigma", type=float, default=None,
                   help="noise std: pixels of the [0,1] image (input), feature units or, with --scaled, feature "
                        "stds (feature), logits (logits)")
    g.add_argument("--drop", type=float, default=None,
                   help="instead of --sigma: calibrate sigma to this absolute clean-accuracy drop (e.g. 0.02) on "
                        "the bundled calibration split")
    g.add_argument("--scaled", action="store_true",
                   help="feature noise in units of each feature's clean std (measured on the calibration split)")
    g.add_argument("--noise-seed", type=int, default=0, help="seed of the defense's noise generator (default 0)")
    g.add_argument("--calib-draws", type=int, default=10,
                   help="noise draws per sigma while calibrating --drop (default 10)")


def _spec_from_args(args: argparse.Namespace) -> tuple[DefenseSpec, float | None]:
    kind = args.defense
    layers = tuple(args.layer) if args.layer else (PENULTIMATE,)
    if args.layer and kind != "feature":
        raise CLIError(f"--layer applies to --defense feature only, not {kind}")
    if args.scaled and kind != "feature":
        raise CLIError(f"--scaled applies to --defense feature only, not {kind}")
    sigma, drop = args.sigma, args.drop
    if kind in NOISE_KINDS:
        if (sigma is None) == (drop is None):
            raise CLIError(f"--defense {kind} needs exactly one of --sigma S or --drop D")
        if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
            raise CLIError(f"--sigma must be a finite number >= 0, got {sigma}")
        if drop is not None and not 0 < drop < 1:
            raise CLIError(f"--drop is an absolute accuracy drop in (0, 1), e.g. 0.02 for two points; got {drop}")
    elif sigma is not None or drop is not None:
        raise CLIError(f"--sigma/--drop apply to noise defenses ({', '.join(NOISE_KINDS)}), not --defense {kind}")
    if args.noise_seed < 0:
        raise CLIError(f"--noise-seed must be >= 0, got {args.noise_seed}")
    try:
        spec = DefenseSpec(kind=kind, sigma=float(sigma or 0.0), layers=layers, scaled=bool(args.scaled),
                           seed=int(args.noise_seed))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    return spec, drop


def _calibration_data(model: nn.Module, calib: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    if calib is None:
        from rfd.data.bundled import load_bundled

        calib = load_bundled("calib")
    if isinstance(calib, tuple):
        images, labels = calib
        name = "given"
    else:
        images, labels, name = calib.images, calib.labels, getattr(calib, "name", "given")
    shape = getattr(model, "input_shape", None)
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise CLIError(f"calibration images {name} have shape {tuple(images.shape[1:])} but the model expects "
                       f"{tuple(shape)}; calibrate with images of the model's dataset or give --sigma")
    return images, labels, name


def defense_info(defended: DefendedModel, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able description commands print and store: kind, sigma, layers, scaled, seed, spec, calibration."""
    s = defended.spec
    return {
        "kind": s.kind, "sigma": s.sigma if s.is_noise else None,
        "layers": list(s.layers) if s.kind == "feature" else [],
        "resolved_layers": [t.module_name + (" (input)" if t.pre else "") for t in defended.targets],
        "scaled": s.scaled, "seed": s.seed, "spec": s.to_dict(), "calibration": calibration,
    }


def build_defense(
    args: argparse.Namespace, model: nn.Module, *, calib: Any = None, progress: bool | None = None
) -> tuple[DefendedModel, dict[str, Any]]:
    """Wrap ``model`` with the defense described by the flags of :func:`add_defense_args`.

    Args:
        args: parsed arguments.
        model: the undefended classifier (on its device).
        calib: calibration data for --drop and --scaled: an ``ImageDataset`` or an ``(images, labels)`` tuple
            (default: the bundled Fashion-MNIST calibration split).
        progress: show a calibration progress bar (default: unless --quiet).

    Returns:
        ``(defended_model, info)``; ``info`` holds kind, sigma, layers, scaled, seed, the spec as a dict and,
        with --drop, the calibration numbers (sigma, accuracy, accuracy_se, base_accuracy, drop, target_drop,
        forwards, iterations, draws, n, data).
    """
    spec, drop = _spec_from_args(args)
    if progress is None:
        progress = not getattr(args, "quiet", False)
    need_data = drop is not None or spec.scaled
    images = labels = None
    data_name = None
    if need_data:
        images, labels, data_name = _calibration_data(model, calib)
    calibration = None
    if drop is not None and images is not None and labels is not None:
        draws = int(getattr(args, "calib_draws", 10))
        if draws < 1:
            raise CLIError(f"--calib-draws must be >= 1, got {draws}")
        res = calibrate(model, spec, drop, images, labels, draws=draws, seed=spec.seed, progress=progress)
        spec = res.spec
        calibration = {k: v for k, v in res.to_dict().items() if k not in ("spec", "history")}
        calibration["data"] = data_name
    defended = defend(model, spec, calib_images=images if spec.scaled else None)
    return defended, defense_info(defended, calibration)
