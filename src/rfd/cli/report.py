"""`rfd report results.sqlite --table TABLE --format md|csv|latex [--readings paper,strict] [--plot out.png]
[--raw] [--compare A B]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfd.cli.common import CLIError, add_common, emit


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="tables and plots from a results store",
        description="Render a results store in the paper's layouts. TABLE is a kind (robust, decision, strength, "
        "layer, eot, lucky, runs) or a paper table number (1, 2, 4, 9 -> robust; 5, 10, 11 -> decision; 3 -> "
        "strength; 6, 14 -> layer; 7 -> eot; 15 -> lucky). Values are percentages.")
    p.add_argument("db", help="results store (SQLite) written by rfd run / demo / reproduce")
    p.add_argument("--table", default="robust", help="table kind or paper table number (default: robust)")
    p.add_argument("--format", choices=["md", "csv", "latex"], default="md", help="output format (default md)")
    p.add_argument("--budgets", type=_ints, default=None, help="budgets shown as columns, e.g. 1000,10000 "
                   "(default: the study's checkpoints and each run's budget)")
    p.add_argument("--budget", type=int, default=None, help="the single budget of decision/strength/layer tables "
                   "(default: each run's full budget)")
    p.add_argument("--model", action="append", default=None, help="only these models (repeatable)")
    p.add_argument("--attack", action="append", default=None, help="only these attacks (repeatable)")
    p.add_argument("--method", action="append", default=None,
                   help="only these methods: Base, Input, Feature, Logits, AAA (repeatable)")
    p.add_argument("--digits", type=int, default=1, help="decimals (default 1)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="also write robust accuracy vs queries")
    p.add_argument("--raw", action="store_true", help="print the per-sample rows as CSV instead of a table")
    p.add_argument("--readings", default="paper,strict", metavar="R1,R2",
                   help="readings of robust accuracy shown side by side: paper, strict, expected (default "
                   "paper,strict)")
    p.add_argument("--compare", nargs=2, type=int, default=None, metavar=("A", "B"),
                   help="paired comparison of runs A and B (run ids of --table runs): the difference of their robust "
                   "accuracy on the same images with its 95%% interval and an exact McNemar p-value, under each of "
                   "--readings, at --budget (default: the smaller run budget)")
    p.add_argument("--out", default=None, help="write the text to this file instead of stdout")
    add_common(p, device=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.eval.plots import plot_robust_curves
    from rfd.eval.reporting import filter_results, raw_rows
    from rfd.eval.results import load_results
    from rfd.eval.tables import build_table, render

    if not Path(args.db).is_file():
        raise CLIError(f"results store not found: {args.db}")
    res = filter_results(load_results(args.db), models=args.model, attacks=args.attack, methods=args.method)
    plot = None
    if args.plot:
        plot = str(plot_robust_curves(res, args.plot, budgets=args.budgets))
    readings = [r.strip() for r in args.readings.split(",") if r.strip()]
    if args.compare:
        from rfd.eval.compare import compare_runs

        comps = [compare_runs(res, args.compare[0], args.compare[1], budget=args.budget, reading=r)
                 for r in readings]
        text = "".join(c.text() + "\n" for c in comps)
        payload: dict[str, object] = {"comparisons": [c.to_dict() for c in comps]}
    elif args.raw:
        text = raw_rows(res).to_csv(index=False)
        payload = {"rows": len(res.samples), "plot": plot}
    else:
        table = build_table(res, args.table, budgets=args.budgets, budget=args.budget, readings=readings)
        text = render(table, args.format, digits=args.digits)
        payload = {"table": table.kind, "title": table.title, "format": args.format, "text": text,
                   "notes": table.notes, "plot": plot}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        payload["out"] = args.out
        emit(args, payload, f"wrote {args.out}" + (f" and {plot}" if plot else ""))
        return 0
    if args.json:
        emit(args, payload, "")
    else:
        sys.stdout.write(text)
        if plot:
            print(f"plot: {plot}", file=sys.stderr)
    return 0
