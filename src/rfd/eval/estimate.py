"""How long a study will take: forward passes it needs (an upper bound) and time from measured throughput.

Attack queries: at most ``n x budget`` per cell (every image spends its whole budget; undefended cells stop
much earlier, so this bounds from above). Success checks are not queries but cost forwards: ``verify`` per
clean image, plus ``verify`` per claimed success: 10 claims per image are assumed (the demo measured 1 to 18
per image on average per cell; noise makes false claims frequent), an estimate, not a bound. Calibration:
``images x (draws x evaluations + 2)`` per noise level, with 8 evaluations (5 to 7 measured).
Time divides each model's forwards by its throughput per core (process CPU time, so a busy shared machine does
not deflate it) measured here at the study's chunk size, undefended
(the defenses' overhead is a few percent); attack bookkeeping and shrinking batches make real runs slower,
undefended cells (early stops) faster.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rfd.eval.cells import expand_cells
from rfd.eval.resources import build_model
from rfd.eval.specs import ModelSpec, Study
from rfd.jsonable import thaw

__all__ = ["CALIBRATION_EVALUATIONS", "Estimate", "estimate_study", "measure_throughput"]

CLAIMS_PER_IMAGE = 10  # success claims verified per image (measured 1-18 per cell in the demo)
CALIBRATION_EVALUATIONS = 8  # sigma values a calibration evaluates: 5 to 7 measured on fmnist-vgg, plus margin


@dataclass
class Estimate:
    """Forward passes (upper bound) and estimated seconds, in total and per model."""

    study: str
    cells: int
    forwards: int  # attack queries + success checks + re-evaluation + calibration
    attack_queries: int
    verification_forwards: int
    calibration_forwards: int
    reevaluation_forwards: int
    seconds: float
    throughput: dict[str, float]  # images per second per model (measured)
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1
    workers: int = 1
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def measure_throughput(spec: ModelSpec, *, batch: int, device: str = "cpu", seconds: float = 1.0,
                       input_shape: tuple[int, ...] | None = None) -> float:
    """Images per second of ``spec``'s forward at ``batch`` images (random [0, 1] inputs), measured for about
    ``seconds`` after one warm-up call. Registry models without their checkpoint are timed with random
    weights (same architecture, same cost).

    On CPU the clock is this process's CPU time, so the figure is images per second of one busy core (per
    thread): other jobs on a shared machine do not deflate it. On a GPU it is wall time."""
    try:
        model = build_model(spec, device)
    except FileNotFoundError:
        if spec.factory is not None or spec.checkpoint is not None:
            raise
        from rfd.models.registry import create_model

        model = create_model(spec.name, pretrained=False, device=device)
    shape = input_shape or tuple(getattr(model, "input_shape", (1, 28, 28)))
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    gpu = device.startswith("cuda")
    clock = time.perf_counter if gpu else time.process_time
    model(x)
    if gpu:
        torch.cuda.synchronize()
    t0 = clock()
    k = 0
    while True:
        model(x)
        k += 1
        if gpu:
            torch.cuda.synchronize()
        el = clock() - t0
        if el >= seconds:
            return k * batch / el


def estimate_study(study: Study, *, device: str = "cpu", seconds_per_model: float = 1.0,
                   throughput: dict[str, float] | None = None, workers: int = 1) -> Estimate:
    """Upper-bound forward count of ``study`` and its time at the throughput measured on this machine.

    ``throughput`` ({model display name: images/s}) skips the measurement (tests, or numbers from elsewhere).
    ``workers``: parallel worker processes (time divided by their number: ideal scaling, each at the measured
    single-process throughput). On CPU the throughput is per core and per torch thread, so time assumes the
    job gets ``workers x threads`` idle cores."""
    cells = expand_cells(study)
    per: dict[str, dict[str, float]] = {}
    tp: dict[str, float] = dict(throughput or {})
    draws = int(thaw(study.calibration).get("draws", 10))
    calibrated: set[tuple[Any, ...]] = set()
    for c in cells:
        m = c.model.display
        d = per.setdefault(m, {"attack_queries": 0, "verification_forwards": 0, "calibration_forwards": 0,
                               "reevaluation_forwards": 0})
        d["attack_queries"] += c.n * c.attack.budget  # charged checks are part of the budget
        if c.attack.check == "free":
            d["verification_forwards"] += (1 + CLAIMS_PER_IMAGE) * c.n * c.attack.verify  # clean check + claims
        else:
            d["verification_forwards"] += c.n * c.attack.verify  # the clean check only
        d["reevaluation_forwards"] += 2 * c.n * c.attack.reevaluate  # clean images + broken final images (bound)
        if c.defense.needs_calibration and (c.model, c.defense) not in calibrated:
            calibrated.add((c.model, c.defense))
            d["calibration_forwards"] += _calib_count(study) * (draws * CALIBRATION_EVALUATIONS + 2)
    for m_spec in study.models:
        m = m_spec.display
        if m not in tp:
            tp[m] = measure_throughput(m_spec, batch=study.chunk_size, device=device, seconds=seconds_per_model)
    seconds = 0.0
    for m, d in per.items():
        f = d["attack_queries"] + d["verification_forwards"] + d["reevaluation_forwards"] + d["calibration_forwards"]
        d["forwards"] = f
        cores = max(1, workers) * (1 if device.startswith("cuda") else torch.get_num_threads())
        d["seconds"] = f / tp[m] / cores
        seconds += d["seconds"]
    tot = {k: int(sum(d[k] for d in per.values())) for k in ("attack_queries", "verification_forwards",
                                                             "calibration_forwards", "reevaluation_forwards")}
    return Estimate(
        study=study.name, cells=len(cells), forwards=sum(tot.values()), seconds=seconds, throughput=tp,
        per_model=per, device=device, threads=torch.get_num_threads(), workers=workers,
        note=("attack queries: upper bound (every image spends its whole budget); verification: estimate; "
              "re-evaluation: upper bound (R forwards per clean image and per broken final image); time at "
              "full-batch forward throughput per core "
              "(process CPU time), ideal scaling over workers x threads"), **tot)


def _calib_count(study: Study) -> int:
    """Calibration images of ``study`` (counted by selecting them when the study takes a whole split)."""
    if study.data.calib_images is not None:
        return study.data.calib_images
    from rfd.data.source import select_data

    return int(select_data(study.data, study.n, study.seed).calib_images.shape[0])
