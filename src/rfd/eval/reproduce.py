"""Reproducing a paper table: run its preset study into a store and write its report folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfd.eval.demo import default_workers
from rfd.eval.layouts import PAPER_TABLES
from rfd.eval.paper_presets import SCALES, Preset, preset_for, preset_study
from rfd.eval.plan import Shard, plan_status, plan_study
from rfd.eval.reporting import write_report
from rfd.eval.runner import run_study
from rfd.eval.summary import RunSummary

__all__ = ["ReproduceResult", "default_out", "estimate_tables", "reproduce", "reproduce_plan"]


@dataclass(frozen=True)
class ReproduceResult:
    """A reproduced table: its preset, the report files and the run's summary."""

    preset: Preset
    scale: str
    db: Path
    paths: dict[str, str]  # report files (report, plot, tables, per-sample rows)
    summary: RunSummary
    report: str  # the report's Markdown

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.preset.table, "scale": self.scale, "note": SCALES[self.scale].note,
                "paths": self.paths, "summary": self.summary.to_dict(), "report": self.report}


def default_out(table: str, scale: str) -> Path:
    """The default report folder of a table: ``rfd-reproduce/table<T>-<scale>``."""
    return Path(f"rfd-reproduce/table{preset_for(table).table}-{scale}")


def reproduce_plan(table: str, scale: str, db: str | os.PathLike[str], *, shard: Shard | None = None) -> dict[str, Any]:
    """What a reproduction would run and what the store already holds (see :func:`rfd.eval.plan_status`)."""
    return plan_status(preset_study(preset_for(table).table, scale), db, shard=shard)


def reproduce(table: str, scale: str = "cpu", *, out: str | os.PathLike[str] | None = None,
              db: str | os.PathLike[str] | None = None, device: str = "cpu", fast: str = "plain",
              shard: Shard | None = None,
              executor: str = "local", address: str | None = None, workers: int | None = None,
              threads: int | None = None, progress: bool = True) -> ReproduceResult:
    """Run table ``table``'s preset at ``scale`` into ``db`` (default ``out/results.sqlite``; resumes) and write
    its report into ``out`` (default :func:`default_out`). ``workers`` local processes with ``threads`` torch
    threads each (defaults: :func:`rfd.eval.demo.default_workers`, one thread each); ``fast``: forward speed-ups
    (see :func:`rfd.eval.runner.run_study`)."""
    preset = preset_for(table)
    study = preset_study(preset.table, scale)
    out_dir = Path(out) if out is not None else default_out(table, scale)
    db_path = Path(db) if db is not None else out_dir / "results.sqlite"
    if workers is None:
        workers = 1 if executor == "ray" else default_workers(device)
    summary = run_study(study, db_path, device=device, fast=fast, shard=shard, executor=executor, address=address,
                        progress=progress, workers=workers,
                        executor_options={"threads": threads or 1} if workers > 1 else None)
    keys = {c.key for c in plan_study(study).cells}
    paths = write_report(db_path, out_dir, [preset.kind], title=f"{preset.title} (scale {scale})",
                         intro=f"{study.description}\n\nComputed in {summary.elapsed_s:.0f} s into `{db_path.name}`; "
                         f"`rfd report {db_path} --table {_table_arg(preset)}` renders it again.", run_keys=keys)
    return ReproduceResult(preset=preset, scale=scale, db=db_path, paths=paths, summary=summary,
                           report=Path(paths["report"]).read_text())


def estimate_tables(tables: list[str], scale: str, *, device: str = "cpu",
                    workers: int | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Forwards and time each table's preset would take here (each model's throughput measured once).

    Returns ``(rows, throughput)``: one dict per table (cells, forwards, seconds, threads, ...) and images/s per
    model."""
    from rfd.eval.estimate import estimate_study

    workers = workers if workers is not None else default_workers(device)
    throughput: dict[str, float] = {}
    rows = []
    for t in tables:
        est = estimate_study(preset_study(t, scale), device=device, throughput=throughput, workers=workers)
        throughput.update(est.throughput)
        rows.append(est.to_dict() | {"table": t, "scale": scale, "workers": workers})
    return rows, throughput


def _table_arg(preset: Preset) -> str:
    """What ``rfd report --table`` takes for a preset: its paper table number, else its layout kind (the
    honest, adaptive, wide, outputs and per-model presets are not paper tables)."""
    return preset.table if preset.table in PAPER_TABLES else preset.kind
