"""`rfd run STUDY.yaml --db results.sqlite`: run or resume a study into a SQLite results store."""

from __future__ import annotations

import argparse
import math
import sys

from rfd.cli.common import CLIError, add_common, add_fast_arg, emit, fast_from_args, resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run (or resume) an evaluation study into a SQLite results store",
        description="Run every cell (model x defense x attack) of a YAML study, chunk by chunk, into a SQLite "
        "store. Re-running the same command resumes: finished chunks are skipped, so a killed run loses at most "
        "the chunk in flight. Tables and plots come from `rfd report`.")
    p.add_argument("study", help="study file (YAML; see rfd.eval.schema for the schema)")
    p.add_argument("--db", required=True, help="results store (SQLite file; created if missing)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N (0-based) of the work units; combine stores with `rfd merge`")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray tasks (needs the 'ray' extra)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes (default 1: this process); each uses --threads torch threads "
                   "(default 1 with several workers)")
    p.add_argument("--address", default=None, help="Ray cluster address (with --executor ray; default: start a "
                   "local Ray instance)")
    p.add_argument("--ray-gpus", type=float, default=None,
                   help="GPUs per Ray task (default: 1 with a cuda --device, else 0)")
    p.add_argument("--calibrate-only", action="store_true",
                   help="only calibrate and store the noise levels (copy this store to each shard's machine so all "
                   "shards use the same sigma)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (cells, chunks done/pending) and exit")
    p.add_argument("--max-units", type=int, default=None, help="stop after this many chunks (smoke runs)")
    add_fast_arg(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.eval.plan import parse_shard, plan_status
    from rfd.eval.runner import run_study
    from rfd.eval.schema import load_study
    from rfd.eval.store import StoreError

    study = load_study(args.study)
    shard = parse_shard(args.shard) if args.shard else None
    if args.dry_run:
        st = plan_status(study, args.db, shard=shard)
        lines = [(f"study {st['study']}: {st['cells']} cells x {st['chunks_per_cell']} chunks; shard "
                  f"{st['shard']}: {st['units_done']} of {st['units_total']} chunks stored, {st['units_pending']} to "
                  f"run; {st['calibrations_needed']} calibration(s) to run, {st['calibrations_stored']} stored")]
        lines += [f"  {i:3d}  {label}" for i, label in enumerate(st["cell_labels"])]
        emit(args, st, "\n".join(lines))
        return 0
    device = str(resolve_device(args.device))
    options: dict[str, object] = {}
    if args.workers > 1:
        options = {"threads": args.threads or 1}
    if args.executor == "ray":
        gpus = args.ray_gpus if args.ray_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
        options = {"num_gpus": gpus, "threads": args.threads}
    elif args.ray_gpus is not None:
        raise CLIError("--ray-gpus applies to --executor ray only")
    try:
        summary = run_study(study, args.db, device=device, fast=str(fast_from_args(args)), shard=shard, executor=args.executor, address=args.address,
                            executor_options=options, calibrate_only=args.calibrate_only, max_units=args.max_units,
                            progress=not args.quiet, workers=args.workers)
    except StoreError as exc:
        raise CLIError(str(exc)) from exc
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    emit(args, summary.to_dict(), format_summary(summary))
    if not summary.complete and not args.calibrate_only and args.max_units is None:
        print("warning: some chunks are still missing; run the same command again to finish", file=sys.stderr)
    return 0


def format_summary(s) -> str:  # type: ignore[no-untyped-def]
    """The end-of-run text: counts, time, then one line per cell with clean and robust accuracy."""
    lines = [
        f"study {s.study} -> {s.db} (shard {s.shard}, {s.executor} executor)",
        (f"  {s.cells} cells; chunks: {s.units_total} in this shard, {s.units_done_before} already stored, "
         f"{s.units_run} run now; {s.samples_written} samples written in {s.elapsed_s:.1f} s"),
        f"  calibrations: {s.calibrations_run} run, {s.calibrations_reused} re-used from the store",
    ]
    for c in s.calibrations:
        d = c.get("defense") or {}
        lines.append(f"    {c.get('model')} {d.get('family')} {'+'.join(d.get('layers') or [])} drop "
                     f"{d.get('drop')}: sigma {c['sigma']:.5g} (calib accuracy {c.get('accuracy', float('nan')):.4f}"
                     f", base {c.get('base_accuracy', float('nan')):.4f})")
    if s.per_cell:
        lines.append(f"  {'cell':<70} {'n':>9} {'clean':>7} {'paper':>7} {'strict':>7}")
        for c in s.per_cell:
            acc = "-" if c["clean_accuracy"] is None else f"{100 * c['clean_accuracy']:.1f}"
            rob = "-" if c["robust_accuracy"] is None else f"{100 * c['robust_accuracy']:.1f}"
            st = c.get("robust_accuracy_strict")
            strict = "-" if st is None or math.isnan(st) else f"{100 * st:.1f}"
            lines.append(f"  {c['label'][:70]:<70} {c['n_done']:>4}/{c['n']:<4} {acc:>7} {rob:>7} {strict:>7}")
        lines.append("  (robust accuracy at each cell's full budget, percent, paper and strict readings; tables with "
                     "intervals: rfd report DB --table ...; sanity flags: rfd check DB)")
    lines.append("complete" if s.complete else "INCOMPLETE: run the same command again to finish")
    return "\n".join(lines)
