"""Building blocks of the decision-based (label-only) attacks, batched over samples.

Every function here queries only through :class:`~rfd.attacks.base.AttackState` (so each label is charged to
its sample) and never asks for a sample that cannot pay: a sample whose budget ends simply stops taking part.
A "path" is a per-sample curve ``t -> image`` through the input space, monotone in the sense the attacks
assume: the clean image at ``t = 0``, more adversarial as ``t`` grows. The binary search finds where a path
crosses the decision boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch

from rfd.attacks.base import AttackState
from rfd.attacks.rng import RowDraws
from rfd.blackbox.stateful import group_ranks

__all__ = [
    "REPORT_AT",
    "Path",
    "ReportAt",
    "affordable",
    "bcast",
    "bisect_blend",
    "bisect_boundary",
    "box_path",
    "can_pay",
    "check_report_at",
    "noise_start",
    "norm_distance",
    "probe_blocks",
    "push_to_radius",
    "query_adversarial",
    "radius_extra",
    "random_adversarial",
    "ray_path",
    "record_boundary",
]

# Which image a decision attack offers to the success check once its boundary point is within eps: "eps" = the
# ray from x0 through the boundary point pushed out to distance eps (further from the boundary), "boundary" = the
# boundary point itself (the original papers' output). One setting, shared by every decision attack's config.
ReportAt = Literal["eps", "boundary"]
REPORT_AT: tuple[str, ...] = ("eps", "boundary")


def check_report_at(value: object) -> None:
    """Raise ValueError unless ``value`` is one of :data:`REPORT_AT` (the decision configs' ``report_at``)."""
    if value not in REPORT_AT:
        raise ValueError(f"report_at must be 'eps' or 'boundary', got {value!r}")

# path(t, rows): images (R, C, H, W) at parameters t (R,) for the rows ``rows`` (int64 (R,)) of the batch the
# path was built for.
Path = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-sample vector v (B,) as (B, 1, 1, ...) to broadcast against ``like`` (B, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def norm_distance(x: torch.Tensor, x0: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row distance (B,) of x from x0 (B, C, H, W) in ``norm`` ("linf": max abs pixel, else l_2)."""
    diff = (x - x0).flatten(1)
    return diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)


def can_pay(state: AttackState, idx: torch.Tensor) -> torch.Tensor:
    """bool (B,): samples idx are still active and can pay one more label query (``eot`` forwards)."""
    return state.active[idx] & (state.remaining(idx) >= state.config.eot)


def affordable(state: AttackState, samples: torch.Tensor) -> torch.Tensor:
    """bool (B,): which of the label queries for ``samples`` (int64 (B,), repeats allowed, in sending order) the
    samples can still pay together: the j-th query of a sample (0-based) if j < its remaining // eot."""
    if samples.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=samples.device)
    rank = group_ranks(samples)
    return state.active[samples] & (rank < state.remaining(samples) // state.config.eot)


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


def bisect_blend(state: AttackState, idx: torch.Tensor, x_adv: torch.Tensor, tol: torch.Tensor | float
                 ) -> torch.Tensor:
    """Binary search on the blend ``x0 + s (x_adv - x0)``, s in [0, 1], from adversarial points x_adv (B, C, H, W)
    of samples idx towards their clean images; ``tol`` (float or (B,)) is the width at which it stops, in units of
    s. Returns the adversarial-side ends (B, C, H, W) (x_adv itself where nothing could be paid for)."""
    x0 = state.x0[idx]
    path = ray_path(x0, x_adv - x0)
    ones = torch.ones(idx.numel(), device=x_adv.device)
    _, hi = bisect_boundary(state, idx, path, torch.zeros_like(ones), ones, tol)
    return path(hi, torch.arange(idx.numel(), device=x_adv.device))


def record_boundary(state: AttackState, idx: torch.Tensor, x_b: torch.Tensor, best: torch.Tensor, *,
                    report_at: str) -> torch.Tensor:
    """Record new points x_b (B, C, H, W) of samples idx, each called adversarial by its own query.

    ``best`` (N,) holds each sample's smallest distance so far (the ``radius`` extra): where x_b improves on it,
    it is updated and x_b kept as the sample's ``x_adv``. Samples whose point now lies within eps are claimed:
    the check gets x_b (``report_at="boundary"``) or its ray from x0 pushed out to distance eps (``"eps"``).
    Returns the distances (B,) of x_b in the attack's norm."""
    norm, eps = state.config.norm, state.config.eps
    x0 = state.x0[idx]
    dd = norm_distance(x_b, x0, norm)
    better = dd < best[idx]
    best[idx[better]] = dd[better]
    state.keep(x_b[better], idx[better])
    won = dd <= eps
    if bool(won.any()):
        cand = x_b[won]
        if report_at == "eps":
            cand = push_to_radius(x0[won], cand, norm, eps)
        state.report(cand, idx[won])
    return dd


def probe_blocks(evals: torch.Tensor, per_draw: int, block: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The schedule of a batched probe estimate in which sample i (row i) spends ``evals[i]`` probes.

    Probes are drawn ``per_draw`` at a time per sample (a number fixed by the image size, not the batch, so that
    sample i's draws depend only on its own stream and ``evals[i]``), and only while the sample has probes left;
    rows are taken ``block`` at a time to bound memory. Yields ``(rows, vr, vc)``: the rows (R,) that draw
    ``per_draw`` probes now, and the flat indices (into ``rows`` and the probe column) of the probes among them
    that are to be queried (the last draw of a sample may hold more probes than it has left)."""
    cols = torch.arange(per_draw, device=evals.device)
    m_max = int(evals.max()) if evals.numel() > 0 else 0
    for j0 in range(0, m_max, per_draw):
        live = torch.nonzero(evals > j0).flatten()  # samples with probes j0, j0 + 1, ... left: only they draw
        for r0 in range(0, live.numel(), block):
            rows = live[r0:r0 + block]
            valid = (j0 + cols).view(1, per_draw) < evals[rows].view(-1, 1)  # (R, per_draw)
            vr, vc = torch.nonzero(valid, as_tuple=True)
            yield rows, vr, vc


def radius_extra(state: AttackState) -> torch.Tensor:
    """A new per-sample radius (N,), all inf, registered as the result's ``extras["radius"]``: the smallest
    distance a decision attack has reached per sample (updated in place by :func:`record_boundary`)."""
    best = torch.full((state.n,), float("inf"), device=state.x0.device)
    state.extras["radius"] = best
    return best


def noise_start(state: AttackState, tries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The uniform-noise start of a decision attack: every sample that can pay draws up to ``tries`` noise images
    from its own stream (:func:`random_adversarial`). Returns (idx, x_start): the samples that found an adversarial
    image, and those images (B, C, H, W)."""
    everyone = torch.arange(state.n, device=state.x0.device)
    idx = everyone[can_pay(state, everyone)]
    # every draw comes from the sample's own stream (state.rng): its path does not depend on the other samples
    x_start, found = random_adversarial(state, idx, state.rng.rows(idx), tries)
    return idx[found], x_start[found]
