"""Run a study into a results store: plan, calibrate, execute chunks (locally or on Ray), write, summarize.

Work is split into units (cell, chunk): ``study.chunk_size`` consecutive images of one cell, with an attack seed
fixed by (study seed, attack, chunk), the same for every defense (paired draws), and a noise seed by (study seed,
run key, chunk). Each finished unit is written in one transaction; re-running skips finished
units, so a killed run resumes where it stopped and ends with exactly the rows an uninterrupted run writes.
``--shard i/n`` takes every n-th unit (deterministic), and ``rfd merge`` joins the shards' stores.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rfd.attacks.readings import READINGS, robust_values
from rfd.eval.resources import EvalData, load_eval_data, model_identity
from rfd.eval.seeds import content_key
from rfd.eval.store import ResultStore, StoreConflict, canonical, row_from_tuple
from rfd.eval.study import Cell, Study, _thaw, expand_cells
from rfd.eval.worker import (
    CalibrationTask,
    ChunkOutput,
    ChunkTask,
    WorkerContext,
    attack_seed_key,
    execute_calibration,
    execute_chunk,
    make_cell_attack,
)

__all__ = ["Plan", "PlannedCell", "RunSummary", "Shard", "parse_shard", "plan_study", "run_study"]

log = logging.getLogger(__name__)

# Parts of a calibration record that are deterministic for a seed (they go into run configs; timings do not).
_CALIBRATION_FIELDS = ("sigma", "target_drop", "accuracy", "accuracy_se", "base_accuracy", "drop", "converged")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): the work units whose position p has p % count == index."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` -> Shard(i, n)."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    return Shard(i, n)


@dataclass(frozen=True)
class PlannedCell:
    """A cell with its store key, identity, and calibration key (None when sigma is fixed or not needed)."""

    cell: Cell
    key: str
    identity: dict[str, Any]
    calibration_key: str | None


@dataclass(frozen=True)
class Plan:
    """Everything a run needs to know before computing: cells, their keys, the data, the work units."""

    study: Study
    cells: tuple[PlannedCell, ...]
    data: EvalData
    units: tuple[tuple[int, int], ...]  # (cell index, chunk) in the global, shard-independent order

    def shard(self, shard: Shard) -> list[tuple[int, int]]:
        return [u for p, u in enumerate(self.units) if p % shard.count == shard.index]


def plan_study(study: Study) -> Plan:
    """Expand cells, identify models (weights hash) and data (content digest), and list the work units.

    Also builds every distinct attack once with the cell's settings, so a bad parameter fails here, before
    any work, with the attack's list of valid settings."""
    data = load_eval_data(study.data, study.n, study.seed)
    ids: dict[Any, dict[str, Any]] = {}
    for m in study.models:
        ids[m] = model_identity(m)
    for a in study.attacks:
        make_cell_attack(a, 0)
    cells = []
    for cell in expand_cells(study):
        identity = cell.identity(ids[cell.model], data.identity)
        ckey = None
        if cell.defense.needs_calibration:
            ckey = content_key(canonical({
                "model": ids[cell.model], "defense": cell.defense.calibration_dict(), "data": data.calib_identity,
                "seed": study.seed, "options": _thaw(study.calibration)}))
        cells.append(PlannedCell(cell, content_key(canonical(identity)), identity, ckey))
    units = tuple((c.cell.index, k) for c in cells for k in range(study.n_chunks))
    return Plan(study=study, cells=tuple(cells), data=data, units=units)


@dataclass
class RunSummary:
    """What a call of :func:`run_study` did, and the per-cell outcome read back from the store."""

    study: str
    db: str
    shard: str
    executor: str
    cells: int
    units_total: int  # units of this shard
    units_done_before: int  # already in the store when the run started
    units_run: int  # computed by this call
    samples_written: int
    calibrations_run: int
    calibrations_reused: int
    elapsed_s: float
    per_cell: list[dict[str, Any]] = field(default_factory=list)
    calibrations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.units_done_before + self.units_run == self.units_total

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["complete"] = self.complete
        return d


# ---------------------------------------------------------------------------------------------- executors
class LocalExecutor:
    """Runs tasks one after another in this process (the default; no extra service)."""

    name = "local"

    def __init__(self, *, progress: bool = False) -> None:
        self.ctx = WorkerContext()
        self.progress = progress

    def calibrations(self, tasks: list[CalibrationTask]) -> Iterator[tuple[CalibrationTask, dict[str, Any]]]:
        for t in tasks:
            yield t, execute_calibration(t, self.ctx, progress=self.progress)

    def chunks(self, tasks: list[ChunkTask]) -> Iterator[tuple[ChunkTask, ChunkOutput]]:
        for t in tasks:
            yield t, execute_chunk(t, self.ctx, progress=self.progress)

    def close(self) -> None:
        self.ctx = WorkerContext()


def _pool_chunk(task: ChunkTask) -> ChunkOutput:
    return execute_chunk(task)


def _pool_calibration(task: CalibrationTask) -> dict[str, Any]:
    return execute_calibration(task)


class ProcessExecutor:
    """Runs tasks in ``workers`` local processes (spawned, ``threads`` torch threads each): on a multi-core CPU,
    several single-threaded workers beat one multi-threaded process for small models and shrinking attack
    batches. Results equal a local run at the same thread count. No extra service needed."""

    name = "processes"

    def __init__(self, *, workers: int, threads: int = 1) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from rfd.eval.worker import set_threads

        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be >= 1, got {workers}, {threads}")
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=set_threads, initargs=(threads,))

    def _stream(self, fn: Callable[[Any], Any], tasks: list[Any]) -> Iterator[tuple[Any, Any]]:
        from concurrent.futures import as_completed

        futures = {self.pool.submit(fn, t): t for t in tasks}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        finally:
            for f in futures:
                f.cancel()

    def calibrations(self, tasks: list[CalibrationTask]) -> Iterator[tuple[CalibrationTask, dict[str, Any]]]:
        yield from self._stream(_pool_calibration, tasks)

    def chunks(self, tasks: list[ChunkTask]) -> Iterator[tuple[ChunkTask, ChunkOutput]]:
        yield from self._stream(_pool_chunk, tasks)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_executor(name: str, *, progress: bool, address: str | None = None, workers: int = 1,
                  **options: Any) -> Any:
    if name == "local":
        if address is not None:
            raise ValueError("--address applies to --executor ray only")
        if workers > 1:
            return ProcessExecutor(workers=workers, **options)
        return LocalExecutor(progress=progress)
    if name == "ray":
        from rfd.eval.ray_executor import RayExecutor

        return RayExecutor(address=address, **options)
    raise ValueError(f"unknown executor {name!r} (allowed: local, ray)")


# ---------------------------------------------------------------------------------------------------- run
def run_study(
    study: Study,
    db: str | os.PathLike[str],
    *,
    device: str = "cpu",
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
    shard = shard or Shard()
    plan = plan_study(study)
    units = plan.shard(shard)
    cells = {c.cell.index: c for c in plan.cells}
    if workers > 1 and executor != "local":
        raise ValueError("workers > 1 applies to the local executor (Ray sizes itself from the cluster)")
    ex = make_executor(executor, progress=progress, address=address, workers=workers, **(executor_options or {}))
    try:
        return _run(study, db, plan, units, cells, ex, shard=shard, device=device, calibrate_only=calibrate_only,
                    max_units=max_units, progress=progress, on_chunk=on_chunk, t_start=t_start)
    finally:
        ex.close()


def _run(study: Study, db: str | os.PathLike[str], plan: Plan, units: list[tuple[int, int]],
         cells: dict[int, PlannedCell], ex: Any, *, shard: Shard, device: str, calibrate_only: bool,
         max_units: int | None, progress: bool, on_chunk: Callable[[ChunkTask, ChunkOutput], None] | None,
         t_start: float) -> RunSummary:
    with ResultStore(db) as store:
        store.put_study(study.name, study.to_dict())
        finished = store.finished_by_key()
        pending = [u for u in units if u[1] not in finished.get(cells[u[0]].key, set())]
        done_before = len(units) - len(pending)
        needed_cells = {u[0] for u in (units if calibrate_only else pending)}

        # -- calibration: once per (model, defense, drop), stored and re-used
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
                todo[pc.calibration_key] = CalibrationTask(study=study, model=pc.cell.model, defense=pc.cell.defense,
                                                           key=pc.calibration_key, device=device)
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

        calibration_info = [dict(key=k, **{f: v.get(f) for f in ("model", "defense", "sigma", "accuracy",
                                                                     "base_accuracy", "drop", "target_drop")})
                            for k, v in sigmas.items()]
        if calibrate_only:
            return RunSummary(study=study.name, db=str(db), shard=str(shard), executor=ex.name, cells=len(plan.cells),
                              units_total=len(units), units_done_before=done_before, units_run=0, samples_written=0,
                              calibrations_run=len(todo), calibrations_reused=reused,
                              elapsed_s=time.perf_counter() - t_start, calibrations=calibration_info)

        # -- runs: one per cell, config = identity + resolved sigma
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
                    f"{exc}. The cell {_cell_label(pc)!r} was stored with another noise level: the calibration "
                    "settings (study 'calibration') or the calibration code changed since. Use a new --db, or "
                    "restore the settings to resume this one.") from None

        if max_units is not None:
            pending = pending[:max_units]
        tasks = [ChunkTask(study=study, cell_index=ci, chunk=k, run_id=run_ids[ci], run_key=cells[ci].key,
                           sigma=cell_sigma[ci], device=device, data_digest=plan.data.identity["digest"],
                           attack_key=attack_seed_key(cells[ci].cell.attack))
                 for ci, k in pending]
        written = _execute(tasks, ex, store, plan, progress=progress, on_chunk=on_chunk)
        per_cell = _cell_outcomes(store, [cells[ci] for ci in sorted(run_ids)], run_ids)
    return RunSummary(
        study=study.name, db=str(db), shard=str(shard), executor=ex.name, cells=len(plan.cells),
        units_total=len(units), units_done_before=done_before, units_run=len(tasks), samples_written=written,
        calibrations_run=len(todo), calibrations_reused=reused, elapsed_s=time.perf_counter() - t_start,
        per_cell=per_cell, calibrations=calibration_info,
    )


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


def _cell_label(pc: PlannedCell) -> str:
    c = pc.cell
    d = c.defense
    level = f" {d.drop:.0%} drop" if d.drop is not None else (f" sigma={d.sigma:g}" if d.sigma is not None else "")
    layer = f" @{'+'.join(d.layers)}" if d.layers and d.layers != ("penultimate",) else ""
    return f"{c.model.display} | {d.method}{layer}{level} | {c.attack.display} {c.attack.norm} eps={c.attack.eps:g}"


def _execute(tasks: list[ChunkTask], ex: Any, store: ResultStore, plan: Plan, *, progress: bool,
             on_chunk: Callable[[ChunkTask, ChunkOutput], None] | None) -> int:
    """Run tasks through the executor, writing every finished chunk at once; returns samples written."""
    if not tasks:
        return 0
    study = plan.study
    cells = {c.cell.index: c for c in plan.cells}
    total = sum(study.chunk_bounds(t.chunk)[1] - study.chunk_bounds(t.chunk)[0] for t in tasks)
    overall = tqdm(total=total, desc=f"{study.name}", unit="img", disable=not progress, position=0,
                   dynamic_ncols=True)
    per_cell_done: dict[int, int] = {}
    for t in tasks:
        per_cell_done.setdefault(t.cell_index, store.count_samples(t.run_id))
    ordered = getattr(ex, "name", "") == "local"  # local: chunks finish in task order, so a cell bar can lead
    cell_bar: tqdm | None = None
    bar_cell = -1

    def open_cell_bar(ci: int) -> None:
        nonlocal cell_bar, bar_cell
        if not progress or ci == bar_cell:
            return
        if cell_bar is not None:
            cell_bar.close()
        bar_cell = ci
        cell_bar = tqdm(total=study.n, initial=per_cell_done[ci], desc=_cell_label(cells[ci])[:70], unit="img",
                        position=1, leave=False, dynamic_ncols=True)

    written = 0
    try:
        if ordered:
            open_cell_bar(tasks[0].cell_index)
        for i, (task, out) in enumerate(ex.chunks(tasks)):
            if store.write_chunk(out.run_id, out.info, out.rows):
                written += len(out.rows)
            if on_chunk is not None:
                on_chunk(task, out)
            n = len(out.rows)
            per_cell_done[task.cell_index] += n
            overall.update(n)
            if progress:
                if ordered:
                    if cell_bar is not None:
                        cell_bar.update(n)
                    if i + 1 < len(tasks):
                        open_cell_bar(tasks[i + 1].cell_index)
                else:
                    overall.set_postfix_str(f"last: {_cell_label(cells[task.cell_index])[:50]}", refresh=False)
    finally:
        if cell_bar is not None:
            cell_bar.close()
        overall.close()
    return written


def _cell_outcomes(store: ResultStore, planned: Iterable[PlannedCell], run_ids: dict[int, int]) -> list[dict[str, Any]]:
    """Per cell: samples stored, clean accuracy and robust accuracy at the budget (from the store)."""
    out = []
    sigma_of = {r["run_id"]: r["config"].get("sigma") for r in store.runs()}
    for pc in planned:
        rid = run_ids[pc.cell.index]
        rows = [row_from_tuple(t[2:]) for t in store.samples([rid])]
        n = len(rows)
        correct = sum(r.clean_correct for r in rows)
        queries = sum(r.queries for r in rows)
        readings = {}
        if n:
            cc, su, q, pw = (np.array(v) for v in zip(*[(r.clean_correct, r.success, r.queries,
                                                         np.nan if r.p_wrong is None else r.p_wrong) for r in rows]))
            readings = {rd: float(robust_values(cc, su, q, pw, pc.cell.attack.budget, rd).mean()) for rd in READINGS}
        c = pc.cell
        out.append({
            "run_id": rid, "key": pc.key, "model": c.model.display, "method": c.defense.method,
            "layers": list(c.defense.layers), "drop": c.defense.drop,
            "sigma": sigma_of.get(rid),
            "attack": c.attack.display, "norm": c.attack.norm, "eps": c.attack.eps, "eot": c.attack.eot,
            "budget": c.attack.budget, "verify": c.attack.verify, "n_done": n, "n": c.n,
            "clean_accuracy": correct / n if n else None, "robust_accuracy": readings.get("paper"),
            "robust_accuracy_strict": readings.get("strict"), "robust_accuracy_expected": readings.get("expected"),
            "queries_total": queries, "label": _cell_label(pc),
        })
    return out


def plan_status(study: Study, db: str | os.PathLike[str] | None = None, *, shard: Shard | None = None
                ) -> dict[str, Any]:
    """What :func:`run_study` would do, without computing: cells, units of the shard, how many are stored
    already (if ``db`` exists), and which calibrations are stored."""
    shard = shard or Shard()
    plan = plan_study(study)
    units = plan.shard(shard)
    finished: dict[str, set[int]] = {}
    stored_cal: set[str] = set()
    if db is not None and os.path.exists(db):
        with ResultStore(db, create=False) as store:
            finished = store.finished_by_key()
            stored_cal = {c["key"] for c in store.calibrations()}
    cells = {c.cell.index: c for c in plan.cells}
    pending = [u for u in units if u[1] not in finished.get(cells[u[0]].key, set())]
    cal_keys = {cells[ci].calibration_key for ci, _ in pending} - {None}
    return {
        "study": study.name, "shard": str(shard), "cells": len(plan.cells), "chunks_per_cell": study.n_chunks,
        "units_total": len(units), "units_pending": len(pending), "units_done": len(units) - len(pending),
        "calibrations_needed": len(cal_keys - stored_cal), "calibrations_stored": len(cal_keys & stored_cal),
        "cell_labels": [_cell_label(c) for c in plan.cells],
    }
