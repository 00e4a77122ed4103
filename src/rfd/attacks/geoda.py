"""GeoDA: geometric decision-based attack, normal estimation in a low-frequency DCT subspace (l_2 and l_inf).

Rahmati, Moosavi-Dezfooli, Frossard & Dai, "GeoDA: a geometric framework for black-box adversarial attacks",
CVPR 2020, https://arxiv.org/abs/2003.06468 (reference code: github.com/thisisalirah/GeoDA; also ART's ``GeoDA``).

The subspace, the query schedule and the attack's update rules are plain torch functions
(:func:`dct_matrix`, :func:`low_frequency_basis`, :func:`low_frequency_noise`, :func:`subspace_side`,
:func:`query_schedule`); :class:`GeoDA` only runs them against the black box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.decision_search import (
    ReportAt,
    bcast,
    bisect_blend,
    bisect_boundary,
    can_pay,
    check_report_at,
    noise_start,
    probe_blocks,
    query_adversarial,
    radius_extra,
    ray_path,
    record_boundary,
)
from rfd.attacks.rng import RowDraws

__all__ = [
    "GeoDA",
    "GeoDAConfig",
    "dct_matrix",
    "low_frequency_basis",
    "low_frequency_noise",
    "query_schedule",
    "subspace_side",
]

# The paper's subspace on ImageNet: the 75 x 75 lowest DCT frequencies of 224 x 224 images (per channel). By
# default the same fraction of frequencies per axis is kept on other image sizes (see subspace_side).
_PAPER_SUB_DIM, _PAPER_SIDE = 75, 224
# DCT coefficients drawn per sample in one draw of its stream: the draws' granularity, fixed (a function of the
# image size only) so that a sample's probes do not depend on how many samples share an estimate.
_DRAW_ELEMENTS = 2**14
# Upper bound on probe images held at once in a normal estimate (elements), to bound memory.
_PROBE_ELEMENTS = 2**22


# -- the low-frequency subspace -----------------------------------------------------------------------------------
def dct_matrix(n: int, k: int | None = None, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The first ``k`` (default all ``n``) rows of the orthonormal DCT-II matrix of size ``n``: float32 (k, n).

    Row u is the cosine of frequency u, ``alpha_u cos(pi (2x + 1) u / (2n))`` for x = 0..n-1, with
    ``alpha_0 = sqrt(1/n)`` and ``alpha_u = sqrt(2/n)``; the rows are orthonormal (the full matrix is orthogonal).
    Computed in float64, returned as float32."""
    k = n if k is None else k
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, n={n}], got {k}")
    u = torch.arange(k, dtype=torch.float64, device=device).view(k, 1)
    x = torch.arange(n, dtype=torch.float64, device=device).view(1, n)
    m = torch.cos(math.pi * (2 * x + 1) * u / (2 * n)) * math.sqrt(2.0 / n)
    m[0] = math.sqrt(1.0 / n)
    return m.to(torch.float32)


def low_frequency_basis(height: int, width: int, k_h: int, k_w: int,
                        *, device: torch.device | str | None = None) -> torch.Tensor:
    """Orthonormal basis of the low-frequency subspace of ``height x width`` images: float32 (k_h * k_w, H * W).

    Row ``u * k_w + v`` is the flattened 2-D DCT basis image of frequencies (u, v), u < k_h, v < k_w (the
    reference code's ``2d_dct_basis`` for square images). Explicit, for small images and tests: the attack draws
    through :func:`low_frequency_noise`, which never builds this matrix."""
    dh = dct_matrix(height, k_h, device=device).double()
    dw = dct_matrix(width, k_w, device=device).double()
    return (dh[:, None, :, None] * dw[None, :, None, :]).reshape(k_h * k_w, height * width).to(torch.float32)


def low_frequency_noise(coeffs: torch.Tensor, dct_h: torch.Tensor, dct_w: torch.Tensor) -> torch.Tensor:
    """Images (..., H, W) with DCT coefficients ``coeffs`` (..., k_h, k_w) in the lowest frequencies, 0 elsewhere.

    ``dct_h`` (k_h, H) and ``dct_w`` (k_w, W) are :func:`dct_matrix` rows. The separable inverse DCT
    ``dct_h^T coeffs dct_w``, equal to ``coeffs.flatten() @ low_frequency_basis(H, W, k_h, k_w)`` but in
    O(k (H + W)) per pixel row instead of a dense (k_h k_w, H W) product. With standard normal coefficients the
    images are N(0, P), P the orthogonal projection onto the subspace (the paper's subspace noise)."""
    return dct_h.transpose(0, 1) @ (coeffs @ dct_w)


def subspace_side(side: int, sub_dim: int | None = None) -> int:
    """Frequencies kept along an image axis of ``side`` pixels: ``sub_dim`` if given (at most ``side``), else the
    paper's fraction 75/224 of the axis, rounded, at least 1 (28 -> 9, 32 -> 11, 224 -> 75)."""
    if sub_dim is None:
        return max(1, round(side * _PAPER_SUB_DIM / _PAPER_SIDE))
    if not 1 <= sub_dim <= side:
        raise ValueError(f"sub_dim must lie in [1, {side}] for images of side {side}, got {sub_dim}")
    return sub_dim


# -- the query schedule --------------------------------------------------------------------------------------------
def query_schedule(queries: torch.Tensor, lambda_param: float, first_evals: int, search_reserve: int
                   ) -> torch.Tensor:
    """Probes per iteration for samples with ``queries`` (int (B,)) label queries to spend: int64 (B, T_max).

    The paper's optimal allocation over T iterations, ``N_t = Q lambda^(-2t/3) / sum_{i<T} lambda^(-2i/3)``
    (t = 0..T-1; growing with t for lambda < 1, uniform for lambda = 1), of ``Q = queries - search_reserve * T``
    (queries left for the line and binary searches, as the reference code sets aside 25 per iteration). T is the
    largest number of iterations whose first estimate still gets ``first_evals`` probes (the reference code walks
    T until N_0 lies in [50, 80]), at least 1. Row i holds N_0..N_{T_i - 1}, each >= 1, then zeros."""
    b = queries.shape[0]
    dev = queries.device
    q = queries.to(torch.float64)
    t_max = max(1, int(queries.max()) // max(1, first_evals + search_reserve) + 1) if b else 1
    coef = lambda_param ** (-2.0 * torch.arange(t_max, dtype=torch.float64, device=dev) / 3.0)  # (t_max,)
    total = coef.cumsum(0)  # sum of the first T coefficients, T = 1..t_max
    its = torch.arange(1, t_max + 1, dtype=torch.float64, device=dev)
    first = torch.round((q.view(b, 1) - search_reserve * its) / total)  # N_0 if the sample ran T iterations
    iterations = (first >= first_evals).sum(1).clamp_min(1)  # N_0 falls with T: the feasible T are a prefix
    spend = q - search_reserve * iterations.to(torch.float64)
    n = torch.round(spend.view(b, 1) * coef.view(1, t_max) / total[iterations - 1].view(b, 1)).clamp_min(1)
    live = torch.arange(t_max, device=dev).view(1, t_max) < iterations.view(b, 1)
    return torch.where(live, n, torch.zeros_like(n)).to(torch.int64)


# -- the attack ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GeoDAConfig(AttackConfig):
    """GeoDA settings; defaults are the reference code's unless said. norm, eps, budget, seed, eot: see AttackConfig.

    ``sigma`` and ``tol`` are in pixel units ([0, 1] images); the reference code's 0.0002 and 0.0001 are in
    normalised units, but their ratio (probes twice as far as the binary search's resolution) is what matters."""

    init_tries: int = 1000  # uniform-noise images drawn per sample (1 query each) to find an adversarial start
    # frequencies kept per image axis (the subspace holds sub_dim x sub_dim DCT coefficients per channel); None:
    # the paper's fraction 75/224 of the side, i.e. 9 x 9 of 28 x 28 (Fashion-MNIST), 11 x 11 of 32 x 32, 75 x 75
    # of 224 x 224 (ImageNet, the paper's choice)
    sub_dim: int | None = None
    sigma: float = 2e-4  # probes x_b + sigma * z, z ~ N(0, P) in the subspace (per-coefficient std, pixel units)
    tol: float = 1e-4  # binary searches stop when the bracketing segment is shorter than tol (l_2, pixel units)
    lambda_param: float = 0.6  # lambda of the query allocation N_t ~ lambda^(-2t/3); 1 = uniform (0 < lambda <= 1)
    first_evals: int = 50  # fewest probes of the first normal estimate (fixes the number of iterations T)
    search_reserve: int = 25  # queries per iteration set aside for the searches when the schedule is planned
    max_doublings: int = 10  # the line search doubles its radius at most this often before the iteration gives up
    report_at: ReportAt = "eps"  # what the check gets once within eps (decision_search.ReportAt)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("init_tries", "first_evals"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("search_reserve", "max_doublings"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sub_dim is not None and self.sub_dim < 1:
            raise ValueError(f"sub_dim must be >= 1 frequency (or None), got {self.sub_dim}")
        if not (self.sigma > 0):
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if not (self.tol > 0):
            raise ValueError(f"tol must be a positive l_2 length, got {self.tol}")
        if not (0 < self.lambda_param <= 1):
            raise ValueError(f"lambda_param must lie in (0, 1], got {self.lambda_param}")
        check_report_at(self.report_at)


class GeoDA(Attack):
    """GeoDA: Geometric Decision-based Attack (l_2 or l_inf, label-only).

    Paper: https://arxiv.org/abs/2003.06468. The decision boundary of a deep net has low mean curvature near the
    data, so its normal at one boundary point tells where the boundary is closest to the clean image x0. From an
    adversarial uniform-noise image and a binary search along the segment to x0 (first boundary point x_b), each
    iteration t

    1. estimates the normal at x_b from the labels of ``N_t`` probes ``x_b + sigma z``, z Gaussian in the span of
       the lowest DCT frequencies (``sub_dim`` per axis and channel): ``mean_j(+-z_j)``, + where adversarial; the
       estimates of all iterations are summed (as the reference code does);
    2. takes the optimal direction for that normal, ``v = eta / ||eta||_2`` (l_2) or ``v = sign(eta)`` (l_inf),
       and searches the ray ``x0 + r v`` *from the clean image*: one query at the current boundary distance,
       doubling r until adversarial (``max_doublings``), then a binary search to ``tol``: the new x_b.

    The probes per iteration follow the paper's optimal allocation ``N_t ~ lambda^(-2t/3)``
    (:func:`query_schedule`), planned per sample from the budget left after the start; once its T iterations are
    done a sample repeats ``N_{T-1}`` until the budget ends. A sample is claimed broken once its boundary distance is
    <= eps (verification gets the eps-sphere point of the same ray, or the boundary point with
    ``report_at="boundary"``). Every label, probes and searches included, is one charged query (``eot`` forwards);
    probes are capped so that no sample goes past its budget. Every draw comes from the sample's own stream.

    Differences from the reference code, on purpose: the adversarial start is uniform noise (shared with HopSkipJump)
    instead of growing Gaussian noise; the line search starts at the current distance and doubles (the reference
    walks out in fixed steps of an unnormalised estimate); every probe and search query is clipped to [0, 1] and
    charged; the estimate uses the direction actually probed after clipping; the sub-space fraction, not 75, is kept
    on small images.

    Arguments (see :class:`GeoDAConfig`): norm ("l2" | "linf", default "linf"), eps (0.05), budget (1000),
    seed (0), eot (1), init_tries (1000), sub_dim (None: 75/224 of the side), sigma (2e-4), tol (1e-4),
    lambda_param (0.6), first_evals (50), search_reserve (25), max_doublings (10), report_at ("eps").

    Shape:
        - x: (N, C, H, W) float32 in [0, 1]; y: (N,) int labels.
        - result: :class:`~rfd.attacks.result.AttackResult`; ``result.extras["radius"]`` (N,) is each sample's
          smallest boundary distance in the attack's norm (inf if no start was found), the distance of a failed
          sample's ``x_adv``.

    Example:
        >>> bb = LocalBlackBox(model, access="labels", budget=10000)
        >>> result = GeoDA(norm="l2", eps=1.0, budget=10000).run(bb, x, y)
    """

    name: ClassVar[str] = "geoda"
    access = "labels"
    norms: ClassVar[tuple[str, ...]] = ("l2", "linf")
    config_class: ClassVar[type[AttackConfig]] = GeoDAConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, GeoDAConfig)
        x0 = state.x0
        n, dev = x0.shape[0], x0.device
        height, width = x0.shape[-2:]
        dct_h = dct_matrix(height, subspace_side(height, cfg.sub_dim), device=dev)
        dct_w = dct_matrix(width, subspace_side(width, cfg.sub_dim), device=dev)
        everyone = torch.arange(n, device=dev)
        best = radius_extra(state)  # smallest distance reached, per sample

        idx, x_start = noise_start(state, cfg.init_tries)
        if idx.numel() == 0:
            return
        # first boundary point: binary search on the segment x0 -> start (parameter s in [0, 1])
        s_tol = cfg.tol / (x_start - x0[idx]).flatten(1).norm(dim=1).clamp_min(1e-12)
        x_b = torch.zeros_like(x0)  # current boundary point (adversarial side), per sample
        x_b[idx] = bisect_blend(state, idx, x_start, s_tol)
        dist = torch.full((n,), math.inf, device=dev)  # distance of x_b, per sample
        self._arrived(state, idx, x_b[idx], dist, best)
        started = torch.zeros(n, dtype=torch.bool, device=dev)
        started[idx] = True

        # the probes of each iteration, planned per sample from the label queries it has left
        plan = query_schedule(state.remaining(idx) // cfg.eot, cfg.lambda_param, cfg.first_evals, cfg.search_reserve)
        schedule = torch.zeros(n, plan.shape[1], dtype=torch.int64, device=dev)
        schedule[idx] = plan
        iterations = (schedule > 0).sum(1)
        normal = torch.zeros_like(x0)  # sum of the normal estimates, per sample
        steps = torch.zeros(n, dtype=torch.int64, device=dev)  # iterations done, per sample
        while True:
            idx = everyone[started & can_pay(state, everyone)]
            if idx.numel() == 0:
                return
            t = torch.minimum(steps[idx], iterations[idx] - 1)
            evals = torch.minimum(schedule[idx, t], state.remaining(idx) // cfg.eot)
            normal[idx] += self._estimate_normal(state, idx, x_b[idx], evals, dct_h, dct_w, state.rng.rows(idx))
            eta = normal[idx]
            if cfg.norm == "l2":
                v = eta / bcast(eta.flatten(1).norm(dim=1).clamp_min(1e-12), eta)
            else:
                v = eta.sign()
            hi, moved = self._line_search(state, idx, v, dist[idx])
            rows = torch.nonzero(moved).flatten()
            if rows.numel() > 0:
                i = idx[rows]
                x_b[i] = ray_path(x0[i], v[rows])(hi[rows], torch.arange(rows.numel(), device=dev))
                self._arrived(state, i, x_b[i], dist, best)
            steps[idx] += 1

    def _line_search(self, state: AttackState, idx: torch.Tensor, v: torch.Tensor, start: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boundary along the rays ``clip(x0 + r v)`` (v (B, C, H, W), r in the attack's norm before clipping).

        Queries r = ``start`` (B,), doubling r while the answer is not adversarial (at most ``max_doublings``
        times; l_inf stops at r = 1, where every ray has reached its corner of [0, 1]), then binary-searches the
        bracket to an l_2 width of ``tol``. Returns (r (B,): the adversarial end, moved: bool (B,), the rows that
        found an adversarial point; the others keep their boundary point)."""
        cfg = self.config
        assert isinstance(cfg, GeoDAConfig)
        x0 = state.x0[idx]
        b = idx.numel()
        path = ray_path(x0, v)
        lo = torch.zeros(b, device=v.device)
        hi = start.clamp_min(cfg.tol).clone()
        if cfg.norm == "linf":
            hi = hi.clamp(max=1.0)
        found = torch.zeros(b, dtype=torch.bool, device=v.device)
        open_ = torch.ones(b, dtype=torch.bool, device=v.device)
        for _ in range(cfg.max_doublings + 1):
            rows = torch.nonzero(open_ & ~found & can_pay(state, idx)).flatten()
            if rows.numel() == 0:
                break
            adv = query_adversarial(state, path(hi[rows], rows), idx[rows])
            found[rows[adv]] = True
            miss = rows[~adv]
            lo[miss] = hi[miss]
            hi[miss] = hi[miss] * 2
            if cfg.norm == "linf":
                open_[miss[lo[miss] >= 1.0]] = False
                hi[miss] = hi[miss].clamp(max=1.0)
        rows = torch.nonzero(found).flatten()
        if rows.numel() > 0:
            width = cfg.tol / v[rows].flatten(1).norm(dim=1).clamp_min(1e-12)  # l_2 tol in units of r
            _, hi_f = bisect_boundary(state, idx[rows], ray_path(x0[rows], v[rows]), lo[rows], hi[rows], width)
            hi[rows] = hi_f
        return hi, found

    def _arrived(self, state: AttackState, idx: torch.Tensor, x_b: torch.Tensor, dist: torch.Tensor,
                 best: torch.Tensor) -> None:
        """Record new boundary points x_b (B, ...) of samples idx (each one a black-box-adversarial point), their
        distances in ``dist``, and claim the samples whose distance is now <= eps."""
        cfg = self.config
        assert isinstance(cfg, GeoDAConfig)
        dist[idx] = record_boundary(state, idx, x_b, best, report_at=cfg.report_at)

    def _estimate_normal(self, state: AttackState, idx: torch.Tensor, x_b: torch.Tensor, evals: torch.Tensor,
                         dct_h: torch.Tensor, dct_w: torch.Tensor, draws: RowDraws) -> torch.Tensor:
        """Normal estimate (B, C, H, W) at boundary points x_b, pointing to the adversarial side (not normalised).

        Sample i uses ``evals[i]`` probes ``x_b + sigma z``, z with standard normal DCT coefficients in the
        low-frequency block (independent per channel), clipped to [0, 1]; the estimate is the mean of the probed
        directions (after clipping) weighted +1 where the answer is adversarial and -1 where not.

        The coefficients come from ``draws``, the per-sample streams of the rows idx, in draws of a fixed number of
        probes per sample (a function of the image size only) and only while the sample has probes left: sample
        i's probes depend on nothing but its own stream and ``evals[i]``, whichever samples share the estimate.
        Probes are drawn and queried in blocks of samples so memory stays bounded."""
        cfg = self.config
        assert isinstance(cfg, GeoDAConfig)
        channels = x_b.shape[1]
        k_h, k_w = dct_h.shape[0], dct_w.shape[0]
        k = max(1, _DRAW_ELEMENTS // (channels * k_h * k_w))  # probes per sample and draw
        block = max(1, _PROBE_ELEMENTS // (k * x_b[0].numel()))  # samples drawn and probed at once
        total = torch.zeros_like(x_b)  # sum_j answer_j * u_j
        for rows, vr, vc in probe_blocks(evals, k, block):
            coeffs = draws.subset(rows).randn(rows.numel(), k, channels, k_h, k_w)
            at = rows[vr]
            xb = x_b[at]
            probes = (xb + cfg.sigma * low_frequency_noise(coeffs[vr, vc], dct_h, dct_w)).clamp(0.0, 1.0)
            u = (probes - xb) / cfg.sigma  # the direction actually probed, after clipping
            answer = query_adversarial(state, probes, idx[at]).float() * 2 - 1
            total.index_add_(0, at, bcast(answer, u) * u)
        return total / bcast(evals.clamp_min(1).float(), total)
