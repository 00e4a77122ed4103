"""What a run did: counts and timings of one :func:`~rfd.eval.runner.run_study` call, and each cell's outcome
(clean and robust accuracy under every reading) read back from the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rfd.attacks.readings import READINGS, robust_values
from rfd.eval.plan import PlannedCell, cell_label
from rfd.eval.store import ResultStore, row_from_tuple

__all__ = ["RunSummary", "cell_outcomes"]


@dataclass
class RunSummary:
    """What a call of :func:`~rfd.eval.runner.run_study` did, and the per-cell outcome read back from the
    store."""

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
        d = asdict(self)
        d["complete"] = self.complete
        return d


def cell_outcomes(store: ResultStore, planned: Iterable[PlannedCell], run_ids: dict[int, int]
                  ) -> list[dict[str, Any]]:
    """Per planned cell (``run_ids``: its run id by cell index): samples stored, sigma, clean accuracy, robust
    accuracy at the cell's budget under each reading, total queries and the cell's label (from the store)."""
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
            "queries_total": queries, "label": cell_label(pc),
        })
    return out
