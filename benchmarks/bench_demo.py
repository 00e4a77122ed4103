"""`rfd demo` wall time, with its breakdown: calibration, attacks per cell, and the runner's own overhead.

    python benchmarks/bench_demo.py [--quick] [--threads 2] [--workers 1] [--out benchmarks/results/demo.json]

Runs the demo study (fmnist-vgg; none / input / feature noise at a 2-point drop; Square l_inf and RayS; 200
images, 1000 queries) into a fresh temporary folder, exactly as `rfd demo` does (its default --fast included:
--fast sets another). Goal: the whole job within 600 s
on 2 CPU cores. The runner overhead ratio is total wall time / (calibration time + attack time of every chunk):
what planning, storing, progress and the report cost on top of the computation (goal <= 1.05).
--quick: 20 images, 100 queries (checks the script works; its time says nothing about the goal).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs

from rfd.cli.common import CLI_FAST_DEFAULT

GOAL_S = 600.0
GOAL_OVERHEAD = 1.05


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 images, 100 queries")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads: per worker (default 1) with several workers, else torch's default")
    ap.add_argument("--workers", type=int, default=None, help="local worker processes (default: the demo's, one per core)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--fast", default=CLI_FAST_DEFAULT,
                    help=f"forward speed-ups (default: rfd demo's, {CLI_FAST_DEFAULT})")
    args = ap.parse_args(argv)
    from rfd.eval.demo import default_workers, run_demo
    from rfd.eval.store import ResultStore

    workers = args.workers or default_workers("cpu")
    if args.threads and workers == 1:
        torch.set_num_threads(args.threads)

    n, budget = (20, 100) if args.quick else (200, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_demo(Path(tmp) / "demo", n=n, budget=budget, progress=False, workers=workers, fast=args.fast,
                       threads=args.threads if workers > 1 else None)
        total = time.perf_counter() - t0
        with ResultStore(res.paths["db"]) as store:
            cals = store.calibrations()
            cal = (sum(float(c.get("elapsed_s", 0.0)) for c in cals), sum(int(c.get("forwards", 0)) for c in cals))
            cells = []
            for r in store.runs():
                info = store.chunk_info(r["run_id"])
                ident = r["config"]["identity"]
                cells.append((ident["defense"]["family"], ident["attack"]["name"], sum(i.elapsed_s for i in info),
                              sum(i.queries for i in info), sum(i.verification_forwards for i in info)))
    attack_s = sum(c[2] for c in cells)
    compute_s = float(cal[0]) + attack_s
    forwards = int(cal[1]) + sum(int(c[3]) + int(c[4]) for c in cells)
    # with several workers the chunk times overlap: the overhead ratio is defined for one worker only
    overhead = total / compute_s if workers == 1 else None
    result = {
        "target": "rfd demo wall time (s) on this machine; runner overhead = total / (calibration + attacks)",
        "goal": f"total <= {GOAL_S:.0f} s on 2 CPU cores; overhead <= {GOAL_OVERHEAD}",
        "meets_goal": (total <= GOAL_S) if not args.quick else None,
        "quick": args.quick, "n": n, "budget": budget, "threads": args.threads or torch.get_num_threads(),
        "workers": workers, "fast": args.fast,
        "torch": torch.__version__, "total_s": total, "calibration_s": float(cal[0]),
        "calibration_forwards": int(cal[1]), "attack_s": attack_s, "overhead_ratio": overhead,
        "forwards": forwards, "forwards_per_s": forwards / total,
        "cells": [{"defense": d, "attack": a, "seconds": s, "queries": q, "verification_forwards": v}
                  for d, a, s, q, v in cells],
        "table_md": res.table_md,
    }
    write_result(result, args.out)
    print(f"demo {total:.0f} s ({forwards:,} forwards, {forwards / total:,.0f}/s); goal <= {GOAL_S:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
