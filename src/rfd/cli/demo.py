"""`rfd demo [--out DIR]`: the main job on the embedded default model and images."""

from __future__ import annotations

import argparse
import sys

from rfd.cli.common import add_common, add_fast_arg, emit, fast_from_args, resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job: no defense vs input vs feature noise on fmnist-vgg, Square and RayS",
        description="Calibrate input and feature noise on the bundled calibration split to the same 2-point "
        "clean-accuracy drop, attack 200 bundled evaluation images of fmnist-vgg with Square (l_inf, eps 0.05) "
        "and RayS for 1000 queries each, print the robust-accuracy table and write a report folder (Markdown, "
        "CSV, PNG plot, the SQLite store). Running it again with the same --out resumes.")
    p.add_argument("--out", default="rfd-demo", help="report folder (default: ./rfd-demo)")
    p.add_argument("--n", type=int, default=200, help="images (default 200)")
    p.add_argument("--budget", type=int, default=1000, help="queries per image (default 1000)")
    p.add_argument("--drop", type=float, default=0.02, help="clean-accuracy drop of both noise defenses "
                   "(default 0.02)")
    p.add_argument("--workers", type=int, default=None, help="local worker processes, one torch thread each "
                   "unless --threads (default: one per CPU core, at most 4; 1 on a GPU)")
    add_fast_arg(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.eval.demo import run_demo

    res = run_demo(args.out, n=args.n, budget=args.budget, drop=args.drop, device=str(resolve_device(args.device)),
                   fast=str(fast_from_args(args)), progress=not args.quiet, workers=args.workers, threads=args.threads)
    text = (res.table_md + "\n" + f"report: {res.paths['report']}\nplot:   {res.paths['plot']}\n"
            f"store:  {res.paths['db']}\n" + f"done in {res.elapsed_s:.0f} s")
    emit(args, res.to_dict(), text)
    if not res.summary.complete:
        print("warning: some chunks are missing; run the same command again to finish", file=sys.stderr)
    return 0
