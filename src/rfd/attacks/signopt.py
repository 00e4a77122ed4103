"""Sign-OPT: hard-label attack by sign-based gradient estimates of the boundary distance (l_inf and l_2).

Cheng, Singh, Chen, Chen, Liu & Hsieh, "Sign-OPT: A Query-Efficient Hard-label Adversarial Attack", ICLR 2020,
https://arxiv.org/abs/1909.10773 (reference code: github.com/cmhcbb/attackbox, ``Sign_OPT.py`` for l_2 and
``Sign_OPT_lf.py`` for l_inf).
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
    bisect_boundary,
    can_pay,
    check_report_at,
    probe_blocks,
    query_adversarial,
    radius_extra,
    ray_path,
    record_boundary,
)
from rfd.attacks.rng import RowDraws

__all__ = ["SignOPT", "SignOPTConfig", "unit"]

# Upper bound on probe images held at once in a sign estimate (elements), to bound memory.
_PROBE_ELEMENTS = 2**22
# Probe elements per sample in one draw of its stream: fixed by the image size (not by the batch), so that a
# sample's directions u do not depend on how many samples share an estimate.
_DRAW_ELEMENTS = 2**16
# The reference code's constants: binary-search width of the initial direction search (in units of the attack's
# norm), the step size below which the line search counts as stalled, the lower end of beta (the original stops
# the attack there), the tries of each half of the line search, and the geometric shrink of the local search.
_INIT_TOL = {"l2": 1e-3, "linf": 1e-5}
_STALL_ALPHA = {"l2": 1e-4, "linf": 1e-6}
_MIN_BETA = 1e-8
_LINE_TRIES = 15
_SHRINK = 0.99
# Local binary searches stop at a width of beta / 500 (the original), but never below this fraction of the
# distance: float32 images cannot resolve finer rays, and a search that cannot halve would spend the budget.
_REL_TOL_FLOOR = 1e-6


@dataclass(frozen=True, kw_only=True)
class SignOPTConfig(AttackConfig):
    """Sign-OPT settings; defaults are the paper's / reference code's. norm, eps, budget, seed, eot: see
    :class:`AttackConfig`."""

    init_directions: int = 100  # Gaussian directions tried per sample for the start (1 query each + a search)
    k: int = 200  # random directions u per sign-gradient estimate (1 query each)
    alpha: float = 0.2  # initial step size of the line search on theta (doubled / quartered per sample)
    beta: float = 0.001  # smoothing: theta + beta * u, u of unit norm; x0.1 when the line search stalls
    # width at which the initial binary searches stop, in the attack's norm; None: the reference code's 1e-3 (l_2)
    # or 1e-5 (l_inf)
    init_tol: float | None = None
    report_at: ReportAt = "eps"  # what the check gets once within eps (decision_search.ReportAt)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("init_directions", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.alpha > 0):
            raise ValueError(f"alpha must be a positive step size, got {self.alpha}")
        if not (self.beta > 0):
            raise ValueError(f"beta must be a positive smoothing size, got {self.beta}")
        if self.init_tol is not None and not (self.init_tol > 0):
            raise ValueError(f"init_tol must be a positive width, got {self.init_tol}")
        check_report_at(self.report_at)


def unit(v: torch.Tensor, norm: str) -> torch.Tensor:
    """v (B, ...) scaled per row to unit ``norm`` ("linf" or "l2"); zero rows stay zero."""
    flat = v.flatten(1)
    n = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    return v / bcast(n.clamp_min(1e-12), v)


class SignOPT(Attack):
    """Sign-OPT (l_inf or l_2, label-only).

    The attack searches a direction theta (unit norm) minimising g(theta), the distance from the clean image x0 to
    the decision boundary along the ray ``x0 + lambda * theta`` (clipped to [0, 1]), which a binary search finds
    from labels alone. It starts from the best of ``init_directions`` Gaussian directions whose far end is
    adversarial. Each iteration then

    1. estimates the sign gradient of g from ``k`` random unit directions u, one query each: the label of
       ``x0 + g(theta) * unit(theta + beta u)`` tells the sign of ``g(theta + beta u) - g(theta)`` (adversarial:
       the boundary came closer), and the estimate is the mean of ``sign * u``;
    2. line-searches the step: ``theta - alpha * grad`` (renormalised) is tried with alpha doubling while g keeps
       falling, or quartering (up to 15 times) if the first try did not lower g; a stalled search resets
       alpha to 1 and divides beta by 10.

    l_inf (the threat model of RayS/SignFlip here) normalises theta and u in l_inf (``Sign_OPT_lf.py``), so
    lambda is the l_inf radius before clipping; l_2 normalises in l_2 (``Sign_OPT.py``).

    A sample is claimed broken once the l_inf (l_2) distance of its boundary point (the clipped ray point at g,
    which a query called adversarial) is <= eps; verification gets the ray's point at distance eps
    (``report_at="eps"``) or the boundary point (``"boundary"``). ``result.extras["radius"]`` is each sample's
    smallest boundary-point distance in the attack's norm (inf if no adversarial direction was found), equal to the
    distance of a failed sample's ``x_adv``.

    Differences from the reference code, on purpose: every label is a charged query, searches included, and
    estimates use fewer directions when the budget would not cover ``k``; a candidate of the line search whose first
    query (at the current g) is not adversarial is rejected at once (the original then widens the bracket upward,
    which can only produce a value it rejects); local binary searches stop no finer than 1e-6 of the distance
    (float32); beta stops at 1e-8 instead of ending the attack (each sample runs until it succeeds or its budget
    ends); the rays are clipped to [0, 1]; draws come from each sample's own stream (``state.rng``).

    Args (besides norm, eps, budget, seed, eot): init_directions (100), k (200), alpha (0.2), beta (0.001),
    init_tol (None: 1e-3 for l_2, 1e-5 for l_inf), report_at ("eps"); see :class:`SignOPTConfig`.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,).

    Example:
        >>> bb = LocalBlackBox(model, access="labels", budget=10000)
        >>> result = SignOPT(norm="linf", eps=0.05, budget=10000).run(bb, x, y)
        >>> result.extras["radius"]  # (N,) best l_inf boundary distance per image
    """

    name: ClassVar[str] = "signopt"
    access = "labels"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    config_class: ClassVar[type[AttackConfig]] = SignOPTConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, SignOPTConfig)
        x0 = state.x0
        n, dev = x0.shape[0], x0.device
        everyone = torch.arange(n, device=dev)
        best = radius_extra(state)  # smallest distance reached, per sample
        theta = torch.zeros_like(x0)  # current direction, unit norm, per sample
        g = torch.full((n,), math.inf, device=dev)  # g(theta): boundary distance along theta

        self._initial_directions(state, theta, g, best)
        started = torch.isfinite(g)
        alpha = torch.full((n,), cfg.alpha, device=dev)
        beta = torch.full((n,), cfg.beta, device=dev)
        stall = _STALL_ALPHA[cfg.norm]
        while True:
            idx = everyone[started & can_pay(state, everyone)]
            if idx.numel() == 0:
                return
            evals = torch.clamp(state.remaining(idx) // cfg.eot, max=cfg.k)
            grad = self._sign_gradient(state, idx, theta[idx], g[idx], beta[idx], evals, state.rng.rows(idx))
            new_theta, new_g, new_alpha = self._line_search(state, idx, theta[idx], g[idx], grad, alpha[idx],
                                                            beta[idx])
            moved = new_g < g[idx]
            stalled = new_alpha < stall
            alpha[idx] = torch.where(stalled, torch.ones_like(new_alpha), new_alpha)
            beta[idx] = torch.where(stalled, (beta[idx] * 0.1).clamp_min(_MIN_BETA), beta[idx])
            rows = torch.nonzero(moved).flatten()
            if rows.numel() > 0:
                i = idx[rows]
                theta[i], g[i] = new_theta[rows], new_g[rows]
                self._arrived(state, i, theta[i], g[i], best)

    # -- g(theta) -------------------------------------------------------------------------------------------
    def _arrived(self, state: AttackState, idx: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                 best: torch.Tensor) -> None:
        """Record new boundary distances g (B,) along theta (B, ...) of samples idx (each ray point at g was called
        adversarial by its own query); keep the best points and claim the samples now within eps."""
        cfg = self.config
        assert isinstance(cfg, SignOPTConfig)
        x_b = ray_path(state.x0[idx], theta)(g, torch.arange(idx.numel(), device=g.device))
        record_boundary(state, idx, x_b, best, report_at=cfg.report_at)

    def _initial_directions(self, state: AttackState, theta: torch.Tensor, g: torch.Tensor,
                            best: torch.Tensor) -> None:
        """The reference code's start: per sample, ``init_directions`` Gaussian directions theta, one query at
        ``x0 + theta`` each; an adversarial one is binary-searched to the boundary (after one query at the best g so
        far when it starts further out: a direction not adversarial there cannot improve it). Fills theta and g of
        the samples that found an adversarial direction (g stays inf for the others)."""
        cfg = self.config
        assert isinstance(cfg, SignOPTConfig)
        x0 = state.x0
        n, dev = x0.shape[0], x0.device
        everyone = torch.arange(n, device=dev)
        tol = cfg.init_tol if cfg.init_tol is not None else _INIT_TOL[cfg.norm]
        for _ in range(cfg.init_directions):
            idx = everyone[can_pay(state, everyone)]
            if idx.numel() == 0:
                return
            raw = state.rng.rows(idx).randn(*x0[idx].shape)
            flat = raw.flatten(1)
            lam0 = flat.abs().amax(1) if cfg.norm == "linf" else flat.norm(dim=1)
            direction = unit(raw, cfg.norm)
            path = ray_path(x0[idx], direction)
            rows = torch.arange(idx.numel(), device=dev)
            rows = rows[query_adversarial(state, path(lam0, rows), idx)]
            # a direction whose boundary lies beyond the current best cannot improve it: check there first
            far = lam0[rows] > g[idx[rows]]
            ok = ~far
            ask = far & can_pay(state, idx[rows])
            if bool(ask.any()):
                r = rows[ask]
                ok[ask] = query_adversarial(state, path(g[idx[r]], r), idx[r])
            rows = rows[ok]
            if rows.numel() == 0:
                continue
            i = idx[rows]
            hi0 = torch.minimum(lam0[rows], g[i])
            _, hi = bisect_boundary(state, i, ray_path(x0[i], direction[rows]), torch.zeros_like(hi0), hi0, tol)
            better = hi < g[i]
            i, hi = i[better], hi[better]
            theta[i], g[i] = direction[rows[better]], hi
            self._arrived(state, i, theta[i], g[i], best)

    def _local_g(self, state: AttackState, idx: torch.Tensor, theta: torch.Tensor, ref: torch.Tensor,
                 tol: torch.Tensor) -> torch.Tensor:
        """g along candidate directions theta (B, ...) for samples idx, if below ``ref`` (B,): one query at ``ref``;
        if adversarial, shrink by 0.99 until not, then bisect to ``tol`` (B,). Returns (B,): the boundary distance
        found (<= ref; a point a query called adversarial), inf where the point at ``ref`` was not adversarial or
        could not be paid for."""
        dev = ref.device
        out = torch.full_like(ref, math.inf)
        path = ray_path(state.x0[idx], theta)
        rows = torch.nonzero(can_pay(state, idx)).flatten()
        if rows.numel() == 0:
            return out
        adv = query_adversarial(state, path(ref[rows], rows), idx[rows])
        rows = rows[adv]
        hi, lo = ref[rows].clone(), ref[rows] * _SHRINK
        shrinking = torch.ones(rows.numel(), dtype=torch.bool, device=dev)  # lo not yet seen non-adversarial
        while True:
            sub = torch.nonzero(shrinking & can_pay(state, idx[rows])).flatten()
            if sub.numel() == 0:
                break
            a = query_adversarial(state, path(lo[sub], rows[sub]), idx[rows[sub]])
            hit = sub[a]
            hi[hit] = lo[hit]
            lo[hit] = lo[hit] * _SHRINK
            shrinking[sub[~a]] = False
        # rows that ran out while shrinking keep their last adversarial point: no bisection for them
        sub = torch.nonzero(~shrinking).flatten()
        if sub.numel() > 0:
            r = rows[sub]
            sub_path = ray_path(state.x0[idx[r]], theta[r])
            _, hi_b = bisect_boundary(state, idx[r], sub_path, lo[sub], hi[sub], tol[r])
            hi[sub] = hi_b
        out[rows] = hi
        return out

    # -- the two steps of an iteration -----------------------------------------------------------------------
    def _sign_gradient(self, state: AttackState, idx: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                       beta: torch.Tensor, evals: torch.Tensor, draws: RowDraws) -> torch.Tensor:
        """The sign estimate (B, C, H, W) of grad g at theta for samples idx: mean over ``evals[i]`` directions u
        (Gaussian, unit norm) of ``sign(g(theta + beta u) - g(theta)) * u``, each sign one query at
        ``x0 + g * unit(theta + beta u)`` (adversarial: -1).

        Directions are drawn from ``draws`` (the rows' own streams) in draws of a fixed number per sample, and only
        while the sample has directions left; probes are queried in blocks of samples to bound memory."""
        cfg = self.config
        assert isinstance(cfg, SignOPTConfig)
        shape = theta.shape[1:]
        d = theta[0].numel()
        ones = (1,) * len(shape)
        per_draw = max(1, min(cfg.k, _DRAW_ELEMENTS // d))  # a function of the config and image size only
        block = max(1, _PROBE_ELEMENTS // (per_draw * d))
        total = torch.zeros_like(theta)
        for rows, vr, vc in probe_blocks(evals, per_draw, block):
            r = rows.numel()
            u = unit(draws.subset(rows).randn(r, per_draw, *shape).flatten(0, 1), cfg.norm).view(r, per_draw, *shape)
            cand = theta[rows].unsqueeze(1) + beta[rows].view(r, 1, *ones) * u
            cand = unit(cand.flatten(0, 1), cfg.norm).view(r, per_draw, *shape)
            probes = (state.x0[idx[rows]].unsqueeze(1) + g[rows].view(r, 1, *ones) * cand).clamp(0.0, 1.0)
            at = rows[vr]
            sign = 1.0 - 2.0 * query_adversarial(state, probes[vr, vc], idx[at]).float()
            total.index_add_(0, at, bcast(sign, u[vr, vc]) * u[vr, vc])
        return total / bcast(evals.clamp_min(1).float(), total)

    def _line_search(self, state: AttackState, idx: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                     grad: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference code's line search on ``theta - alpha * grad``, all samples idx at once, each in its own
        phase: *grow* (try, double alpha, continue while g falls; up to 15 tries), and, if the first try did not
        lower g, *shrink* (quarter alpha, try; stop at the first improvement or after 15 tries).
        Returns (theta, g, alpha) per sample: the best direction and distance found (the inputs if none) and the
        step size to start from next time."""
        cfg = self.config
        dev = g.device
        b = idx.numel()
        best_theta, best_g, a = theta.clone(), g.clone(), alpha.clone()
        phase = torch.ones(b, dtype=torch.int64, device=dev)  # 1 grow, 2 shrink, 0 done
        tries = torch.zeros(b, dtype=torch.int64, device=dev)
        while True:
            rows = torch.nonzero((phase > 0) & can_pay(state, idx)).flatten()
            if rows.numel() == 0:
                break
            shrink = phase[rows] == 2
            a[rows[shrink]] *= 0.25
            cand = unit(theta[rows] - bcast(a[rows], grad[rows]) * grad[rows], cfg.norm)
            ref = best_g[rows]  # grow: the best so far; shrink: still g (nothing improved)
            tol = torch.maximum(beta[rows] / 500, ref * _REL_TOL_FLOOR)
            new_g = self._local_g(state, idx[rows], cand, ref, tol)
            better = new_g < ref
            acc = rows[better]
            best_theta[acc], best_g[acc] = cand[better], new_g[better]
            tries[rows] += 1
            grow = ~shrink
            a[rows[grow]] *= 2
            # grow: stop at the first try that does not improve (go on to shrink if nothing improved yet)
            g_rows, g_better = rows[grow], better[grow]
            stop = g_rows[~g_better]
            to_shrink = stop[best_g[stop] >= g[stop]]
            phase[stop] = 0
            phase[to_shrink] = 2
            tries[to_shrink] = 0
            phase[g_rows[g_better & (tries[g_rows] >= _LINE_TRIES)]] = 0
            # shrink: stop at the first improvement or after the last try
            s_rows, s_better = rows[shrink], better[shrink]
            phase[s_rows[s_better | (tries[s_rows] >= _LINE_TRIES)]] = 0
        return best_theta, best_g, a
