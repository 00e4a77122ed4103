"""Executing work: one chunk of one cell, or one calibration. The same functions run in the local executor
and inside Ray tasks; everything a task needs is rebuilt from the (small, picklable) task description.

Determinism and pairing: a chunk's attack seed is fixed by (study seed, attack key, chunk), where the attack key
names the attack and its settings but neither the model's defense nor the success check, so every defense of a
study meets the same attack draws on the same images (common random numbers: "input vs feature" and "2% vs 4%"
are paired comparisons). The defense's noise seed is fixed by (study seed, run key, chunk). The defended model's
generator is re-seeded at the start of every chunk, so a chunk replays identically whenever and wherever it
runs (same device type and thread count)."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rfd.attacks.base import Attack
from rfd.data.source import EvalData, select_data
from rfd.defenses.spec import DefenseSpec
from rfd.detect.base import Detector
from rfd.eval.cells import Cell, expand_cells
from rfd.eval.resources import build_model
from rfd.eval.seeds import content_key, derive_seed
from rfd.eval.specs import AttackSpec, ModelSpec, Study
from rfd.eval.store import ChunkInfo, SampleRow, canonical
from rfd.jsonable import thaw

__all__ = [
    "CalibrationTask",
    "ChunkOutput",
    "ChunkTask",
    "WorkerContext",
    "attack_seed_key",
    "execute_calibration",
    "execute_chunk",
    "make_cell_attack",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkTask:
    """One work unit: chunk ``chunk`` of cell ``cell_index`` of ``study``, at noise level ``sigma``."""

    study: Study
    cell_index: int
    chunk: int
    run_id: int
    run_key: str
    sigma: float | None  # resolved noise level of the cell's defense (None for none/aaa)
    device: str = "cpu"
    fast: str = "plain"  # forward speed-ups of the attacked model (rfd.models.fast; results equal up to float tolerance)
    data_digest: str = ""  # digest of the evaluation images the planner saw (checked by the worker)
    attack_key: str = ""  # the cell's attack without the check settings (see attack_seed_key)

    @property
    def seed(self) -> int:
        """The attack's seed: the same for every defense and check setting of the study (paired draws)."""
        return derive_seed(self.study.seed, "attack", self.attack_key, self.chunk)

    @property
    def noise_seed(self) -> int:
        """The defense's noise seed (its own per run)."""
        return derive_seed(self.study.seed, self.run_key, self.chunk, "noise")


# The check settings change what counts as a success, not the attack's random draws.
# Settings of the black box, not of the attack: runs that differ only in them share the attack's draws (paired).
_CHECK_FIELDS = ("verify", "check", "reevaluate", "label", "output")


def attack_seed_key(setting: AttackSpec) -> str:
    """What an attack's seed depends on: its name and settings, not the check, the defense or the model."""
    d = {k: v for k, v in setting.to_dict().items() if k not in _CHECK_FIELDS}
    return content_key(canonical(d))


@dataclass(frozen=True)
class ChunkOutput:
    """A finished chunk: its bookkeeping and one row per image."""

    run_id: int
    info: ChunkInfo
    rows: tuple[SampleRow, ...]


@dataclass(frozen=True)
class CalibrationTask:
    """Calibrate ``defense`` (a noise family with a target drop) on ``model`` with the study's calib images."""

    study: Study
    model: ModelSpec
    defense: DefenseSpec
    key: str
    device: str = "cpu"
    fast: str = "plain"  # forward speed-ups of the calibration forwards (rfd.models.fast)


def make_cell_attack(setting: AttackSpec, seed: int) -> Attack:
    """The attack of a cell with ``seed`` (unknown settings fail naming the attack's valid ones)."""
    return setting.make_attack(seed)


class WorkerContext:
    """Per-process caches: study data, base models, defended models (a few of each, least recently used out).

    Defended modules share their base model: the defense hooks act only inside their own forward."""

    def __init__(self, *, max_models: int = 2, max_defended: int = 4) -> None:
        self._models: OrderedDict[tuple[Any, ...], nn.Module] = OrderedDict()
        self._defended: OrderedDict[tuple[Any, ...], nn.Module] = OrderedDict()
        self._cells: dict[Study, list[Cell]] = {}
        self._detectors: dict[tuple[Any, ...], Detector] = {}
        self.max_models = max_models
        self.max_defended = max_defended

    def cells(self, study: Study) -> list[Cell]:
        if study not in self._cells:
            self._cells = {study: expand_cells(study)}  # one study at a time: keep only the latest
        return self._cells[study]

    def detector(self, study: Study, cell: Cell, device: str) -> Detector | None:
        """The cell's stateful detector (None without one), built once per (model, detector): its salt from the
        study seed (one deployment secret for the whole study: every defense meets the same detector), a kNN
        threshold from the study's calibration images. Histories are emptied at every attack (``start``)."""
        spec = cell.defense.detector
        if spec is None:
            return None
        from rfd.detect import build_detector

        key = (cell.model, device, str(spec), study.seed)
        if key not in self._detectors:
            model = self.model(cell.model, device)
            benign = self.data(study).calib_images.to(device) if spec.kind == "knn" else None
            self._detectors[key] = build_detector(spec, seed=derive_seed(study.seed, "detector"), model=model,
                                                  benign=benign)
        return self._detectors[key]

    def data(self, study: Study) -> EvalData:
        return select_data(study.data, study.n, study.seed)

    def model(self, spec: ModelSpec, device: str) -> nn.Module:
        key = (spec, device)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = build_model(spec, device)
        self._models[key] = model
        while len(self._models) > self.max_models:
            old_key, _ = self._models.popitem(last=False)
            for dk in [k for k in self._defended if k[0] == old_key]:
                self._drop_defended(dk)
        return model

    def _drop_defended(self, key: tuple[Any, ...]) -> None:
        d = self._defended.pop(key)
        remove = getattr(d, "remove", None)
        if callable(remove):
            remove()

    def defended(self, study: Study, cell: Cell, sigma: float | None, device: str, fast: str = "plain"
                 ) -> nn.Module:
        """The cell's defended model, with the forward speed-ups ``fast`` (:func:`rfd.models.accelerate`): built
        once per process, so a fast copy (and its compiled code) serves every chunk of the cell."""
        from rfd.defenses import defend
        from rfd.models.fast import accelerate

        mkey = (cell.model, device)
        key = (mkey, cell.defense, sigma, fast)
        if key in self._defended:
            self._defended.move_to_end(key)
            return self._defended[key]
        model = self.model(cell.model, device)
        spec = cell.defense if sigma is None else cell.defense.replace(sigma=float(sigma))
        calib = self.data(study).calib_images.to(device) if spec.scaled else None
        raw = defend(model, spec, seed=study.seed, calib_images=calib)
        d = accelerate(raw, fast)
        if d is not raw:  # the fast copy has hooks of its own: the original's come off the shared base model
            raw.remove()
        self._defended[key] = d
        while len(self._defended) > self.max_defended:
            self._drop_defended(next(iter(self._defended)))
        return d


_CONTEXT: WorkerContext | None = None


def default_context() -> WorkerContext:
    """The process-wide context (Ray workers keep models loaded between tasks through it)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = WorkerContext()
    return _CONTEXT


def execute_chunk(task: ChunkTask, ctx: WorkerContext | None = None, *, progress: bool = False) -> ChunkOutput:
    """Attack the images of one chunk and return one row per image (nothing is written here)."""
    from rfd.blackbox.base import BlackBox
    from rfd.blackbox.local import LocalBlackBox
    from rfd.blackbox.stateful import StatefulBlackBox

    ctx = ctx or default_context()
    study = task.study
    cell = ctx.cells(study)[task.cell_index]
    data = ctx.data(study)
    if task.data_digest and data.identity["digest"] != task.data_digest:
        raise RuntimeError(f"the evaluation images on this worker (digest {data.identity['digest']}) differ from "
                           f"the planner's ({task.data_digest}): same dataset files needed everywhere")
    start, stop = study.chunk_bounds(task.chunk)
    x = data.images[start:stop]
    y = data.labels[start:stop]
    defended = ctx.defended(study, cell, task.sigma, task.device, task.fast)
    if not task.attack_key:
        raise ValueError("ChunkTask.attack_key is empty: build tasks with attack_seed_key(cell.attack)")
    seed = task.seed
    manual_seed = getattr(defended, "manual_seed", None)
    if callable(manual_seed):
        manual_seed(task.noise_seed)
    attack = make_cell_attack(cell.attack, seed)
    a = cell.attack
    bb: BlackBox = LocalBlackBox(defended, access=attack.blackbox_access(), output=a.output, budget=a.budget,
                                 verify=a.verify, check=a.check, reevaluate=a.reevaluate)  # type: ignore[arg-type]
    detector = ctx.detector(study, cell, task.device)
    if detector is not None:
        bb = StatefulBlackBox(bb, detector)
    t0 = time.perf_counter()
    res = attack.run(bb, x, y, progress=progress)
    elapsed = time.perf_counter() - t0
    didx = data.dataset_index[start:stop].tolist()
    labels = y.tolist()
    n = len(labels)
    if isinstance(bb, StatefulBlackBox):
        flagged, rejected, first = bb.flagged.tolist(), bb.rejected.tolist(), bb.first_flag.tolist()
    else:
        flagged = rejected = first = [None] * n
    rows = tuple(
        SampleRow(sample=start + i, dataset_index=int(didx[i]), label=int(labels[i]),
                  clean_correct=r["clean_correct"], success=r["success"], queries=r["queries"], linf=r["linf"],
                  l2=r["l2"], checks=r["checks"], check_forwards=r["check_forwards"],
                  claims=json.dumps(r["claims"]), p_wrong=r["p_wrong"], clean_p_wrong=r["clean_p_wrong"],
                  flagged=flagged[i], rejected=rejected[i], first_flag=first[i])
        for i, r in enumerate(res.records())
    )
    info = ChunkInfo(chunk=task.chunk, seed=seed, n_samples=len(rows), queries=int(bb.queries.sum()),
                     verification_forwards=int(bb.verification_forwards), elapsed_s=elapsed,
                     reevaluation_forwards=int(bb.reevaluation_forwards))
    return ChunkOutput(run_id=task.run_id, info=info, rows=rows)


def execute_calibration(task: CalibrationTask, ctx: WorkerContext | None = None, *,
                        progress: bool = False) -> dict[str, Any]:
    """Calibrate one defense; returns the record stored in the results store (sigma, accuracies, cost)."""
    from rfd.defenses import calibrate

    ctx = ctx or default_context()
    study = task.study
    data = ctx.data(study)
    model = ctx.model(task.model, task.device)
    if not task.defense.needs_calibration:
        raise ValueError("execute_calibration needs a defense with a target drop and no sigma")
    options = {"seed": study.seed, **thaw(study.calibration)}
    t0 = time.perf_counter()
    res = calibrate(model, task.defense, data.calib_images.to(task.device), data.calib_labels.to(task.device),
                    progress=progress, fast=task.fast, **options)
    elapsed = time.perf_counter() - t0
    record = {k: v for k, v in res.to_dict().items() if k != "spec"}
    record.update(sigma=float(res.sigma), model=task.model.name, defense=task.defense.calibration_dict(),
                  elapsed_s=elapsed, calib_images=int(data.calib_images.shape[0]))
    return record


def set_threads(n: int | None) -> None:
    """Set torch intra-op threads (workers: results are bit-identical only at the same thread count)."""
    if n is not None and n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)
