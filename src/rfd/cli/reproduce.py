"""`rfd reproduce TABLE [--scale full|cpu]`: run a paper table's preset study and render it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfd.cli.common import CLIError, add_common, emit, resolve_device


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
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.eval.demo import default_workers
    from rfd.eval.paper_presets import SCALES, preset_for, preset_study

    device = str(resolve_device(args.device))
    if args.workers is None:
        args.workers = 1 if args.executor == "ray" else default_workers(device)
    if args.estimate:
        return _estimate(args, device)
    if args.table == "all":
        raise CLIError("'all' works with --estimate only; run one table at a time")
    preset = preset_for(args.table)
    study = preset_study(preset.table, args.scale)
    scale = SCALES[args.scale]
    out = Path(args.out or f"rfd-reproduce/table{preset.table}-{args.scale}")
    db = Path(args.db) if args.db else out / "results.sqlite"
    print(f"{preset.title} at scale {args.scale}: {scale.note}", file=sys.stderr)
    if args.dry_run:
        from rfd.eval.runner import parse_shard, plan_status

        st = plan_status(study, db, shard=parse_shard(args.shard) if args.shard else None)
        emit(args, st, f"{st['cells']} cells x {st['chunks_per_cell']} chunks; {st['units_done']} of "
             f"{st['units_total']} chunks stored; {st['calibrations_needed']} calibration(s) to run")
        return 0
    from rfd.eval.demo import demo_requirements
    from rfd.eval.reporting import write_report
    from rfd.eval.runner import parse_shard, plan_study, run_study
    from rfd.eval.store import StoreError

    missing = [m for spec in study.models for m in _missing_checkpoint(spec.name)]
    missing += [m for m in demo_requirements(study.models[0], tuple(sorted({a.name for a in study.attacks})))]
    if missing:
        raise CLIError("cannot reproduce yet; missing: " + "; ".join(dict.fromkeys(missing)))
    try:
        summary = run_study(study, db, device=device, shard=parse_shard(args.shard) if args.shard else None,
                            executor=args.executor, address=args.address, progress=not args.quiet,
                            workers=args.workers, executor_options={"threads": args.threads or 1} if args.workers > 1
                            else None)
    except StoreError as exc:
        raise CLIError(str(exc)) from exc
    keys = {c.key for c in plan_study(study).cells}
    paths = write_report(db, out, [preset.kind], title=f"{preset.title} (scale {args.scale})",
                         intro=f"{study.description}\n\nComputed in {summary.elapsed_s:.0f} s into `{db.name}`; "
                         f"`rfd report {db} --table {preset.table}` renders it again.", run_keys=keys)
    text = Path(paths["report"]).read_text()
    emit(args, {"table": preset.table, "scale": args.scale, "note": scale.note, "paths": paths,
                "summary": summary.to_dict(), "report": text},
         text + f"\nscale {args.scale}: {scale.note}\nreport: {paths['report']}\n"
         + ("" if summary.complete else "INCOMPLETE (this shard or an interrupted run): run again to finish\n"))
    return 0


def _missing_checkpoint(name: str) -> list[str]:
    from rfd.models.registry import get_entry

    path = get_entry(name).checkpoint_path()
    if path is None or not path.is_file():
        return [f"the reference checkpoint of {name} ({path}); train it with `rfd train {name} --out {path}`"]
    return []


def _estimate(args: argparse.Namespace, device: str) -> int:
    from rfd.eval.estimate import estimate_study
    from rfd.eval.paper_presets import PRESETS, preset_study

    tables = list(PRESETS) if args.table == "all" else [args.table]
    throughput: dict[str, float] = {}
    rows = []
    for t in tables:
        study = preset_study(t, args.scale)
        est = estimate_study(study, device=device, throughput=throughput, workers=args.workers)
        throughput.update(est.throughput)  # measure each model once
        rows.append(est.to_dict() | {"table": t, "scale": args.scale})
    lines = [(f"estimates at scale {args.scale} on {device} with {rows[0]['threads']} torch thread(s) x "
              f"{args.workers} worker(s); attack queries as an upper bound (every image spends its whole budget), "
              "time at the per-core throughput below (process CPU time) with ideal scaling"),
             f"{'table':>6} {'cells':>6} {'forwards':>14} {'hours':>8}"]
    for r in rows:
        lines.append(f"{r['table']:>6} {r['cells']:>6} {r['forwards']:>14,} {r['seconds'] / 3600:>8.2f}")
    lines.append("throughput (images/s): " + ", ".join(f"{m} {v:,.0f}" for m, v in throughput.items()))
    emit(args, {"estimates": rows, "throughput": throughput}, "\n".join(lines))
    return 0
