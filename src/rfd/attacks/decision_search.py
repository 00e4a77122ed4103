"""Building blocks of the decision-based (label-only) attacks, batched over samples.

Every function here queries only through :class:`~rfd.attacks.base.AttackState` (so each label is charged to
its sample) and never asks for a sample that cannot pay: a sample whose budget ends simply stops taking part.
A "path" is a per-sample curve ``t -> image`` through the input space, monotone in the sense the attacks
assume: the clean image at ``t = 0``, more adversarial as ``t`` grows. The binary search finds where a path
crosses the decision boundary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rfd.attacks.base import AttackState
from rfd.attacks.rng import RowDraws

__all__ = [
    "Path",
    "bcast",
    "bisect_boundary",
    "box_path",
    "can_pay",
    "push_to_radius",
    "query_adversarial",
    "random_adversarial",
    "ray_path",
]

# path(t, rows): images (R, C, H, W) at parameters t (R,) for the rows ``rows`` (int64 (R,)) of the batch the
# path was built for.
Path = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-sample vector v (B,) as (B, 1, 1, ...) to broadcast against ``like`` (B, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def can_pay(state: AttackState, idx: torch.Tensor) -> torch.Tensor:
    """bool (B,): samples idx are still active and can pay one more label query (``eot`` forwards)."""
    return state.active[idx] & (state.remaining(idx) >= state.config.eot)


def query_adversarial(state: AttackState, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """One charged label query per row: bool (B,), the black box's answer for x (B, C, H, W) is not y[idx]."""
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    return state.labels(x, idx) != state.y[idx]


def ray_path(x0: torch.Tensor, direction: torch.Tensor) -> Path:
    """``t -> clip(x0 + t * direction, 0, 1)``; x0, direction (B, C, H, W), t in the units of ``direction``.

    With a sign direction (entries +-1), t is the l_inf radius before clipping (RayS); with ``direction = x - x0``
    and t in [0, 1] it is the blend between x0 and x (HopSkipJump, l_2)."""

    def path(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (x0[rows] + bcast(t, x0[rows]) * direction[rows]).clamp(0.0, 1.0)

    return path


def box_path(x0: torch.Tensor, x: torch.Tensor) -> Path:
    """``t -> x0 + clip(x - x0, -t, t)``: x clipped into the l_inf ball of radius t around x0 (B, C, H, W).

    It stays in [0, 1] when x0 and x do (each pixel lies between x0 and x); at ``t = ||x - x0||_inf`` it is x.
    The l_inf binary search of SignFlip and HopSkipJump."""

    def path(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        d = x[rows] - x0[rows]
        r = bcast(t, d)
        return x0[rows] + torch.max(torch.min(d, r), -r)

    return path


def bisect_boundary(
    state: AttackState, idx: torch.Tensor, path: Path, lo: torch.Tensor, hi: torch.Tensor, tol: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched binary search for the boundary along ``path``.

    For each sample idx[i] (path row i), ``path(lo[i])`` is taken as not adversarial and ``path(hi[i])`` as
    adversarial. Each round queries the midpoint of every open interval once and halves it; a sample stops when
    ``hi - lo <= tol`` (tol: float or (B,)) or when it cannot pay another query. Returns the final (lo, hi),
    each (B,); ``hi`` only ever moves to points the black box called adversarial.
    """
    lo, hi = lo.clone(), hi.clone()
    tol_t = torch.as_tensor(tol, dtype=hi.dtype, device=hi.device).expand_as(hi)
    while True:
        open_ = (hi - lo > tol_t) & can_pay(state, idx)
        rows = torch.nonzero(open_).flatten()
        if rows.numel() == 0:
            return lo, hi
        mid = (lo[rows] + hi[rows]) / 2
        adv = query_adversarial(state, path(mid, rows), idx[rows])
        hi[rows[adv]] = mid[adv]
        lo[rows[~adv]] = mid[~adv]


def random_adversarial(
    state: AttackState, idx: torch.Tensor, draws: RowDraws, tries: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Look for an adversarial starting point by drawing uniform-noise images in [0, 1] (one query per draw).

    All samples that have not found one yet draw together, each at most ``tries`` times and only while it can
    pay; ``draws`` are the per-sample streams of the rows idx (``state.rng.rows(idx)``), so a sample's noise
    images do not depend on the other samples. Returns (x (B, C, H, W): the first noise image called
    adversarial, else the clean image; found: bool (B,))."""
    x = state.x0[idx].clone()
    found = torch.zeros(idx.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(tries):
        rows = torch.nonzero(~found & can_pay(state, idx)).flatten()
        if rows.numel() == 0:
            break
        noise = draws.subset(rows).rand(*x[rows].shape)
        adv = query_adversarial(state, noise, idx[rows])
        x[rows[adv]] = noise[adv]
        found[rows[adv]] = True
    return x, found


def push_to_radius(x0: torch.Tensor, x: torch.Tensor, norm: str, radius: float) -> torch.Tensor:
    """Move x (B, C, H, W) along the ray from x0 through x to distance ``radius`` (``norm``), then clip to [0, 1].

    Used to report, once the attack has seen an adversarial point within eps, the point of that ray on the
    eps-sphere: under the attacks' monotone-ray assumption it is at least as adversarial, and with a randomized
    model it lies further from the boundary. Clipping only moves pixels towards x0, so the distance stays
    <= radius. Rows with x == x0 stay x0."""
    d = (x - x0).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    scale = torch.where(dist > 0, radius / dist.clamp_min(1e-12), torch.zeros_like(dist))
    return (x0 + bcast(scale, x0) * (x - x0)).clamp(0.0, 1.0)
