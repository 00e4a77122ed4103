"""Run every benchmark script (benchmarks/bench_*.py) one after another and rewrite BENCHMARKS.md.

    python benchmarks/run_all.py [--quick] [--only NAME ...]

Each script measures one target as ratios within one run and writes benchmarks/results/<name>.json. They run one at a
time because two cores are easily oversubscribed; each sets its own torch thread count.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks that every script works")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark names (bench_<name>.py) to run")
    args = ap.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    failed = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        out = RESULTS / f"{name}.json"
        cmd = [sys.executable, str(script), "--out", str(out)] + (["--quick"] if args.quick else [])
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if rc != 0:
            failed.append(name)
    write_markdown(quick=args.quick)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def write_markdown(quick: bool) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Latest figures, produced by `python benchmarks/run_all.py" + (" --quick" if quick else "") + "`"
        + (" (small sizes: these check that every script works; the goals are judged at full size)." if quick else ".")
        + " Each result's `quick` field says at which size it was measured (a full-size result can come from"
        " `python benchmarks/run_all.py --only NAME`).",
        (f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads available, torch {torch.__version__}, "
         "CPU only. Ratios are measured within one run; absolute times vary with machine load."),
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {path.stem}", ""]
        # Headline: every scalar field (target, goal, whether it is met, the measured numbers), then the full JSON.
        lines += [f"- **{k}**: {_fmt(v)}" for k, v in data.items() if not isinstance(v, (list, dict))]
        lines += ["", "<details><summary>full result</summary>", "", "```json", json.dumps(data, indent=1), "```",
                  "", "</details>", ""]
    (HERE.parent / "BENCHMARKS.md").write_text("\n".join(lines))


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
