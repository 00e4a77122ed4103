"""`rfd reproduce TABLE [--scale full|cpu]`: run a paper table's preset study and render it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfd.cli.common import CLIError, add_common, add_fast_arg, emit, fast_from_args, resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    from rfd.eval.paper_presets import PRESETS, SCALES

    p = sub.add_parser(
        "reproduce", help="run a paper table's experiment on the reference models",
        description="Run the preset study of a paper table on the reference Fashion-MNIST models into a results "
        "store, then write the table (Markdown, CSV), a plot and the per-sample rows. Scales: "
        + "; ".join(f"{k}: {v.note}" for k, v in SCALES.items())
        + ". Re-running resumes. --estimate prints the forward passes and the time expected on this machine.")
    p.add_argument("table", help=f"paper table: {', '.join(PRESETS)} (with --estimate also 'all')")
    p.add_argument("--scale", choices=list(SCALES), default="cpu", help="cpu (default) or full")
    p.add_argument("--db", default=None, help="results store (default: OUT/results.sqlite)")
    p.add_argument("--out", default=None, help="report folder (default: rfd-reproduce/tableT-SCALE)")
    p.add_argument("--estimate", action="store_true", help="only estimate forwards and time (quick measurement)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--shard", default=None, metavar="I/N", help="run shard I of N (see rfd run)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (with --executor ray)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes, one torch thread each unless --threads (default: one per CPU core, "
                   "at most 4; 1 on a GPU)")
    add_fast_arg(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.eval.paper_presets import PRESETS, SCALES, preset_for
    from rfd.eval.plan import parse_shard
    from rfd.eval.reproduce import default_out, estimate_tables, reproduce, reproduce_plan

    device = str(resolve_device(args.device))
    if args.estimate:
        tables = list(PRESETS) if args.table == "all" else [args.table]
        rows, throughput = estimate_tables(tables, args.scale, device=device, workers=args.workers)
        lines = [(f"estimates at scale {args.scale} on {device} with {rows[0]['threads']} torch thread(s) x "
                  f"{rows[0]['workers']} worker(s); attack queries as an upper bound (every image spends its whole "
                  "budget), time at the per-core throughput below (process CPU time) with ideal scaling"),
                 f"{'table':>6} {'cells':>6} {'forwards':>14} {'hours':>8}"]
        lines += [f"{r['table']:>6} {r['cells']:>6} {r['forwards']:>14,} {r['seconds'] / 3600:>8.2f}" for r in rows]
        lines.append("throughput (images/s): " + ", ".join(f"{m} {v:,.0f}" for m, v in throughput.items()))
        emit(args, {"estimates": rows, "throughput": throughput}, "\n".join(lines))
        return 0
    if args.table == "all":
        raise CLIError("'all' works with --estimate only; run one table at a time")
    note = SCALES[args.scale].note
    shard = parse_shard(args.shard) if args.shard else None
    out = Path(args.out) if args.out else default_out(args.table, args.scale)
    db = Path(args.db) if args.db else out / "results.sqlite"
    print(f"{preset_for(args.table).title} at scale {args.scale}: {note}", file=sys.stderr)
    if args.dry_run:
        st = reproduce_plan(args.table, args.scale, db, shard=shard)
        emit(args, st, f"{st['cells']} cells x {st['chunks_per_cell']} chunks; {st['units_done']} of "
             f"{st['units_total']} chunks stored; {st['calibrations_needed']} calibration(s) to run")
        return 0
    res = reproduce(args.table, args.scale, out=out, db=db, device=device, fast=str(fast_from_args(args)), shard=shard, executor=args.executor,
                    address=args.address, workers=args.workers, threads=args.threads, progress=not args.quiet)
    emit(args, res.to_dict(), res.report + f"\nscale {args.scale}: {note}\nreport: {res.paths['report']}\n"
         + ("" if res.summary.complete else "INCOMPLETE (this shard or an interrupted run): run again to finish\n"))
    return 0
