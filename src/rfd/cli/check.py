"""`rfd check results.sqlite`: sanity flags of every run (stalled or lucky attacks, unstable predictions,
calibration not converged), each with what to try next. Exit status 1 when any flag is raised."""

from __future__ import annotations

import argparse
from pathlib import Path

from rfd.cli.common import CLIError, add_common, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="sanity flags of a results store (stalled or lucky attacks, unstable predictions)",
        description="Flag runs whose robust accuracy says more about the evaluation than about the defense: "
        "successes mostly in the first few queries, robust accuracy flat across budgets (a stalled search), paper "
        "and strict readings more than 5 points apart (lucky passes of the check), calibration not converged, "
        "clean predictions unstable across forwards. Each flag says what to try next. Exit status 1 if any flag.")
    p.add_argument("db", help="results store (SQLite) written by rfd run / demo / reproduce")
    add_common(p, device=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.eval.results import load_results
    from rfd.eval.sanity import sanity_flags

    if not Path(args.db).is_file():
        raise CLIError(f"results store not found: {args.db}")
    res = load_results(args.db)
    flags = sanity_flags(res)
    text = "\n".join(f.text() for f in flags) if flags else f"no flags on the {len(res.runs)} run(s) of {args.db}"
    emit(args, {"db": args.db, "runs": len(res.runs), "flags": [f.to_dict() for f in flags]}, text)
    return 1 if flags else 0
