"""The plan of a study run: its cells with their store and calibration keys, the work units, and which of them
remain.

A work unit is (cell index, chunk): ``study.chunk_size`` consecutive images of one cell. Units are listed in one
global order that does not depend on sharding; ``--shard i/n`` takes every n-th unit of it (deterministic), so
the shards of a study together hold each unit exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rfd.data.source import EvalData, select_data
from rfd.eval.cells import Cell, expand_cells
from rfd.eval.resources import model_identity
from rfd.eval.seeds import content_key
from rfd.eval.specs import Study
from rfd.eval.store import ResultStore, canonical
from rfd.eval.worker import make_cell_attack
from rfd.jsonable import thaw

__all__ = ["Plan", "PlannedCell", "Shard", "cell_label", "parse_shard", "pending_units", "plan_status",
           "plan_study"]


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
    data = select_data(study.data, study.n, study.seed)
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
                "seed": study.seed, "options": thaw(study.calibration)}))
        cells.append(PlannedCell(cell, content_key(canonical(identity)), identity, ckey))
    units = tuple((c.cell.index, k) for c in cells for k in range(study.n_chunks))
    return Plan(study=study, cells=tuple(cells), data=data, units=units)


def pending_units(units: Iterable[tuple[int, int]], cells: Mapping[int, PlannedCell],
                  finished: Mapping[str, set[int]]) -> list[tuple[int, int]]:
    """The ``units`` (cell index, chunk) not yet stored, in their order.

    Args:
        cells: planned cell by cell index.
        finished: finished chunk numbers by run key (:meth:`ResultStore.finished_by_key`).
    """
    return [u for u in units if u[1] not in finished.get(cells[u[0]].key, set())]


def cell_label(pc: PlannedCell) -> str:
    """One line naming a planned cell for logs and progress bars:
    ``model | method @layers level | attack norm eps=...``."""
    c = pc.cell
    d = c.defense
    level = f" {d.drop:.0%} drop" if d.drop is not None else (f" sigma={d.sigma:g}" if d.sigma is not None else "")
    layer = f" @{'+'.join(d.layers)}" if d.layers and d.layers != ("penultimate",) else ""
    return f"{c.model.display} | {d.method}{layer}{level} | {c.attack.display} {c.attack.norm} eps={c.attack.eps:g}"


def plan_status(study: Study, db: str | os.PathLike[str] | None = None, *, shard: Shard | None = None
                ) -> dict[str, Any]:
    """What :func:`~rfd.eval.runner.run_study` would do, without computing: cells, units of the shard, how many
    are stored already (if ``db`` exists), and which calibrations are stored."""
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
    pending = pending_units(units, cells, finished)
    cal_keys = {cells[ci].calibration_key for ci, _ in pending} - {None}
    return {
        "study": study.name, "shard": str(shard), "cells": len(plan.cells), "chunks_per_cell": study.n_chunks,
        "units_total": len(units), "units_pending": len(pending), "units_done": len(units) - len(pending),
        "calibrations_needed": len(cal_keys - stored_cal), "calibrations_stored": len(cal_keys & stored_cal),
        "cell_labels": [cell_label(c) for c in plan.cells],
    }
