"""Run a study into a results store: plan, calibrate, execute chunks (locally or on Ray), write, summarize.

Work is split into units (cell, chunk): ``study.chunk_size`` consecutive images of one cell, with an attack seed
fixed by (study seed, attack, chunk), the same for every defense (paired draws), and a noise seed by (study seed,
run key, chunk). Each finished unit is written in one transaction; re-running skips finished
units, so a killed run resumes where it stopped and ends with exactly the rows an uninterrupted run writes.
``--shard i/n`` takes every n-th unit (deterministic; :mod:`rfd.eval.plan`), and ``rfd merge`` joins the shards'
stores. Where units are computed is the executor's business (:mod:`rfd.eval.executors`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from rfd.eval.executors import Executor, make_executor
from rfd.eval.plan import (
    Plan,
    PlannedCell,
    Shard,
    cell_label,
    pending_units,
    plan_study,
)
from rfd.eval.progress import ChunkProgress
from rfd.eval.specs import Study
from rfd.eval.store import ResultStore, StoreConflict
from rfd.eval.summary import RunSummary, cell_outcomes
from rfd.eval.worker import CalibrationTask, ChunkOutput, ChunkTask, attack_seed_key
from rfd.models.fast import parse_fast

__all__ = ["run_study"]

log = logging.getLogger(__name__)

# Parts of a calibration record that are deterministic for a seed (they go into run configs; timings do not).
_CALIBRATION_FIELDS = ("sigma", "target_drop", "accuracy", "accuracy_se", "base_accuracy", "drop", "converged")


def run_study(
    study: Study,
    db: str | os.PathLike[str],
    *,
    device: str = "cpu",
    fast: str = "plain",
    shard: Shard | None = None,
    executor: str = "local",
    address: str | None = None,
    executor_options: dict[str, Any] | None = None,
    calibrate_only: bool = False,
    max_units: int | None = None,
    progress: bool = True,
    workers: int = 1,
    on_chunk: Callable[[ChunkTask, ChunkOutput], None] | None = None,
) -> RunSummary:
    """Run (or resume) ``study`` into the SQLite store ``db``.

    Args:
        device: torch device of models and attacks (``"cuda"`` on a GPU machine).
        fast: forward speed-ups of the attacked models (:func:`rfd.models.parse_fast`: ``"compile"``,
            ``"channels_last"``, ``"inference"``, ``"all"``; ``"plain"`` = eager). A run option like ``device``:
            answers equal the plain ones up to float tolerance, so it is not part of the study or its store.
        shard: run only this shard's units (``Shard(i, n)``); None = all.
        executor: ``"local"`` (this process, or ``workers`` local processes) or ``"ray"`` (Ray tasks; ``address``
            of a running cluster, else a local Ray instance; ``executor_options`` e.g. ``{"num_gpus": 1,
            "threads": 1}``; with local workers ``{"threads": 1}``, torch threads per worker).
        workers: local worker processes (1 = run in this process).
        calibrate_only: calibrate every noise level the shard needs, store it, and stop (copy the store to the
            machines of a sharded run so that all shards use the same sigma).
        max_units: stop after this many units (for tests and smoke runs); None = all.
        progress: tqdm bars on stderr (overall, per cell, per chunk) with ETA.
        on_chunk: called after each chunk is stored (tests use it).

    Returns:
        :class:`RunSummary` (counts, timings, per-cell clean and robust accuracy read back from the store).
    """
    t_start = time.perf_counter()
    fast = str(parse_fast(fast))  # a bad setting fails here, before any worker starts
    shard = shard or Shard()
    plan = plan_study(study)
    units = plan.shard(shard)
    cells = {c.cell.index: c for c in plan.cells}
    if workers > 1 and executor != "local":
        raise ValueError("workers > 1 applies to the local executor (Ray sizes itself from the cluster)")
    ex = make_executor(executor, progress=progress, address=address, workers=workers, **(executor_options or {}))
    try:
        return _run(study, db, plan, units, cells, ex, shard=shard, device=device, fast=fast,
                    calibrate_only=calibrate_only, max_units=max_units, progress=progress, on_chunk=on_chunk, t_start=t_start)
    finally:
        ex.close()


def _run(study: Study, db: str | os.PathLike[str], plan: Plan, units: list[tuple[int, int]],
         cells: dict[int, PlannedCell], ex: Executor, *, shard: Shard, device: str, fast: str, calibrate_only: bool,
         max_units: int | None, progress: bool, on_chunk: Callable[[ChunkTask, ChunkOutput], None] | None,
         t_start: float) -> RunSummary:
    with ResultStore(db) as store:
        store.put_study(study.name, study.to_dict())
        pending = pending_units(units, cells, store.finished_by_key())
        done_before = len(units) - len(pending)
        needed_cells = {u[0] for u in (units if calibrate_only else pending)}
        sigmas, calibrations_run, reused = _calibrate(store, ex, plan, cells, needed_cells, device=device,
                                                      fast=fast)
        calibration_info = [dict(key=k, **{f: v.get(f) for f in ("model", "defense", "sigma", "accuracy",
                                                                     "base_accuracy", "drop", "target_drop")})
                            for k, v in sigmas.items()]
        if calibrate_only:
            return RunSummary(study=study.name, db=str(db), shard=str(shard), executor=ex.name, cells=len(plan.cells),
                              units_total=len(units), units_done_before=done_before, units_run=0, samples_written=0,
                              calibrations_run=calibrations_run, calibrations_reused=reused,
                              elapsed_s=time.perf_counter() - t_start, calibrations=calibration_info)

        run_ids, cell_sigma = _open_runs(store, study, units, cells, needed_cells, sigmas)
        if max_units is not None:
            pending = pending[:max_units]
        tasks = [ChunkTask(study=study, cell_index=ci, chunk=k, run_id=run_ids[ci], run_key=cells[ci].key,
                           sigma=cell_sigma[ci], device=device, fast=fast, data_digest=plan.data.identity["digest"],
                           attack_key=attack_seed_key(cells[ci].cell.attack))
                 for ci, k in pending]
        written = _execute(tasks, ex, store, plan, progress=progress, on_chunk=on_chunk)
        per_cell = cell_outcomes(store, [cells[ci] for ci in sorted(run_ids)], run_ids)
    return RunSummary(
        study=study.name, db=str(db), shard=str(shard), executor=ex.name, cells=len(plan.cells),
        units_total=len(units), units_done_before=done_before, units_run=len(tasks), samples_written=written,
        calibrations_run=calibrations_run, calibrations_reused=reused, elapsed_s=time.perf_counter() - t_start,
        per_cell=per_cell, calibrations=calibration_info,
    )


def _calibrate(store: ResultStore, ex: Executor, plan: Plan, cells: dict[int, PlannedCell], needed_cells: set[int],
               *, device: str, fast: str = "plain") -> tuple[dict[str, dict[str, Any]], int, int]:
    """Calibrate once per (model, defense, drop) that ``needed_cells`` lack, storing each record; re-use stored
    ones. Returns (record by calibration key, calibrations run, calibrations re-used)."""
    sigmas: dict[str, dict[str, Any]] = {}
    todo: dict[str, CalibrationTask] = {}
    reused = 0
    for ci in sorted(needed_cells):
        pc = cells[ci]
        if pc.calibration_key is None or pc.calibration_key in sigmas or pc.calibration_key in todo:
            continue
        rec = store.get_calibration(pc.calibration_key)
        if rec is not None:
            sigmas[pc.calibration_key] = rec
            reused += 1
        else:
            todo[pc.calibration_key] = CalibrationTask(study=plan.study, model=pc.cell.model, defense=pc.cell.defense,
                                                       key=pc.calibration_key, device=device, fast=fast)
    if todo:
        log.info("calibrating %d noise level(s) on %d calibration images", len(todo),
                 plan.data.calib_images.shape[0])
    for task, rec in ex.calibrations(list(todo.values())):
        store.put_calibration(task.key, rec)
        sigmas[task.key] = store.get_calibration(task.key) or rec
        d = task.defense
        log.info("calibrated %s %s drop %.3g: sigma %.5g (accuracy %.4f, base %.4f)", task.model.display,
                 d.method, d.drop, rec["sigma"], rec.get("accuracy", float("nan")),
                 rec.get("base_accuracy", float("nan")))
    return sigmas, len(todo), reused


def _open_runs(store: ResultStore, study: Study, units: list[tuple[int, int]], cells: dict[int, PlannedCell],
               needed_cells: set[int], sigmas: dict[str, dict[str, Any]]
               ) -> tuple[dict[int, int], dict[int, float | None]]:
    """One run per cell of ``units``, config = identity + resolved sigma. Returns (run id, sigma) by cell index;
    a cell with every unit stored already keeps its run row and gets no sigma."""
    run_ids: dict[int, int] = {}
    cell_sigma: dict[int, float | None] = {}
    for ci in sorted({u[0] for u in units}):
        pc = cells[ci]
        if ci not in needed_cells:  # every unit already stored: the run row exists, nothing to configure
            rid = store.run_id(pc.key)
            if rid is not None:
                run_ids[ci] = rid
            continue
        sigma, cal = _resolve_sigma(pc, sigmas)
        cell_sigma[ci] = sigma
        config = {"identity": pc.identity, "sigma": sigma, "calibration": cal,
                  "calibration_key": pc.calibration_key}
        labels = {"model": pc.cell.model.display, "attack": pc.cell.attack.display, "study": study.name}
        try:
            run_ids[ci] = store.ensure_run(pc.key, config, labels)
        except StoreConflict as exc:
            raise StoreConflict(
                f"{exc}. The cell {cell_label(pc)!r} was stored with another noise level: the calibration "
                "settings (study 'calibration') or the calibration code changed since. Use a new --db, or "
                "restore the settings to resume this one.") from None
    return run_ids, cell_sigma


def _resolve_sigma(pc: PlannedCell, sigmas: dict[str, dict[str, Any]]) -> tuple[float | None, dict[str, Any] | None]:
    d = pc.cell.defense
    if pc.calibration_key is not None:
        rec = sigmas.get(pc.calibration_key)
        if rec is None:
            return None, None
        return float(rec["sigma"]), {f: rec.get(f) for f in _CALIBRATION_FIELDS}
    if d.sigma is not None:
        return float(d.sigma), None
    return None, None


def _execute(tasks: list[ChunkTask], ex: Executor, store: ResultStore, plan: Plan, *, progress: bool,
             on_chunk: Callable[[ChunkTask, ChunkOutput], None] | None) -> int:
    """Run tasks through the executor, writing every finished chunk at once; returns samples written."""
    if not tasks:
        return 0
    done: dict[int, int] = {}
    for t in tasks:
        done.setdefault(t.cell_index, store.count_samples(t.run_id))
    written = 0
    with ChunkProgress(plan.study, tasks, cells={c.cell.index: c for c in plan.cells}, done=done,
                       ordered=ex.name == "local", enabled=progress) as bars:
        for i, (task, out) in enumerate(ex.chunks(tasks)):
            if store.write_chunk(out.run_id, out.info, out.rows):
                written += len(out.rows)
            if on_chunk is not None:
                on_chunk(task, out)
            bars.chunk_done(i, task, len(out.rows))
    return written
