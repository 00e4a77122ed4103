"""`rfd accuracy --model M --defense ...`: clean accuracy of a (randomized) model, expected/majority/extreme."""

from __future__ import annotations

import argparse

import torch

from rfd.cli.common import CLIError, add_common, emit, resolve_device
from rfd.cli.data_args import add_data_args, data_spec_from_args
from rfd.cli.defense_args import add_defense_args, defend_from_args
from rfd.cli.model_args import add_model_args, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "accuracy", help="clean accuracy of a defended model: expected, majority vote and extreme",
        description="Clean accuracy three ways (paper Table 8) on every image of the evaluation split (or its "
        "first --limit): expected (mean over --draws noise draws), majority (an image is wrong only if most of "
        "--majority draws misclassify it) and extreme (wrong if any of --pairs antithetic pairs of noise draws "
        "misleads). Also the undefended base accuracy.",
    )
    add_model_args(p)
    add_data_args(p)
    add_defense_args(p)
    p.add_argument("--draws", type=int, default=10, help="noise draws for the expected accuracy (default 10)")
    p.add_argument("--majority", type=int, default=9, help="draws voting for the majority accuracy (default 9)")
    p.add_argument("--pairs", type=int, default=20, help="antithetic pairs for the extreme accuracy (default 20)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--batch-size", type=int, default=500)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.defenses import randomized_accuracy

    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    data = data_spec_from_args(args)
    ev = data.load(data.eval_split)
    used = torch.arange(min(args.limit or len(ev), len(ev)))
    images, labels = ev.images[used], ev.labels[used]
    model = model_from_args(args, resolve_device(args.device))
    defended, info = defend_from_args(args, model, data, used)
    try:
        acc = randomized_accuracy(defended, images, labels, draws=args.draws, majority_k=args.majority,
                                  pairs=args.pairs, batch_size=args.batch_size, progress=not args.quiet)
    finally:
        defended.remove()
    payload = {"model": args.model, "data": ev.name, "n": acc.n, "accuracy": acc.accuracy,
               "accuracy_se": acc.accuracy_se, "accuracy_majority": acc.accuracy_majority,
               "accuracy_extreme": acc.accuracy_extreme, "base_accuracy": acc.base_accuracy,
               "sigma": info["sigma"], "draws": acc.draws, "majority_k": acc.majority_k, "pairs": acc.pairs,
               "forwards": acc.forwards, "defense": info}
    sigma = "" if info["sigma"] is None else f" sigma {info['sigma']:.6g}"
    text = (f"{args.model} + {info['family']}{sigma} on {ev.name} ({acc.n} images): expected {acc.accuracy:.4f} "
            f"+- {acc.accuracy_se:.4f}, majority-of-{acc.majority_k} {acc.accuracy_majority:.4f}, extreme "
            f"({acc.pairs} antithetic pairs) {acc.accuracy_extreme:.4f}; undefended {acc.base_accuracy:.4f}")
    emit(args, payload, text)
    return 0
