"""Combine results stores (e.g. the shards of one study) into one.

Runs are matched by their content key, never by row id. Identical duplicates (the same chunk computed
twice, or a calibration stored by every shard) are fine and stored once; the same key with different
content is a :class:`~rfd.eval.store.StoreConflict` naming the input file, run and chunk."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rfd.eval.store import ResultStore, StoreConflict, row_from_tuple

__all__ = ["MergeSummary", "merge_stores"]


@dataclass
class MergeSummary:
    out: str
    inputs: list[str]
    runs: int  # runs in the output store after merging
    chunks_added: int
    chunks_identical: int  # duplicates that matched what was stored
    samples_added: int
    calibrations: int  # calibrations in the output store

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_stores(out: str | os.PathLike[str], inputs: list[str | os.PathLike[str]]) -> MergeSummary:
    """Merge ``inputs`` into ``out`` (created if missing; an existing store is merged into)."""
    if not inputs:
        raise ValueError("merge needs at least one input store")
    out_path = Path(out).resolve()
    for p in inputs:
        if not Path(p).is_file():
            raise FileNotFoundError(f"input store not found: {p}")
        if Path(p).resolve() == out_path:
            raise ValueError(f"the output store {out} is also an input; write to a new file")
    added = identical = samples = 0
    with ResultStore(out) as dst:
        for p in inputs:
            with ResultStore(p, create=False) as src:
                try:
                    a, i, s = _merge_one(src, dst)
                except StoreConflict as exc:
                    raise StoreConflict(f"{p}: {exc}") from None
                added, identical, samples = added + a, identical + i, samples + s
        n_runs = len(dst.runs())
        n_cal = len(dst.calibrations())
    return MergeSummary(out=str(out), inputs=[str(p) for p in inputs], runs=n_runs, chunks_added=added,
                        chunks_identical=identical, samples_added=samples, calibrations=n_cal)


def _merge_one(src: ResultStore, dst: ResultStore) -> tuple[int, int, int]:
    known = dst.studies()
    for name, study in src.studies().items():
        if name not in known:
            dst.put_study(name, study)
    for cal in src.calibrations():
        key, ver, created = cal.pop("key"), cal.pop("rfd_version"), cal.pop("created")
        dst.put_calibration(key, cal, rfd_version=ver, created=created)
    added = identical = samples = 0
    for run in src.runs():
        rid = dst.ensure_run(run["key"], run["config"], run["labels"], rfd_version=run["rfd_version"],
                             created=run["created"])
        for info in src.chunk_info(run["run_id"]):
            rows = [row_from_tuple(t) for t in src.chunk_rows(run["run_id"], info.chunk)]
            finished = src.chunk_finished(run["run_id"], info.chunk)
            if dst.write_chunk(rid, info, rows, finished=finished):
                added += 1
                samples += len(rows)
            else:
                identical += 1
    return added, identical, samples
