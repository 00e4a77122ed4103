"""RayS: hard-label l_inf attack by ray search over sign directions (Chen & Gu, KDD 2020).

Paper: https://arxiv.org/abs/2006.12792 (reference code: github.com/uclaml/RayS).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.decision_search import (
    ReportAt,
    bcast,
    bisect_boundary,
    can_pay,
    check_report_at,
    query_adversarial,
    ray_path,
)

__all__ = ["RayS", "RaySConfig", "block_schedule"]


@dataclass(frozen=True, kw_only=True)
class RaySConfig(AttackConfig):
    """RayS settings (l_inf only). eps, budget, seed, eot: see :class:`AttackConfig`."""

    # l_inf width at which a binary search for the boundary radius stops; None: 1e-3 / sqrt(d) (d = C*H*W), the
    # original code's tolerance of 1e-3 along the l_2-normalised sign direction
    tol: float | None = None
    # which image to offer for verification once a radius <= eps is found: "eps" = the point of the best ray at
    # radius eps (further from the boundary, same ray), "boundary" = the boundary point found (the original's output)
    report_at: ReportAt = "eps"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tol is not None and not (self.tol > 0):
            raise ValueError(f"tol must be a positive l_inf width, got {self.tol}")
        check_report_at(self.report_at)


def block_schedule(dim: int) -> Iterator[tuple[int, int]]:
    """The hierarchical blocks RayS flips, in order: level L splits the d coordinates into 2^L blocks of
    ceil(d / 2^L) and visits them left to right; once blocks are single coordinates the last level repeats.

    Yields (start, end) coordinate ranges of the flattened image, forever."""
    level, block = 0, 0
    while True:
        size = -(-dim // (2**level))
        start, end = block * size, min(dim, (block + 1) * size)
        yield start, end
        block += 1
        if block == 2**level or end == dim:
            block = 0
            if size > 1:
                level += 1


class RayS(Attack):
    """RayS (l_inf, label-only). Searches the direction ``d`` in {-1, +1}^d whose ray ``x0 + r d`` reaches the
    decision boundary at the smallest l_inf radius ``r``.

    Each step flips the signs of one block of the best direction (blocks halve level by level), makes one *fast
    check* query at the current best radius (a direction that is not adversarial there cannot improve it) and, only
    if that check is adversarial, binary-searches the new direction's boundary radius. A sample is claimed broken
    as soon as its best radius is <= eps; the image offered for verification is the best ray's point at radius eps
    (``report_at="eps"``) or at the radius found (``"boundary"``).

    All images advance together; every label (fast checks and binary searches) is one charged query, and a sample
    stops querying when its budget ends or its claim is verified. ``result.extras["radius"]`` holds each sample's
    best l_inf boundary radius (inf if no adversarial direction was found); a failed sample's ``x_adv`` is the
    boundary point of its best ray, at l_inf distance <= radius.

    Example:
        >>> bb = LocalBlackBox(model, access="labels", budget=10000)
        >>> result = RayS(eps=0.05, budget=10000).run(bb, x, y)
    """

    name: ClassVar[str] = "rays"
    access = "labels"
    norms: ClassVar[tuple[str, ...]] = ("linf",)
    config_class: ClassVar[type[AttackConfig]] = RaySConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, RaySConfig)
        x0 = state.x0
        n, dim = x0.shape[0], x0[0].numel()
        tol = cfg.tol if cfg.tol is not None else 1e-3 / math.sqrt(dim)
        sign = torch.ones_like(x0)  # best direction per sample (the original starts from all +1)
        radius = torch.full((n,), math.inf, device=x0.device)  # best boundary radius, l_inf, per sample
        state.extras["radius"] = radius
        blocks = block_schedule(dim)
        # The schedule is shared: all samples take one step per round, so they stay in lockstep.
        while True:
            idx = torch.nonzero(can_pay(state, torch.arange(n, device=x0.device))).flatten()
            if idx.numel() == 0:
                return
            start, end = next(blocks)
            attempt = sign[idx].clone()
            attempt.view(idx.numel(), dim)[:, start:end] *= -1
            # Fast check at the best radius; beyond radius 1 every ray is clipped to the same corner image.
            r_check = radius[idx].clamp(max=1.0)
            path = ray_path(x0[idx], attempt)
            rows = torch.arange(idx.numel(), device=x0.device)
            hit = query_adversarial(state, path(r_check, rows), idx)
            rows = rows[hit]
            if rows.numel() == 0:
                continue
            lo0, hi0 = torch.zeros_like(r_check[rows]), r_check[rows]
            _, hi = bisect_boundary(state, idx[rows], ray_path(x0[idx[rows]], attempt[rows]), lo0, hi0, tol)
            better = hi < radius[idx[rows]]
            rows, hi = rows[better], hi[better]
            i = idx[rows]
            radius[i] = hi
            sign[i] = attempt[rows]
            state.keep((x0[i] + bcast(hi, x0[i]) * sign[i]).clamp(0.0, 1.0), i)
            won = hi <= cfg.eps
            if bool(won.any()):
                w = i[won]
                r_rep = torch.full_like(hi[won], cfg.eps) if cfg.report_at == "eps" else hi[won]
                state.report((x0[w] + bcast(r_rep, x0[w]) * sign[w]).clamp(0.0, 1.0), w)
