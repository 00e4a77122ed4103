"""`rfd calibrate --model M --defense feature|input|logits [--layer L] --drop D`: the sigma costing a chosen drop."""

from __future__ import annotations

import argparse

import torch

from rfd.cli.common import add_common, emit, resolve_device
from rfd.cli.data_args import add_data_args, data_spec_from_args
from rfd.cli.model_args import add_model_args, model_from_args
from rfd.defenses import NOISE_FAMILIES, DefenseSpec, calibrate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="find the noise sigma that costs a chosen clean-accuracy drop",
        description="Search sigma (log-scale bracket, then bisection) so that the expected clean accuracy of the "
        "noisy model, averaged over several noise draws, equals the base accuracy minus --drop, on the calibration "
        "images (default: the bundled calibration split, 1000 Fashion-MNIST test images disjoint from the eval "
        "split).",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--defense", choices=NOISE_FAMILIES, default="feature", help="noise family (default: feature)")
    p.add_argument("--layer", action="append", default=None, metavar="L",
                   help="feature-noise layer from model.named_modules(), or 'penultimate' (default); repeatable")
    p.add_argument("--scaled", action="store_true", help="feature noise in units of each feature's clean std")
    p.add_argument("--drop", type=float, required=True, help="absolute clean-accuracy drop to reach, e.g. 0.02")
    p.add_argument("--draws", type=int, default=10, help="noise draws per evaluated sigma (default 10)")
    p.add_argument("--tol", type=float, default=0.001, help="tolerance on the achieved drop (default 0.001)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration noise draws (default 0)")
    p.add_argument("--max-iter", type=int, default=40, help="most sigma values to evaluate (default 40)")
    p.add_argument("--batch-size", type=int, default=500)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.data import calibration_indices

    spec = DefenseSpec(family=args.defense, drop=args.drop, layers=tuple(args.layer or ()), scaled=args.scaled)
    data = data_spec_from_args(args)
    cal, cidx = calibration_indices(data, torch.empty(0, dtype=torch.long), args.seed)
    model = model_from_args(args, resolve_device(args.device))
    res = calibrate(model, spec, cal.images[cidx], cal.labels[cidx], draws=args.draws, tol=args.tol,
                    seed=args.seed, max_iter=args.max_iter, batch_size=args.batch_size, progress=not args.quiet)
    payload = {"model": args.model, "defense": args.defense, "layers": list(spec.layers), "data": cal.name,
               **res.to_dict()}
    text = (f"{args.model} {args.defense} noise"
            + (f" at {', '.join(spec.layers)}" if spec.layers else "")
            + f": sigma {res.sigma:.6g} -> expected accuracy {res.accuracy:.4f} +- {res.accuracy_se:.4f} "
            f"(base {res.base_accuracy:.4f}, drop {res.drop:.4f}, target {res.target_drop:.4f}"
            + ("" if res.converged else ", NOT within tol")
            + f"); {res.iterations} sigmas, {res.forwards} image forwards on {cal.name}")
    emit(args, payload, text)
    return 0
