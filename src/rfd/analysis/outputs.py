"""Writing analysis results: one PNG per figure plus the numbers as JSON (summary) and CSV (per-item rows).

``write_*`` functions take a result object and an output folder, write ``<name>.png``, ``<name>.json`` and
``<name>.csv`` (plus extra figures where a command has them) and return the summary dict with a ``files`` entry.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rfd.analysis import plots
from rfd.analysis.agreement import LayerAgreement
from rfd.analysis.approx_error import ApproxErrorResult
from rfd.analysis.layers import LayerRanking
from rfd.analysis.magnitude import MagnitudeResult
from rfd.analysis.ratio import RatioResult
from rfd.analysis.theorem1 import Theorem1Result
from rfd.jsonable import jsonable

__all__ = [
    "jsonable",
    "write_agreement",
    "write_approx_error",
    "write_csv",
    "write_json",
    "write_magnitude",
    "write_ranking",
    "write_ratio",
    "write_theorem1",
]


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    return p


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Rows (dicts with the same keys) as CSV with a header; an empty list writes an empty file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in r.items()})
    return p


def _finish(out: Path, name: str, summary: dict[str, Any], rows: Sequence[dict[str, Any]],
            figures: list[Path], meta: dict[str, Any] | None) -> dict[str, Any]:
    files = [str(f) for f in figures]
    files.append(str(write_csv(out / f"{name}.csv", rows)))
    full = {**(meta or {}), **summary}
    full["files"] = files + [str(out / f"{name}.json")]
    write_json(out / f"{name}.json", full)
    return full


def write_ratio(result: RatioResult, out: str | os.PathLike[str], *, name: str = "ratio",
                meta: dict[str, Any] | None = None, label: str = "") -> dict[str, Any]:
    o = Path(out)
    fig = plots.plot_ratios(result, o / f"{name}.png", label=label)
    return _finish(o, name, result.summary(), result.rows(), [fig], meta)


def write_theorem1(result: Theorem1Result, out: str | os.PathLike[str], *, name: str = "theorem1",
                   meta: dict[str, Any] | None = None, label: str = "") -> dict[str, Any]:
    o = Path(out)
    fig = plots.plot_theorem1(result, o / f"{name}.png", label=label)
    write_csv(o / f"{name}_cells.csv", result.cells())
    full = _finish(o, name, result.summary(), result.rows(), [fig], meta)
    full["files"].append(str(o / f"{name}_cells.csv"))
    write_json(o / f"{name}.json", full)
    return full


def write_approx_error(results: Sequence[ApproxErrorResult], out: str | os.PathLike[str], *,
                       name: str = "approx_error", meta: dict[str, Any] | None = None,
                       label: str = "") -> dict[str, Any]:
    o = Path(out)
    fig = plots.plot_approx_error(results, o / f"{name}.png", label=label)
    rows = [row for r in results for row in r.summary()]
    summary = {"places": [{"layer": r.layer, "variances": list(r.variances), "breakdown_variance": r.breakdown(),
                           "summary": r.summary()} for r in results],
               "breakdown_threshold": 0.5}
    return _finish(o, name, summary, rows, [fig], meta)


def write_magnitude(result: MagnitudeResult, out: str | os.PathLike[str], *, name: str = "magnitude",
                    meta: dict[str, Any] | None = None, label: str = "") -> dict[str, Any]:
    o = Path(out)
    fig = plots.plot_magnitude(result, o / f"{name}.png", label=label)
    return _finish(o, name, result.summary(), result.rows(), [fig], meta)


def write_ranking(ranking: LayerRanking, out: str | os.PathLike[str], *, name: str = "layers",
                  meta: dict[str, Any] | None = None, label: str = "") -> dict[str, Any]:
    o = Path(out)
    fig = plots.plot_ranking(ranking, o / f"{name}.png", label=label)
    full = _finish(o, name, ranking.summary(), ranking.rows, [fig], meta)
    if ranking.confirm:
        full["files"].append(str(write_csv(o / f"{name}_confirm.csv", ranking.confirm)))
        write_json(o / f"{name}.json", full)
    return full


def write_agreement(found: Sequence[LayerAgreement], out: str | os.PathLike[str], *, name: str = "agreement",
                    meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """``agreement.json`` (one entry per reading x predictor) and ``agreement.csv`` (one row per layer each)."""
    o = Path(out)
    summary = {"agreements": [g.to_dict() for g in found]}
    return _finish(o, name, summary, [r for g in found for r in g.rows()], [], meta)
