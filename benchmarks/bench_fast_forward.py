"""Fast forwards (rfd.models.fast): images/s of the reference models, plain eager vs each option, and end to end.

    python benchmarks/bench_fast_forward.py [--quick] [--out benchmarks/results/fast_forward.json] [--only PART ...]

Parts (all by default; torch threads 1):

* ``throughput``: fmnist-vgg, fmnist-resnet, fmnist-vit, undefended and with feature noise at the penultimate layer
  (sigma 0.1), at batch 1, 64 and 256 of bundled eval images: images/s of the plain eager forward (under
  ``no_grad``, as a black box forwards) and of each option (``inference``, ``channels_last``, ``compile``,
  ``compile,channels_last``), median of 3 timed runs of at least 0.3 s each (quick: 1 run), after a warm-up that
  includes compiling (its seconds are reported as ``compile_s``, batch 256 first, then the recompile for the
  other sizes). ``same_labels`` / ``max_abs_diff`` compare each option's logits with the plain ones on the same
  256 images (defended: same noise seed, so the same draws).
* ``heap``: plain forwards of the six models above at batch 64 and 256 before and after ``keep_heap()`` (the
  ``heap`` option: process-wide and permanent, hence measured as a before/after ratio in a process of its own).
* ``e2e``: the end-to-end effect of ``channels_last,compile,heap``: wall time of a one-cell
  Table-2 study (fmnist-vgg, feature noise at the penultimate layer calibrated to a 2% drop, Square l_inf eps
  0.05, 100 images x 1000 queries; quick 10 x 50) and of ``rfd demo`` at 100 images (the demo's other settings;
  quick 10 images x 50 queries), each run plain and fast into fresh stores in this process (one worker, one
  thread), with the robust accuracies of both runs (they must agree: the answers are the same up to float
  tolerance). Calibration forwards are not accelerated (they run on the model directly); they are part of the
  wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs
from torch import nn

from rfd.data.bundled import load_bundled
from rfd.defenses import DefenseSpec, defend
from rfd.models import accelerate, create_model
from rfd.models.registry import get_entry

MODELS = ("fmnist-vgg", "fmnist-resnet", "fmnist-vit")
OPTIONS = ("inference", "channels_last", "compile", "compile,channels_last")
BATCHES = (1, 64, 256)
PARTS = ("throughput", "heap", "e2e")
BEST = "channels_last,compile,heap"
NOISE = DefenseSpec(family="feature", layers=("penultimate",), sigma=0.1)
KEEP = ("method", "attack", "sigma", "clean_accuracy", "robust_accuracy", "robust_accuracy_strict")  # per cell


def _model(name: str) -> tuple[nn.Module, bool]:
    path = get_entry(name).checkpoint_path()
    trained = path is not None and path.is_file()
    torch.manual_seed(0)
    return create_model(name, pretrained=trained).eval(), trained


@torch.no_grad()
def _rate(f: nn.Module, x: torch.Tensor, runs: int) -> float:
    """Images/s of ``f`` on ``x``: median over ``runs`` timed runs of >= 0.3 s each."""
    rates = []
    for _ in range(runs):
        n, t0 = 0, time.perf_counter()
        while True:
            f(x)
            n += x.shape[0]
            dt = time.perf_counter() - t0
            if dt >= 0.3:
                break
        rates.append(n / dt)
    return statistics.median(rates)


def throughput(quick: bool) -> list[dict[str, Any]]:
    pool = load_bundled("eval").images[:256].contiguous()
    runs = 1 if quick else 3
    rows = []
    for name in MODELS:
        base, trained = _model(name)
        for defended in (False, True):
            def make(base: nn.Module = base, defended: bool = defended) -> nn.Module:
                return defend(base, NOISE, seed=0) if defended else base

            with torch.no_grad():
                ref = make()(pool)
            row: dict[str, Any] = {"model": name, "trained": trained,
                                   "defense": "feature penultimate sigma 0.1" if defended else "none",
                                   "plain": {str(b): _rate(make(), pool[:b], runs) for b in BATCHES}}
            for opt in OPTIONS:
                t0 = time.perf_counter()
                fast = accelerate(make(), opt)
                with torch.no_grad():
                    out = fast(pool)  # same seed as ref: the same noise draws
                    for b in BATCHES:
                        fast(pool[:b])  # compiles the dynamic-batch graph once
                compile_s = time.perf_counter() - t0
                rates = {str(b): _rate(fast, pool[:b], runs) for b in BATCHES}
                row[opt] = {**rates, "speedup": {b: rates[b] / row["plain"][b] for b in rates},
                            "compile_s": compile_s, "same_labels": bool(torch.equal(out.argmax(1), ref.argmax(1))),
                            "max_abs_diff": float((out - ref).abs().max())}
            rows.append(row)
            print(f"{name} {row['defense']}: plain {row['plain']['256']:.0f} img/s at 256; "
                  + ", ".join(f"{o} x{row[o]['speedup']['256']:.2f}" for o in OPTIONS), flush=True)
    return rows


def heap(quick: bool) -> dict[str, Any]:
    """Plain forwards at batch 64 and 256 before and after :func:`rfd.models.fast.keep_heap` (process-wide and
    permanent, so it is measured last in a process of its own: run_all runs each script in one)."""
    from rfd.models.fast import keep_heap

    pool = load_bundled("eval").images[:256].contiguous()
    runs = 1 if quick else 3
    models = {}
    for name in MODELS:
        base, _ = _model(name)
        models[name] = base
        models[f"{name} + feature noise"] = defend(base, NOISE, seed=0)
    before = {k: {str(b): _rate(m, pool[:b], runs) for b in (64, 256)} for k, m in models.items()}
    kept = keep_heap()
    after = {k: {str(b): _rate(m, pool[:b], runs) for b in (64, 256)} for k, m in models.items()}
    out = {"in_effect": kept, "before": before, "after": after,
           "speedup": {k: {b: after[k][b] / before[k][b] for b in before[k]} for k in before}}
    print("heap: " + ", ".join(f"{k} x{v['256']:.2f}" for k, v in out["speedup"].items()), flush=True)
    return out


def e2e(quick: bool) -> dict[str, Any]:
    from rfd.eval.demo import run_demo
    from rfd.eval.runner import run_study
    from rfd.eval.schema import parse_study

    n, budget = (10, 50) if quick else (100, 1000)
    study = parse_study({
        "name": "fast-e2e", "n": n, "seed": 0, "checkpoints": [budget], "chunk_size": 50,
        "models": ["fmnist-vgg"], "defenses": [{"family": "feature", "layers": ["penultimate"], "drops": [0.02]}],
        "attacks": [{"name": "square", "norm": "linf", "eps": 0.05, "budget": budget}]})
    out: dict[str, Any] = {"cell": {"study": study.to_dict()}, "demo": {"n": n, "budget": budget}}
    with tempfile.TemporaryDirectory() as tmp:
        for fast in ("plain", BEST):
            t0 = time.perf_counter()
            s = run_study(study, Path(tmp) / f"cell-{fast}.sqlite", fast=fast, progress=False)
            out["cell"][fast] = {"wall_s": time.perf_counter() - t0,
                                 "per_cell": [{k: c.get(k) for k in KEEP} for c in s.per_cell]}
            t0 = time.perf_counter()
            d = run_demo(Path(tmp) / f"demo-{fast}", n=n, budget=budget, fast=fast, workers=1, threads=1,
                         progress=False)
            out["demo"][fast] = {"wall_s": time.perf_counter() - t0,
                                 "per_cell": [{k: c.get(k) for k in KEEP} for c in d.summary.per_cell]}
            print(f"e2e {fast}: cell {out['cell'][fast]['wall_s']:.0f} s, demo {out['demo'][fast]['wall_s']:.0f} s",
                  flush=True)
    for part in ("cell", "demo"):
        out[part]["speedup"] = out[part]["plain"]["wall_s"] / out[part][BEST]["wall_s"]
        out[part]["same_results"] = out[part]["plain"]["per_cell"] == out[part][BEST]["per_cell"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one timed run per figure, tiny end-to-end runs")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--only", nargs="*", choices=PARTS, default=None, help="parts to run (default all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts = args.only or list(PARTS)
    result: dict[str, Any] = {}
    if args.only and args.out and Path(args.out).is_file():  # a part re-run keeps the other parts' figures
        result = json.loads(Path(args.out).read_text())
    result.update({"benchmark": "fast_forward", "quick": args.quick, "threads": 1, "torch": torch.__version__,
                   "options": list(OPTIONS), "batches": list(BATCHES)})
    t_all = time.perf_counter()
    if "throughput" in parts:
        rows = throughput(args.quick)
        result["throughput"] = rows
        result["best_speedup_at_256"] = {
            f"{r['model']} {r['defense']}": max(((o, r[o]["speedup"]["256"]) for o in OPTIONS), key=lambda t: t[1])
            for r in rows}
        result["all_same_labels"] = all(r[o]["same_labels"] for r in rows for o in OPTIONS)
    if "e2e" in parts:
        result["e2e"] = e2e(args.quick)
    if "heap" in parts:
        if len(parts) == 1:
            result["heap"] = heap(args.quick)
        else:  # keep_heap() cannot be undone: measure it in a process of its own, after the other parts
            with tempfile.TemporaryDirectory() as tmp:
                child = Path(tmp) / "heap.json"
                subprocess.run([sys.executable, __file__, "--only", "heap", "--out", str(child)]
                               + (["--quick"] if args.quick else []), check=True, stdout=subprocess.DEVNULL)
                result["heap"] = json.loads(child.read_text())["heap"]
    result["total_s"] = time.perf_counter() - t_all  # of the parts run now
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
