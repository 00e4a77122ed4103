"""Calibration accuracy and cost: does the calibrated sigma give the requested clean-accuracy drop?

    python benchmarks/bench_calibration.py [--quick] [--out benchmarks/results/calibration.json]

For each reference model, noise family (feature noise at the penultimate layer, input noise) and target drop
(0.01, 0.02, 0.04): calibrate sigma on the bundled calibration split, then measure the expected accuracy of
the same sigma on the disjoint eval split with fresh noise (another seed). Goals: achieved drop within 0.3
points of the target on the calibration split, and within 0.5 points on the eval split. Also reported: the
forward passes and the time calibration used. Models without a trained checkpoint are skipped (the numbers
mean nothing on random weights); with --quick and no checkpoint at all, a closed-form nearest-class-mean
classifier stands in so that the script itself is still exercised.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs
from torch import nn

from rfd.data.bundled import load_bundled
from rfd.defenses import DefenseSpec, calibrate, defend
from rfd.defenses.accuracy import clean_accuracy, correct_counts
from rfd.models import ImageClassifier, create_model
from rfd.models.registry import get_entry

MODELS = ("fmnist-vgg", "fmnist-resnet", "fmnist-vit")
CALIB_GOAL, EVAL_GOAL = 0.003, 0.005


def _nearest_class_mean() -> ImageClassifier:
    """Stand-in classifier for --quick without checkpoints: class means, closed form, fitted on the training set
    (or, without the Fashion-MNIST files, on the calibration split: then the eval check is the only unbiased one)."""
    try:
        from rfd.data.fashion_mnist import load_fashion_mnist

        fit = load_fashion_mnist("train")
    except (FileNotFoundError, ValueError):
        fit = load_bundled("calib")
    x, y = fit.images.flatten(1), fit.labels
    mu = torch.stack([x[y == k].mean(0) for k in range(10)])
    fc = nn.Linear(784, 10)
    with torch.no_grad():
        fc.weight.copy_(mu)
        fc.bias.copy_(-0.5 * (mu * mu).sum(1))
    return ImageClassifier(nn.Sequential(nn.Flatten(), fc), mean=(0.0,), std=(1.0,), input_shape=(1, 28, 28),
                           num_classes=10, head="1").eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one model, one drop, 3 draws")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--draws", type=int, default=None, help="noise draws per sigma (default 10; quick 3)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    draws = args.draws or (3 if args.quick else 10)
    drops = (0.02,) if args.quick else (0.01, 0.02, 0.04)
    calib, ev = load_bundled("calib"), load_bundled("eval")
    models: list[tuple[str, nn.Module]] = []
    skipped = []
    for name in MODELS:
        path = get_entry(name).checkpoint_path()
        if path is not None and path.is_file():
            models.append((name, create_model(name, device=args.device)))
        else:
            skipped.append(name)
    if args.quick:
        models = models[:1] or [("nearest-class-mean (stand-in, no checkpoints)", _nearest_class_mean())]
    rows = []
    for name, model in models:
        model = model.to(args.device)
        base_eval = clean_accuracy(model, ev.images, ev.labels, batch_size=500)
        for kind in ("feature", "input"):
            for drop in drops:
                t0 = time.perf_counter()
                res = calibrate(model, DefenseSpec(family=kind, drop=drop), calib.images, calib.labels,
                                draws=draws, seed=0, batch_size=500)
                seconds = time.perf_counter() - t0
                with torch.no_grad(), defend(model, res.spec, seed=1) as d:
                    acc_eval = correct_counts(d, ev.images, ev.labels, draws=draws, batch_size=500)
                acc_eval_mean = float(acc_eval.double().mean())
                row = {
                    "model": name, "defense": kind, "layer": "penultimate" if kind == "feature" else "input",
                    "target_drop": drop, "sigma": res.sigma, "calib_base_accuracy": res.base_accuracy,
                    "calib_accuracy": res.accuracy, "calib_accuracy_se": res.accuracy_se, "calib_drop": res.drop,
                    "calib_error": abs(res.drop - drop), "calib_ok": abs(res.drop - drop) <= CALIB_GOAL,
                    "eval_base_accuracy": base_eval, "eval_accuracy": acc_eval_mean,
                    "eval_drop": base_eval - acc_eval_mean, "eval_error": abs(base_eval - acc_eval_mean - drop),
                    "eval_ok": abs(base_eval - acc_eval_mean - drop) <= EVAL_GOAL,
                    "forwards": res.forwards, "iterations": res.iterations, "draws": draws,
                    "seconds": round(seconds, 2),
                }
                rows.append(row)
                print(f"{name:14s} {kind:8s} drop {drop:.2f}: sigma {res.sigma:.4g}  calib drop {res.drop:.4f}  "
                      f"eval drop {row['eval_drop']:.4f}  {res.iterations} sigmas, {res.forwards} forwards, "
                      f"{seconds:.0f}s", file=sys.stderr, flush=True)
    result = {
        "target": "calibrated sigma hits the requested clean-accuracy drop",
        "goal": f"|drop - target| <= {CALIB_GOAL} on calib, <= {EVAL_GOAL} on eval (same sigma, fresh noise)",
        "quick": args.quick, "draws": draws, "threads": args.threads, "device": args.device,
        "torch": torch.__version__, "skipped_without_checkpoint": skipped,
        "calib_ok": f"{sum(r['calib_ok'] for r in rows)}/{len(rows)}",
        "eval_ok": f"{sum(r['eval_ok'] for r in rows)}/{len(rows)}",
        "rows": rows,
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
