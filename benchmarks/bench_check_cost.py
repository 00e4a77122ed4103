"""Cost of the success check and of the final re-evaluation, and what stopping the vote early saves.

    python benchmarks/bench_check_cost.py [--quick] [--out benchmarks/results/check_cost.json]

Square l_inf (eps 0.05) attacks class-balanced bundled eval images of fmnist-vgg with feature noise at the
penultimate layer calibrated to a 2% clean-accuracy drop, once with the paper's 9-vote check and once with the
strict check (101 votes, its stop rule), same images, same attack seed. For each run: charged queries, the
check's forwards (votes stop as soon as the majority is decided, in batched rounds), what the same checks would
have cost with all k votes (checks x k), the re-evaluation's forwards (R = 100 per final image, uncounted), and
each one's share of all forwards. One run per setting, ratios within the run (times depend on machine load).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs

from rfd.attacks import make_attack
from rfd.blackbox import LocalBlackBox
from rfd.data.bundled import load_bundled
from rfd.data.selection import balanced_indices
from rfd.defenses import DefenseSpec, calibrate, defend
from rfd.models import create_model

MODEL = "fmnist-vgg"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 images, budget 100")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, budget = (20, 100) if args.quick else (60, 1000)
    model = create_model(MODEL)
    calib, ev = load_bundled("calib"), load_bundled("eval")
    cal = calibrate(model, DefenseSpec(family="feature", drop=0.02), calib.images, calib.labels,
                    draws=5, tol=0.002, seed=0)
    idx = balanced_indices(ev.labels, n, seed=0)
    x, y = ev.images[idx], ev.labels[idx]
    runs = {}
    for k in (9, 101):
        defended = defend(model, cal.spec)
        defended.manual_seed(1)
        bb = LocalBlackBox(defended, budget=budget, verify=k, reevaluate=100)
        t0 = time.perf_counter()
        res = make_attack("square", norm="linf", eps=0.05, budget=budget, seed=0).run(bb, x, y)
        elapsed = time.perf_counter() - t0
        defended.remove()
        checks, check_fw = int(res.checks.sum()), int(res.check_forwards.sum())
        queries = int(bb.queries.sum())
        clean_check = bb.verification_forwards - check_fw
        total = queries + bb.verification_forwards + res.reevaluation_forwards
        runs[f"verify_{k}"] = {
            "verify": k, "seconds": elapsed, "queries": queries, "checks": checks, "check_forwards": check_fw,
            "check_forwards_all_k_votes": checks * k, "early_stop_saving": 1 - check_fw / max(1, checks * k),
            "clean_check_forwards": clean_check, "reevaluation_forwards": res.reevaluation_forwards,
            "total_forwards": total, "check_share": check_fw / total,
            "reevaluation_share": res.reevaluation_forwards / total,
            "robust_paper": res.robust_accuracy(reading="paper"), "robust_strict": res.robust_accuracy(reading="strict"),
            "lucky": res.lucky, "broken": int(res.success.sum()),
        }
    result = {
        "target": "success checks: forwards with early stopping vs all k votes; check and re-evaluation shares",
        "model": MODEL, "defense": "feature penultimate, 2% drop", "sigma": cal.sigma, "n": n, "budget": budget,
        "quick": args.quick, "threads": args.threads, "torch": torch.__version__,
        "strict_vs_paper_check_forwards": runs["verify_101"]["check_forwards"] / max(1, runs["verify_9"]["check_forwards"]),
        "runs": runs,
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
