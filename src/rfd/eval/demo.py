"""The main job: on the embedded default (``fmnist-vgg`` and the bundled Fashion-MNIST images), compare no
defense, input noise and feature noise at the same clean-accuracy cost against Square (l_inf) and RayS, and
write a report folder (Markdown, CSVs, plot, and the SQLite store it was computed from).

Noise levels are calibrated on the bundled calibration split; attacks run on the disjoint evaluation split.
The store makes the demo resumable: run it again with the same folder and finished chunks are skipped."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfd.defenses.spec import DefenseSpec
from rfd.eval.plan import plan_study
from rfd.eval.runner import run_study
from rfd.eval.specs import AttackSpec, ModelSpec, Study
from rfd.eval.summary import RunSummary
from rfd.jsonable import freeze

__all__ = ["DEMO_MODEL", "DemoResult", "demo_study", "run_demo"]

DEMO_MODEL = "fmnist-vgg"
DEMO_ATTACKS = ("square", "rays")
# Calibration of the demo: 5 noise draws per sigma on the 1000 calibration images, stop within 0.2 points of the
# target drop (about half the forwards of rfd.defenses.calibrate's defaults, which aim at 0.1 points).
DEMO_CALIBRATION = {"draws": 5, "tol": 0.002}


def default_workers(device: str = "cpu") -> int:
    """Worker processes for the demo: one per CPU core (at most 4) on CPU, a single process on a GPU."""
    if not device.startswith("cpu"):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out_dir: str
    table_md: str  # the robust-accuracy table (Markdown)
    paths: dict[str, str]  # report.md, table CSV, plot PNG, samples CSV, results.sqlite
    summary: RunSummary
    elapsed_s: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "table_md": self.table_md, "paths": self.paths, "elapsed_s": self.elapsed_s,
                "settings": self.settings, "summary": self.summary.to_dict()}


def demo_study(*, n: int = 200, budget: int = 1000, drop: float = 0.02, model: ModelSpec | None = None,
               attacks: tuple[str, ...] = DEMO_ATTACKS, eps: float = 0.05, chunk_size: int = 100,
               checkpoints: tuple[int, ...] = (100, 250, 500, 1000), calibration: dict[str, Any] | None = None,
               verify: int = 9, seed: int = 0) -> Study:
    """The demo as a :class:`Study` (n images, budget queries, noise at the same ``drop`` for both families)."""
    cps = tuple(sorted({c for c in checkpoints if c < budget} | {budget}))
    return Study(
        name="demo",
        description=f"{(model.display if model else DEMO_MODEL)}: none vs input vs feature noise at a "
                    f"{100 * drop:g}-point clean-accuracy drop; {', '.join(attacks)}",
        models=(model or ModelSpec(name=DEMO_MODEL),),
        defenses=(DefenseSpec(family="none"), DefenseSpec(family="input", drop=drop),
                  DefenseSpec(family="feature", layers=("penultimate",), drop=drop)),
        attacks=tuple(AttackSpec(name=a, norm="linf", eps=eps, budget=budget, verify=verify) for a in attacks),
        n=n, seed=seed, checkpoints=cps, chunk_size=chunk_size,
        calibration=freeze(DEMO_CALIBRATION if calibration is None else calibration),
    )


def run_demo(out_dir: str | os.PathLike[str] = "rfd-demo", *, n: int = 200, budget: int = 1000, drop: float = 0.02,
             model: ModelSpec | None = None, attacks: tuple[str, ...] = DEMO_ATTACKS, chunk_size: int = 100,
             checkpoints: tuple[int, ...] = (100, 250, 500, 1000), calibration: dict[str, Any] | None = None,
             verify: int = 9, device: str = "cpu", fast: str = "plain", progress: bool = True, workers: int | None = None,
             threads: int | None = None) -> DemoResult:
    """Run the demo study into ``out_dir/results.sqlite`` (resuming if present) and write the report folder.

    ``workers``: local processes (default :func:`default_workers`: one per core on CPU), ``threads`` torch
    threads each (default 1 with several workers); ``fast``: forward speed-ups (see
    :func:`rfd.eval.runner.run_study`)."""
    if workers is None:
        workers = default_workers(device)
    t0 = time.perf_counter()
    study = demo_study(n=n, budget=budget, drop=drop, model=model, attacks=attacks, chunk_size=chunk_size,
                       checkpoints=checkpoints, calibration=calibration, verify=verify)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "results.sqlite"
    summary = run_study(study, db, device=device, fast=fast, progress=progress, workers=workers,
                        executor_options={"threads": threads or 1} if workers > 1 else None)
    keys = {c.key for c in plan_study(study).cells}
    from rfd.eval.reporting import write_report

    settings = {"model": study.models[0].display, "n": n, "budget": budget, "drop": drop, "attacks": list(attacks),
                "eps": study.attacks[0].eps, "verify": verify, "device": device, "fast": fast,
                "workers": workers}
    intro = (f"Model `{settings['model']}`, {n} class-balanced images of the bundled Fashion-MNIST evaluation split, "
             f"{budget} queries per image, l_inf eps {settings['eps']:g}; success verified by the majority of "
             f"{verify} forwards (not counted as queries); every final image is then classified again with "
             f"{study.attacks[0].reevaluate} fresh forwards: `paper` counts every verified break, `strict` only "
             "breaks misclassified in more than half of them (a lucky pass of the check does not count); every "
             "defense meets the same attack draws, so the comparisons below are paired. "
             f"Input and feature noise are calibrated on the disjoint "
             f"calibration split to the same {100 * drop:g}-point drop in clean accuracy (expected accuracy over "
             f"noise draws; Acc below is the majority-vote accuracy on the evaluation images). Computed in "
             f"{summary.elapsed_s:.0f} s; the store `results.sqlite` holds every per-image outcome "
             "(`rfd report results.sqlite --table runs`).")
    paths = write_report(db, out, ["robust"], title="rfd demo: randomized feature vs input noise", intro=intro,
                         run_keys=keys)
    paths["db"] = str(db)
    table_md = Path(paths["report"]).read_text().split("**", 1)[1]
    table_md = "**" + table_md.split("![", 1)[0].rstrip() + "\n"
    return DemoResult(out_dir=str(out), table_md=table_md, paths=paths, summary=summary,
                      elapsed_s=time.perf_counter() - t0, settings=settings)
