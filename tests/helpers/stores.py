"""A hand-built results store: runs with per-sample outcomes chosen by the test (tables and per-layer
agreement are checked against answers worked out by hand)."""

from __future__ import annotations

from typing import Any

from rfd.eval.store import ChunkInfo, ResultStore, SampleRow

__all__ = ["FOUR", "add_run"]

# (clean_correct, success, queries[, p_wrong]) per sample; p_wrong (re-evaluation of a broken sample's final
# image) defaults to 1.0, a real break. Sample 1 below passed the check by luck (misclassified in 30% of forwards).
FOUR = [(1, 1, 10, 0.9), (1, 1, 60, 0.3), (1, 0, 100), (0, 0, 0)]


def add_run(s: ResultStore, *, model: str = "vgg", family: str = "none", drop: float | None = None,
            sigma: float | None = None, layers: tuple[str, ...] = (), attack: str = "square", budget: int = 100,
            eot: int = 1, verify: int = 9, params: dict[str, Any] | None = None, eps: float = 0.05,
            samples: list[tuple[Any, ...]] = FOUR, n_expected: int | None = None,
            defense_params: dict[str, Any] | None = None) -> int:
    ident = {"model": {"name": model}, "defense": {"family": family, "layers": list(layers), "drop": drop,
                                                   "sigma": sigma, "scaled": False, "params": defense_params or {}},
             "attack": {"name": attack, "norm": "linf", "eps": eps, "budget": budget, "eot": eot, "verify": verify,
                        "params": params or {}},
             "n": n_expected or len(samples), "seed": 0, "chunk_size": 50, "data": {}, "seeding": "paired"}
    key = f"{model}-{family}-{drop}-{sigma}-{layers}-{attack}-{budget}-{eot}-{verify}-{params}-{eps}-{defense_params}"
    rid = s.ensure_run(key, {"identity": ident, "sigma": 0.1 if family != "none" else None}, {"model": model})
    rows = [SampleRow(i, i, 0, bool(t[0]), bool(t[1]), t[2], 0.05, 1.0, checks=int(t[1]), check_forwards=5 * t[1],
                      claims=f"[{t[2]}]" if t[1] else "[]", p_wrong=(t[3] if len(t) > 3 else 1.0) if t[1] else None,
                      clean_p_wrong=0.0 if t[0] else 1.0)
            for i, t in enumerate(samples)]
    s.write_chunk(rid, ChunkInfo(0, 1, len(rows), 0, 0, 0.0), rows)
    return rid
