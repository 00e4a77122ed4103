"""Small statistics in torch: quantiles of finite values, distribution summaries, Pearson and Spearman correlation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["describe", "pearson", "quantiles", "rank_average", "spearman"]


def _finite(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().flatten().double()
    return v[torch.isfinite(v)]


def quantiles(v: torch.Tensor, qs: Sequence[float]) -> list[float]:
    """Quantiles ``qs`` of the finite entries of ``v`` (NaN for each when there are none)."""
    f = _finite(v)
    if f.numel() == 0:
        return [float("nan")] * len(qs)
    return [float(t) for t in torch.quantile(f.cpu(), torch.tensor(list(qs), dtype=torch.float64))]


def describe(v: torch.Tensor) -> dict[str, float]:
    """Count, non-finite count, mean, std, min, quartiles and max of ``v`` (finite entries only)."""
    f = _finite(v)
    out: dict[str, float] = {"n": int(f.numel()), "n_nonfinite": int(v.numel() - f.numel())}
    if f.numel() == 0:
        return out | {k: float("nan") for k in ("mean", "std", "min", "q25", "median", "q75", "max")}
    q = quantiles(f, (0.0, 0.25, 0.5, 0.75, 1.0))
    std = float(f.std()) if f.numel() > 1 else 0.0
    return out | {"mean": float(f.mean()), "std": std, "min": q[0], "q25": q[1], "median": q[2], "q75": q[3],
                  "max": q[4]}


def rank_average(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (as in Spearman's rho)."""
    v = v.flatten()
    order = torch.argsort(v, stable=True)
    sv = v[order]
    ranks = torch.empty_like(v, dtype=torch.float64)
    ranks[order] = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=v.device)
    # Average the ranks within each run of equal values.
    _, inverse, counts = torch.unique_consecutive(sv, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=torch.float64, device=v.device).index_add_(0, inverse, ranks[order])
    ranks[order] = (sums / counts.double())[inverse]
    return ranks


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of paired entries, over pairs where both are finite (NaN if undefined)."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    keep = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[keep], b[keep]
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson on average ranks) over pairs where both are finite."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    keep = torch.isfinite(a) & torch.isfinite(b)
    if int(keep.sum()) < 2:
        return float("nan")
    return pearson(rank_average(a[keep]), rank_average(b[keep]))
