"""Sign Flip Attack (SFA): decision-based l_inf attack by projection and random sign flips.

Chen, Zhang, Hu & Wu, "Boosting Decision-based Black-box Adversarial Attacks with Random Sign Flip", ECCV 2020
(reference code: github.com/cwllenny/Sign-Flip-Attack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.decision_search import (
    bcast,
    bisect_boundary,
    box_path,
    can_pay,
    query_adversarial,
    random_adversarial,
)

__all__ = ["SignFlip", "SignFlipConfig"]

# The original's bounds on the per-pixel probability of keeping a sign in the flip step.
_KEEP_MIN, _KEEP_MAX = 0.99, 0.9999


@dataclass(frozen=True, kw_only=True)
class SignFlipConfig(AttackConfig):
    """SignFlip settings (l_inf only); defaults are the original code's. eps, budget, seed, eot: see AttackConfig."""

    init_tries: int = 1000  # uniform-noise images drawn per sample (1 query each) to find an adversarial start
    init_search_steps: int = 10  # binary-search queries that pull the start towards the clean image
    alpha: float = 0.004  # initial l_inf shrink (and random step) of the projection step, adapted per sample
    flip_prob: float = 0.001  # initial per-pixel probability of a sign flip, adapted in [1e-4, 0.01]
    adapt_every: int = 10  # rounds between adaptations of alpha and the flip probabilities

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_tries < 1:
            raise ValueError(f"init_tries must be >= 1, got {self.init_tries}")
        if self.init_search_steps < 0:
            raise ValueError(f"init_search_steps must be >= 0, got {self.init_search_steps}")
        if not (self.alpha > 0):
            raise ValueError(f"alpha must be a positive l_inf step, got {self.alpha}")
        if not (1 - _KEEP_MAX <= self.flip_prob <= 1 - _KEEP_MIN):
            raise ValueError(f"flip_prob must lie in [{1 - _KEEP_MAX:g}, {1 - _KEEP_MIN:g}], got {self.flip_prob}")
        if self.adapt_every < 1:
            raise ValueError(f"adapt_every must be >= 1 round, got {self.adapt_every}")


class SignFlip(Attack):
    """Sign Flip Attack (l_inf, label-only).

    Starts from an adversarial uniform-noise image, pulled towards the clean image by an l_inf binary search.
    Each round then makes two queries per sample, keeping a change only when the answer stays adversarial:

    1. *project*: add a random +-alpha sign step and clip the perturbation into the l_inf ball of radius
       ``||delta||_inf - alpha`` (the distance shrinks by alpha when accepted);
    2. *flip*: flip the signs of a few random pixels of the perturbation (per-pixel probabilities learnt from
       accepted flips), which moves along the ball's surface to regions where the next shrink succeeds.

    Every ``adapt_every`` rounds alpha grows (x1.5) when more than 70% of a sample's projections were accepted and
    shrinks when fewer than 30% were; flip probabilities adapt likewise. A sample is claimed broken as soon as a
    point its own query called adversarial lies within eps (that point is offered for verification).

    Differences from the reference code, on purpose: the shrink radius is the l_inf distance of the image actually
    queried (after clipping to [0, 1]), not of the unclipped perturbation; initialisation queries are charged; no
    resizing of the perturbation (the original's ``resize_factor`` = 1). ``result.extras["radius"]`` is each
    sample's current l_inf distance (inf if no adversarial start was found), equal to that of a failed ``x_adv``.

    Example:
        >>> bb = LocalBlackBox(model, access="labels", budget=10000)
        >>> result = SignFlip(eps=0.05, budget=10000).run(bb, x, y)
    """

    name: ClassVar[str] = "signflip"
    access = "labels"
    norms: ClassVar[tuple[str, ...]] = ("linf",)
    config_class: ClassVar[type[AttackConfig]] = SignFlipConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, SignFlipConfig)
        x0 = state.x0
        n, dev = x0.shape[0], x0.device
        everyone = torch.arange(n, device=dev)
        radius = torch.full((n,), math.inf, device=dev)
        state.extras["radius"] = radius

        # -- initialisation: adversarial noise, then the l_inf binary search towards x0 --------------------------
        idx = everyone[can_pay(state, everyone)]
        # every draw comes from the sample's own stream (state.rng): its path does not depend on the other samples
        x_start, found = random_adversarial(state, idx, state.rng.rows(idx), cfg.init_tries)
        idx, x_start = idx[found], x_start[found]
        if idx.numel() == 0:
            return
        hi0 = (x_start - x0[idx]).flatten(1).abs().amax(1)
        path = box_path(x0[idx], x_start)
        # hi0 / 2^steps, with slack so that float rounding never adds a query
        tol = hi0 * (0.5**cfg.init_search_steps) * (1 + 1e-6)
        _, hi = bisect_boundary(state, idx, path, torch.zeros_like(hi0), hi0, tol)
        delta = torch.zeros_like(x0)  # the perturbation, unclipped (flips must keep magnitudes clipping hides)
        delta[idx] = path(hi, torch.arange(idx.numel(), device=dev)) - x0[idx]
        started = torch.zeros(n, dtype=torch.bool, device=dev)
        started[idx] = True
        self._accept(state, idx, delta[idx], delta, radius, torch.ones_like(hi, dtype=torch.bool))

        alpha = torch.full((n,), cfg.alpha, device=dev)
        keep_prob = torch.full_like(x0, 1 - cfg.flip_prob)
        proj_ok = torch.zeros(n, device=dev)
        flip_ok = torch.zeros(n, device=dev)
        rounds = torch.zeros(n, dtype=torch.int64, device=dev)

        while True:
            idx = everyone[started & can_pay(state, everyone)]
            if idx.numel() == 0:
                return
            # -- project: random sign step, then into a ball alpha smaller than the current distance --------------
            r_new = (radius[idx] - alpha[idx]).clamp_min(0.0)
            step = state.rng.rows(idx).signs(*x0[idx].shape)
            d = delta[idx] + step * bcast(alpha[idx], step)
            r = bcast(r_new, d)
            cand = torch.max(torch.min(d, r), -r)
            adv = query_adversarial(state, (x0[idx] + cand).clamp(0.0, 1.0), idx)
            proj_ok[idx] += adv.float()
            self._accept(state, idx[adv], cand[adv], delta, radius, adv[adv])

            # -- flip: random sign flips of the perturbation -----------------------------------------------------
            jdx = idx[can_pay(state, idx)]
            if jdx.numel() > 0:
                s = torch.where(state.rng.rows(jdx).rand(*x0[jdx].shape) < keep_prob[jdx], 1.0, -1.0)
                cand = delta[jdx] * s
                # With few pixels a draw often flips nothing; the original queries the unchanged image anyway (and
                # accepts it). We count such a draw as accepted without paying for the query.
                same = (s > 0).flatten(1).all(1)
                adv = torch.ones_like(same)
                adv[~same] = query_adversarial(state, (x0[jdx[~same]] + cand[~same]).clamp(0.0, 1.0), jdx[~same])
                flip_ok[jdx] += adv.float()
                hit = jdx[adv]
                # accepted flips become less likely to flip back; pixels left alone more likely to flip next time
                keep_prob[hit] = (keep_prob[hit] - s[adv] * 1e-4).clamp(_KEEP_MIN, _KEEP_MAX)
                self._accept(state, hit, cand[adv], delta, radius, adv[adv])

            # -- adaptation, per sample, every adapt_every of its rounds -------------------------------------------
            rounds[idx] += 1
            due = idx[rounds[idx] >= cfg.adapt_every]
            if due.numel() > 0:
                p_rate, f_rate = proj_ok[due] / rounds[due], flip_ok[due] / rounds[due]
                alpha[due] = torch.where(p_rate > 0.7, alpha[due] * 1.5,
                                         torch.where(p_rate < 0.3, alpha[due] / 1.5, alpha[due]))
                shift = torch.where(f_rate > 0.7, -1e-3, torch.where(f_rate < 0.3, 1e-3, 0.0))
                keep_prob[due] = (keep_prob[due] + bcast(shift, keep_prob[due])).clamp(_KEEP_MIN, _KEEP_MAX)
                rounds[due], proj_ok[due], flip_ok[due] = 0, 0.0, 0.0

    def _accept(self, state: AttackState, idx: torch.Tensor, new_delta: torch.Tensor, delta: torch.Tensor,
                radius: torch.Tensor, claimed: torch.Tensor) -> None:
        """Make ``new_delta`` (B, ...) the perturbation of samples idx, whose own query called it adversarial;
        claim those now within eps."""
        if idx.numel() == 0:
            return
        delta[idx] = new_delta
        x = (state.x0[idx] + new_delta).clamp(0.0, 1.0)
        dist = (x - state.x0[idx]).flatten(1).abs().amax(1)
        radius[idx] = dist
        state.keep(x, idx)
        state.report(x, idx, claimed & (dist <= self.config.eps))
