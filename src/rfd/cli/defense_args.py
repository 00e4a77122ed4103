"""Defense flags shared by every command that takes a defense: they describe one :class:`rfd.DefenseSpec`."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from rfd.data import DataSpec, calibration_indices
from rfd.defenses import FAMILIES, CalibrationResult, DefendedModel, DefenseSpec, prepare_defense

__all__ = ["add_defense_args", "defend_from_args", "defense_info", "defense_spec_from_args"]


def add_defense_args(parser: argparse.ArgumentParser, *, default: str = "none") -> None:
    """Add --defense --layer --sigma --drop --scaled --gate --noise-seed --calib-draws (in their own help group)."""
    g = parser.add_argument_group("defense")
    g.add_argument("--defense", choices=list(FAMILIES), default=default,
                   help="; ".join(f"{f.name}: {f.help}" for f in FAMILIES.values()) + f" (default: {default})")
    g.add_argument("--layer", action="append", default=None, metavar="L",
                   help="layer for feature noise, a name from model.named_modules() or 'penultimate' (the input "
                        "of the final classifier layer; default); repeat for several layers")
    g.add_argument("--sigma", type=float, default=None,
                   help="noise std: " + "; ".join(f"{f.name}: {f.units}" for f in FAMILIES.values() if f.noise))
    g.add_argument("--drop", type=float, default=None,
                   help="instead of --sigma: calibrate sigma to this absolute clean-accuracy drop (e.g. 0.02) on "
                        "the calibration images (see the data flags)")
    g.add_argument("--scaled", action="store_true",
                   help="feature noise in units of each feature's clean std (measured on the calibration images)")
    g.add_argument("--gate", type=float, default=None, metavar="P",
                   help="noise only on queries whose clean top probability is below P (confident ones answered "
                        "clean): --defense logits --sigma 0.1 --gate 0.3 is Aithal & Li's boundary defense, input "
                        "or feature noise with --gate 0.99 the confidence-gated defense of Zimmer et al.")
    g.add_argument("--noise-seed", type=int, default=0, help="seed of the defense's noise generator (default 0)")
    g.add_argument("--calib-draws", type=int, default=10,
                   help="noise draws per sigma while calibrating --drop (default 10)")


def defense_spec_from_args(args: argparse.Namespace) -> DefenseSpec:
    """The spec the flags describe; a bad combination fails with the spec's own message (ValueError)."""
    return DefenseSpec(family=args.defense, sigma=args.sigma, drop=args.drop, layers=tuple(args.layer or ()),
                       scaled=bool(args.scaled), gate=args.gate)


def defense_info(defended: DefendedModel, calibration: CalibrationResult | None = None,
                 calib_name: str | None = None) -> dict[str, Any]:
    """The JSON-able description commands print: family, sigma, layers, scaled, seed, spec, calibration."""
    s = defended.spec
    cal = None
    if calibration is not None:
        cal = {k: v for k, v in calibration.to_dict().items() if k not in ("spec", "history")}
        cal["data"] = calib_name
    return {
        "family": s.family, "sigma": s.sigma, "layers": list(s.layers),
        "resolved_layers": [t.module_name + (" (input)" if t.pre else "") for t in defended.targets],
        "scaled": s.scaled, "seed": defended.seed, "spec": s.to_dict(), "calibration": cal,
    }


def defend_from_args(args: argparse.Namespace, model: Any, data: DataSpec,
                     eval_index: torch.Tensor | None = None) -> tuple[DefendedModel, dict[str, Any]]:
    """The defended model the flags describe, calibrated on ``data``'s calibration images (disjoint from
    ``eval_index`` of its evaluation split) when the spec gives --drop or --scaled; and its description."""
    spec = defense_spec_from_args(args)
    images = labels = None
    name = None
    if spec.needs_calibration or spec.scaled:
        used = eval_index if eval_index is not None else torch.empty(0, dtype=torch.long)
        cal, cidx = calibration_indices(data, used, seed=int(getattr(args, "seed", 0)))
        images, labels, name = cal.images[cidx], cal.labels[cidx], cal.name
    defended, calibration = prepare_defense(model, spec, seed=args.noise_seed, calib_images=images,
                                            calib_labels=labels, draws=args.calib_draws,
                                            progress=not getattr(args, "quiet", False))
    return defended, defense_info(defended, calibration, name)
