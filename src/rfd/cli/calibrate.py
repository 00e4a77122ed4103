"""`rfd calibrate --model M --defense feature|input|logits [--layer L] --drop D`: the sigma costing a chosen drop."""

from __future__ import annotations

import argparse

from rfd.cli.common import CLIError, add_common, emit, resolve_device
from rfd.defenses import NOISE_KINDS, PENULTIMATE, DefenseSpec, calibrate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="find the noise sigma that costs a chosen clean-accuracy drop",
        description="Search sigma (log-scale bracket, then bisection) so that the expected clean accuracy of the "
        "noisy model, averaged over several noise draws, equals the base accuracy minus --drop, on the bundled "
        "calibration split (1000 Fashion-MNIST test images disjoint from the eval split).",
    )
    p.add_argument("--model", required=True, help="registry name (fmnist-vgg, fmnist-resnet, fmnist-vit) or timm:NAME")
    p.add_argument("--checkpoint", default=None, help="weights file (default: the weights shipped with the model)")
    p.add_argument("--defense", choices=NOISE_KINDS, default="feature", help="noise family (default: feature)")
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


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    device = resolve_device(args.device)
    try:
        from rfd.models.loading import load_model
    except ImportError:  # pragma: no cover - older trees without the timm loader
        from rfd.models import create_model

        return create_model(args.model, checkpoint=args.checkpoint, device=device)
    return load_model(args.model, args.checkpoint, device)


def run(args: argparse.Namespace) -> int:
    from rfd.data.bundled import load_bundled

    if args.layer and args.defense != "feature":
        raise CLIError(f"--layer applies to --defense feature only, not {args.defense}")
    if args.scaled and args.defense != "feature":
        raise CLIError(f"--scaled applies to --defense feature only, not {args.defense}")
    if not 0 < args.drop < 1:
        raise CLIError(f"--drop is an absolute accuracy drop in (0, 1), e.g. 0.02 for two points; got {args.drop}")
    model = _load(args)
    spec = DefenseSpec(kind=args.defense, layers=tuple(args.layer) if args.layer else (PENULTIMATE,),
                       scaled=args.scaled)
    calib = load_bundled("calib")
    res = calibrate(model, spec, args.drop, calib.images, calib.labels, draws=args.draws, tol=args.tol,
                    seed=args.seed, max_iter=args.max_iter, batch_size=args.batch_size, progress=not args.quiet)
    payload = {"model": args.model, "defense": args.defense, "layers": list(spec.layers) if spec.kind == "feature"
               else [], "data": calib.name, **res.to_dict()}
    text = (f"{args.model} {args.defense} noise"
            + (f" at {', '.join(spec.layers)}" if spec.kind == "feature" else "")
            + f": sigma {res.sigma:.6g} -> expected accuracy {res.accuracy:.4f} +- {res.accuracy_se:.4f} "
            f"(base {res.base_accuracy:.4f}, drop {res.drop:.4f}, target {res.target_drop:.4f}"
            + ("" if res.converged else ", NOT within tol")
            + f"); {res.iterations} sigmas, {res.forwards} image forwards on {calib.name}")
    emit(args, payload, text)
    return 0
