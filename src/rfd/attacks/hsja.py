"""HopSkipJump: decision-based attack by boundary gradient estimation (l_2 and l_inf).

Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", IEEE S&P 2020,
https://arxiv.org/abs/1904.02144 (as in foolbox's ``HopSkipJump`` and ART's ``HopSkipJump``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.decision_search import (
    Path,
    ReportAt,
    affordable,
    bcast,
    bisect_boundary,
    box_path,
    can_pay,
    check_report_at,
    noise_start,
    norm_distance,
    probe_blocks,
    query_adversarial,
    radius_extra,
    ray_path,
    record_boundary,
)
from rfd.attacks.rng import RowDraws, draws_for

__all__ = ["HopSkipJump", "HopSkipJumpConfig"]

# Upper bound on probe images held at once in a gradient estimate (elements), to bound memory.
_PROBE_ELEMENTS = 2**22
# Probe elements per sample in one draw of its stream: the draws' granularity, fixed (not a function of the batch)
# so that a sample's probe directions do not depend on how many samples share an estimate.
_DRAW_ELEMENTS = 2**16


@dataclass(frozen=True, kw_only=True)
class HopSkipJumpConfig(AttackConfig):
    """HopSkipJump settings; defaults are the paper's / foolbox's. norm, eps, budget, seed, eot: see AttackConfig."""

    init_tries: int = 1000  # uniform-noise images drawn per sample (1 query each) to find an adversarial start
    gamma: float = 1.0  # binary-search threshold theta = gamma / d^1.5 (l_2) or gamma / d^2 (l_inf), d = C*H*W
    init_evals: int = 100  # Monte-Carlo probes of the first gradient estimate; step t uses init_evals * sqrt(t+1)
    max_evals: int = 10000  # cap on probes per gradient estimate
    max_halvings: int = 30  # geometric step-size search gives up (keeps the point) after this many halvings
    report_at: ReportAt = "eps"  # what the check gets once within eps (decision_search.ReportAt)
    probe_scale: float = 1.0  # multiplies the probes' distance delta (0.1 first, then gamma * dist / d); OARS tunes it

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("init_tries", "init_evals", "max_evals", "max_halvings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.gamma > 0):
            raise ValueError(f"gamma must be positive, got {self.gamma}")
        if not (self.probe_scale > 0):
            raise ValueError(f"probe_scale must be positive, got {self.probe_scale}")
        check_report_at(self.report_at)


class HopSkipJump(Attack):
    """HopSkipJump (l_2 or l_inf, label-only).

    Starts from an adversarial uniform-noise image and binary-searches to the boundary (along the segment to the
    clean image for l_2, by shrinking an l_inf box for l_inf). Each iteration t then

    1. estimates the boundary's normal at the current boundary point from the signs of ``init_evals * sqrt(t+1)``
       random probes at distance ``delta`` (a baseline-corrected Monte-Carlo average),
    2. steps along it (its sign for l_inf) by ``dist / sqrt(t+1)``, halving until the answer is adversarial,
    3. binary-searches back to the boundary towards the clean image.

    A sample is claimed broken once its boundary distance is <= eps (verification gets the eps-sphere point of the
    same ray, or the boundary point with ``report_at="boundary"``). Every label, probes and searches included, is
    one charged query; probes are capped so that no sample goes past its budget. ``result.extras["radius"]`` is
    each sample's smallest boundary distance in the attack's norm (inf if no start was found), equal to the
    distance of a failed sample's ``x_adv``.

    Example:
        >>> bb = LocalBlackBox(model, access="labels", budget=10000)
        >>> result = HopSkipJump(norm="l2", eps=1.0, budget=10000).run(bb, x, y)
    """

    name: ClassVar[str] = "hsja"
    access = "labels"
    norms: ClassVar[tuple[str, ...]] = ("l2", "linf")
    config_class: ClassVar[type[AttackConfig]] = HopSkipJumpConfig
    oars_scale = ("probe_scale", 1.0, 100.0)
    oars_retries = 20

    def _oars_trials(self, state: AttackState, idx: torch.Tensor, scale: float, trials: int) -> torch.Tensor:
        """HopSkipJump's first probes at ``probe_scale = scale``: ``clip(x0 + 0.1 scale u)`` with u a unit l_2
        direction (Gaussian for l_2, uniform cube for l_inf), around the clean images."""
        x0 = state.x0[idx]
        shape = x0.shape[1:]
        rows = state.rng.rows(idx)
        u = rows.randn(idx.numel(), trials, *shape) if self.config.norm == "l2" \
            else rows.rand(idx.numel(), trials, *shape) * 2 - 1
        u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(idx.numel(), trials, *([1] * len(shape)))
        return (x0.unsqueeze(1) + 0.1 * scale * u).clamp(0.0, 1.0).flatten(0, 1)

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, HopSkipJumpConfig)
        x0 = state.x0
        n, dev, d = x0.shape[0], x0.device, x0[0].numel()
        theta = cfg.gamma / (d * math.sqrt(d)) if cfg.norm == "l2" else cfg.gamma / (d * d)
        everyone = torch.arange(n, device=dev)
        best = radius_extra(state)  # smallest distance reached, per sample

        idx, x_start = noise_start(state, cfg.init_tries)
        if idx.numel() == 0:
            return
        x_b = torch.zeros_like(x0)  # current boundary point (adversarial side), per sample
        x_b[idx] = self._to_boundary(state, idx, x_start, theta)
        dist = torch.full((n,), math.inf, device=dev)
        started = torch.zeros(n, dtype=torch.bool, device=dev)
        started[idx] = True
        self._arrived(state, idx, x_b[idx], dist, best)

        steps = torch.zeros(n, dtype=torch.int64, device=dev)  # iterations done, per sample
        while True:
            idx = everyone[started & can_pay(state, everyone)]
            if idx.numel() == 0:
                return
            t = steps[idx].double()
            delta = torch.where(t == 0, torch.full_like(dist[idx], 0.1), cfg.gamma * dist[idx] / d)
            if cfg.probe_scale != 1.0:
                delta = delta * cfg.probe_scale
            evals = torch.minimum((cfg.init_evals * torch.sqrt(t + 1)).floor().clamp(max=cfg.max_evals).long(),
                                  state.remaining(idx) // cfg.eot)
            grad = self._estimate_normal(state, idx, x_b[idx], delta, evals, state.rng.rows(idx))
            update = grad if cfg.norm == "l2" else grad.sign()

            # geometric step-size search: halve until the step lands on the adversarial side
            size = dist[idx] / torch.sqrt(t + 1).float()
            moved = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
            for _ in range(cfg.max_halvings):
                rows = torch.nonzero(~moved & can_pay(state, idx)).flatten()
                if rows.numel() == 0:
                    break
                cand = (x_b[idx[rows]] + bcast(size[rows], update[rows]) * update[rows]).clamp(0.0, 1.0)
                adv = query_adversarial(state, cand, idx[rows])
                moved[rows[adv]] = True
                size[rows[~adv]] /= 2
            rows = torch.nonzero(moved).flatten()
            if rows.numel() > 0:
                i = idx[rows]
                stepped = (x_b[i] + bcast(size[rows], update[rows]) * update[rows]).clamp(0.0, 1.0)
                x_b[i] = self._to_boundary(state, i, stepped, theta)
                self._arrived(state, i, x_b[i], dist, best)
            steps[idx] += 1

    def _to_boundary(self, state: AttackState, idx: torch.Tensor, x: torch.Tensor, theta: float) -> torch.Tensor:
        """Binary search from adversarial points x (B, ...) towards x0[idx]; returns the adversarial-side ends."""
        x0 = state.x0[idx]
        path: Path
        if self.config.norm == "l2":
            # blend x0 + s (x - x0), s in [0, 1]; the threshold is on s, as in the paper
            path, hi, tol = ray_path(x0, x - x0), torch.ones(idx.numel(), device=x.device), theta
            _, hi = bisect_boundary(state, idx, path, torch.zeros_like(hi), hi, tol)
        else:
            path = box_path(x0, x)
            hi = norm_distance(x, x0, "linf")
            _, hi = bisect_boundary(state, idx, path, torch.zeros_like(hi), hi, hi * theta)
        return path(hi, torch.arange(idx.numel(), device=x.device))

    def _arrived(self, state: AttackState, idx: torch.Tensor, x_b: torch.Tensor, dist: torch.Tensor,
                 best: torch.Tensor) -> None:
        """Record new boundary points x_b (B, ...) of samples idx (each one a black-box-adversarial point), their
        distances in ``dist``, and claim the samples whose distance is now <= eps."""
        cfg = self.config
        assert isinstance(cfg, HopSkipJumpConfig)
        dist[idx] = record_boundary(state, idx, x_b, best, report_at=cfg.report_at)

    def _estimate_normal(self, state: AttackState, idx: torch.Tensor, x_b: torch.Tensor, delta: torch.Tensor,
                         evals: torch.Tensor, draws: RowDraws) -> torch.Tensor:
        """Unit l_2 estimate (B, C, H, W) of the boundary normal at x_b pointing to the adversarial side.

        Sample i uses ``evals[i]`` probes ``x_b + delta_i u`` with u uniform on the sphere (l_2: Gaussian
        direction; l_inf: uniform cube direction, as the paper), clipped to [0, 1]; each probe's answer (+1
        adversarial, -1 not) weights its realised direction, minus the mean answer as a baseline unless all answers
        agree.

        The directions come from ``draws``, the per-sample streams of the rows idx, in draws of a fixed number of
        probes per sample (a function of the image size only) and only while the sample has probes left: sample
        i's probes depend on nothing but its own stream and ``evals[i]``, whichever samples share the estimate.
        Probes are drawn and queried in blocks of samples so memory stays bounded."""
        b, shape = idx.numel(), x_b.shape[1:]
        d = x_b[0].numel()
        ones = (1,) * len(shape)
        k = max(1, _DRAW_ELEMENTS // d)  # probes per sample and draw
        block = max(1, _PROBE_ELEMENTS // (k * d))  # samples drawn and probed at once
        s_weighted = torch.zeros_like(x_b)  # sum_j answer_j * u_j
        s_plain = torch.zeros_like(x_b)  # sum_j u_j
        s_answer = torch.zeros(b, device=x_b.device)
        n_answered = torch.zeros(b, device=x_b.device)  # probes in the estimate (all of them unless refused)
        for rows, vr, vc in probe_blocks(evals, k, block):
            r = rows.numel()
            rd = draws.subset(rows)
            if self.config.norm == "l2":
                u = rd.randn(r, k, *shape)
            else:
                u = rd.rand(r, k, *shape) * 2 - 1
            u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(r, k, *ones)
            dl = delta[rows].float().view(r, 1, *ones)
            xb = x_b[rows].unsqueeze(1)
            probes = (xb + dl * u).clamp(0.0, 1.0)
            u = (probes - xb) / dl  # the direction actually probed, after clipping
            if state.retries:  # redraws of earlier blocks spent budget that ``evals`` counted on
                keep = affordable(state, idx[rows[vr]])
                vr, vc = vr[keep], vc[keep]
            at = rows[vr]
            uq = u[vr, vc]
            answer = query_adversarial(state, probes[vr, vc], idx[at]).float() * 2 - 1
            weight = torch.ones_like(answer)
            if state.retries:  # OARS: refused probes are drawn again, and left out of the estimate if still refused
                uq, answer, weight = self._redraw_refused(state, idx[at], x_b[at], delta[at], uq, answer)
            s_answer.index_add_(0, at, answer * weight)
            s_weighted.index_add_(0, at, bcast(answer * weight, uq) * uq)
            s_plain.index_add_(0, at, bcast(weight, uq) * uq)
            n_answered.index_add_(0, at, weight)
        m = (n_answered if state.retries else evals.float()).clamp_min(1).float()
        mean = s_answer / m
        baseline = torch.where(mean.abs() == 1, torch.zeros_like(mean), mean)
        grad = (s_weighted - bcast(baseline, s_plain) * s_plain) / bcast(m, s_plain)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad / bcast(norm, grad)

    def _redraw_refused(self, state: AttackState, samples: torch.Tensor, x_b: torch.Tensor, delta: torch.Tensor,
                        u: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """OARS's rejection sampling for HopSkipJump (Feng et al., CCS 2023): probes (P rows, of ``samples``
        (P,), at boundary points x_b (P, ...) with scales delta (P,)) that the deployment refused get a fresh
        direction and are queried again, up to ``state.retries`` times while their sample can pay. Returns the
        directions, answers and weights (P,): 1 for answered probes, 0 for those still refused."""
        ok = ~state.rejected if state.rejected.shape == answer.shape else torch.ones_like(answer, dtype=torch.bool)
        shape = tuple(u.shape[1:])
        ones = (1,) * len(shape)
        for _ in range(state.retries):
            redo = torch.nonzero(~ok).flatten()
            redo = redo[affordable(state, samples[redo])]
            if redo.numel() == 0:
                break
            s = samples[redo]
            if self.config.norm == "l2":
                v = draws_for(state.rng, s, shape)
            else:
                v = draws_for(state.rng, s, shape, kind="rand") * 2 - 1
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *ones)
            dl = delta[redo].float().view(-1, *ones)
            probes = (x_b[redo] + dl * v).clamp(0.0, 1.0)
            v = (probes - x_b[redo]) / dl
            a = query_adversarial(state, probes, s).float() * 2 - 1
            u, answer, ok = u.clone(), answer.clone(), ok.clone()
            u[redo], answer[redo], ok[redo] = v, a, ~state.rejected
        return u, answer, ok.float()
