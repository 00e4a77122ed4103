"""Projections onto the threat model, as plain batched torch functions."""

from __future__ import annotations

import torch

__all__ = ["l2_normalize", "project", "project_l2", "project_linf"]


def project_linf(x: torch.Tensor, x0: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Nearest point of ``{|x - x0|_inf <= eps} ∩ [0,1]`` to x (exact: the box constraints are separable).

    x, x0: (N, C, H, W); eps: float or (N,) per-sample radius."""
    e = eps.view(-1, *([1] * (x.dim() - 1))) if isinstance(eps, torch.Tensor) else eps
    return torch.max(torch.min(x, x0 + e), x0 - e).clamp(0.0, 1.0)


def l2_normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each row of v (N, ...) divided by its l_2 norm (rows of zeros stay zero)."""
    n = v.flatten(1).norm(dim=1).clamp_min(eps)
    return v / n.view(-1, *([1] * (v.dim() - 1)))


def project_l2(x: torch.Tensor, x0: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Scale ``x - x0`` into the l_2 ball of radius eps, then clip to [0, 1].

    Clipping after scaling can only shrink the perturbation, so the result stays inside the ball."""
    d = (x - x0).flatten(1)
    n = d.norm(dim=1)
    e = eps if isinstance(eps, torch.Tensor) else torch.full_like(n, float(eps))
    factor = torch.where(n > e, e / n.clamp_min(1e-12), torch.ones_like(n))
    return (x0 + (d * factor[:, None]).view_as(x)).clamp(0.0, 1.0)


def project(x: torch.Tensor, x0: torch.Tensor, norm: str, eps: float | torch.Tensor) -> torch.Tensor:
    """Project onto the ``norm`` ("linf" | "l2") ball of radius eps around x0, within [0, 1]."""
    if norm == "linf":
        return project_linf(x, x0, eps)
    if norm == "l2":
        return project_l2(x, x0, eps)
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
