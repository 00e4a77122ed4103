"""Inference overhead of each defense: defended / undefended forward time on the reference models.

    python benchmarks/bench_defense_overhead.py [--quick] [--out benchmarks/results/defense_overhead.json]

For every reference model, batch size (1, 100, 1000) and defense (feature noise at the penultimate layer and at a
hidden layer, input noise, logits noise, AAA), the undefended and the defended forward are timed alternately
(interleaved, so machine-load drifts hit both) and the ratio of their median times is reported. Goal: <= 1.05
for feature and input noise. Timing does not depend on the weights: models without a trained checkpoint are
timed with random weights (reported as such).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs

from rfd.data.bundled import load_bundled
from rfd.defenses import DefenseSpec, defend
from rfd.models import create_model
from rfd.models.registry import get_entry

MODELS = {  # model -> a hidden layer for the "feature (hidden)" row
    "fmnist-vgg": "net.features.9",
    "fmnist-resnet": "net.layer2",
    "fmnist-vit": "net.blocks.3",
}
GOAL = 1.05


def _model(name: str) -> tuple[torch.nn.Module, str]:
    path = get_entry(name).checkpoint_path()
    if path is not None and path.is_file():
        return create_model(name), "trained"
    torch.manual_seed(0)
    return create_model(name, pretrained=False), "random (no checkpoint; timing does not depend on weights)"


def _time(fn, x: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def measure(model: torch.nn.Module, defended: torch.nn.Module, x: torch.Tensor, reps: int) -> dict[str, float]:
    with torch.no_grad():
        for _ in range(2):  # warm-up
            model(x)
            defended(x)
        base, dfd = [], []
        for r in range(reps):
            if r % 2:  # alternate the order so neither side always runs second
                base.append(_time(model, x))
                dfd.append(_time(defended, x))
            else:
                dfd.append(_time(defended, x))
                base.append(_time(model, x))
    mb, md = statistics.median(base), statistics.median(dfd)
    return {"undefended_ms": 1e3 * mb, "defended_ms": 1e3 * md, "ratio": md / mb, "reps": reps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batches 1 and 100, few repetitions")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [1, 100] if args.quick else [1, 100, 1000]
    reps = {1: 30, 100: 6, 1000: 3} if args.quick else {1: 300, 100: 40, 1000: 12}
    images = load_bundled("eval").images
    rows = []
    for name, hidden in MODELS.items():
        model, weights = _model(name)
        specs = {
            "feature (penultimate)": DefenseSpec(family="feature", sigma=0.1, layers=("penultimate",)),
            f"feature ({hidden})": DefenseSpec(family="feature", sigma=0.1, layers=(hidden,)),
            "input": DefenseSpec(family="input", sigma=0.05),
            "logits": DefenseSpec(family="logits", sigma=0.1),
            "aaa": DefenseSpec(family="aaa"),
        }
        for b in batches:
            x = images[:b].contiguous()
            for label, spec in specs.items():
                with defend(model, spec) as d:
                    m = measure(model, d, x, reps[b])
                row = {"model": name, "weights": weights, "batch": b, "defense": label, **m}
                if spec.family in ("feature", "input"):
                    row["meets_goal"] = m["ratio"] <= GOAL
                rows.append(row)
                print(f"{name:14s} batch {b:5d} {label:26s} ratio {m['ratio']:.3f} "
                      f"({m['defended_ms']:.2f} / {m['undefended_ms']:.2f} ms)", file=sys.stderr, flush=True)
    noise_rows = [r for r in rows if "meets_goal" in r]
    result = {
        "target": "defended / undefended forward time (median of interleaved repetitions)",
        "goal": f"ratio <= {GOAL} for feature and input noise",
        "quick": args.quick, "threads": args.threads, "torch": torch.__version__,
        "worst_noise_ratio": max(r["ratio"] for r in noise_rows),
        "noise_rows_meeting_goal": f"{sum(r['meets_goal'] for r in noise_rows)}/{len(noise_rows)}",
        "rows": rows,
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
