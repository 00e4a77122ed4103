"""SignHunter (Al-Dujaili & O'Reilly, ICLR 2020, "Sign bits are all you need for black-box attacks",
https://openreview.net/forum?id=SygW0TEFwH), l_inf and l_2.

It searches the sign vector s of the perturbation directly: starting from all +1, it flips contiguous chunks
of s (the whole vector, then halves, quarters, ... down to single coordinates) and keeps a flip when the
finite-difference probe ``x_o + delta * s`` (l_inf) or ``x_o + delta * s / sqrt(d)`` (l_2) lowers the margin.
The probe length delta equals eps, as in the paper, so every probe is a candidate on the ball's boundary.
When the finest level is done, the search restarts from the current best point (the reference code's
behaviour).

Differences from the reference implementation (BlackboxBench / the paper's code), none of which changes the
search: the loss at ``x_o`` is not queried (it cancels in every comparison, so the reference pays 1-3 queries
per image for nothing), and a flip that leaves the projected probe unchanged (all flipped coordinates
clipped) is not queried; it is kept, as a tie is in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.square import resampled_margin

__all__ = ["SignHunt", "SignHuntConfig", "chunk_bounds"]

_UNCHANGED_TOL = 1e-7


@dataclass(frozen=True, kw_only=True)
class SignHuntConfig(AttackConfig):
    """Settings of :class:`SignHunt` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`)."""

    # Finite-difference probe length delta in the attack's norm, pixel units; None = eps (the paper).
    probe: float | None = None
    # Extra margin evaluations (each ``eot`` queries) of a probe that looks at least as good as the incumbent,
    # before its flip is kept on the mean of all its evaluations; 0 = keep on the single evaluation (the paper).
    resample: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.probe is not None and not self.probe > 0:
            raise ValueError(f"probe must be positive, got {self.probe}")
        if isinstance(self.resample, bool) or not isinstance(self.resample, int) or self.resample < 0:
            raise ValueError(f"resample must be an integer >= 0 (extra evaluations), got {self.resample!r}")

    @property
    def probe_length(self) -> float:
        return self.eps if self.probe is None else self.probe


def chunk_bounds(dim: int, h: int, i: int) -> tuple[int, int]:
    """[start, end) of chunk ``i`` at level ``h``: ``dim`` coordinates cut in chunks of ``ceil(dim / 2^h)``."""
    size = math.ceil(dim / 2**h)
    return i * size, min(dim, (i + 1) * size)


class SignHunt(Attack):
    """SignHunter, score-based, l_inf or l_2, minimising the margin loss (paper eq. 3). Deterministic: the seed
    is not used (the search order is fixed), except through a randomized model.

    Each probe costs ``eot`` queries per active image; all active images flip the same chunk at the same step
    (the schedule does not depend on the image), each with its own sign vector, best margin and base point.

    ``resample = M > 0`` guards the greedy rule against a randomized model, where one lucky low evaluation would
    otherwise become a best margin that no later probe beats: a probe whose first margin is at least as good as
    the incumbent's estimate pays M more margin evaluations (``M * eot`` queries) and its flip is kept only if
    the mean of all its ``1 + M`` evaluations is still at least as good, the incumbent's estimate becoming that
    mean; the all-ones probe that starts each round (always taken) is estimated by the mean of ``1 + M``
    evaluations too. This is the explicit-averaging (resampling) remedy of noisy optimization (Jin & Branke,
    "Evolutionary optimization in uncertain environments - a survey", IEEE TEC 2005), not part of Al-Dujaili &
    O'Reilly; the same rule as :class:`~rfd.attacks.square.Square`'s ``resample``. Cost: ``eot`` per
    probe plus ``M * eot`` per probe that looks as good. An image whose remaining budget cannot pay the M extra
    evaluations does not keep the flip (it is not re-evaluated; its single evaluation can still be claimed). A
    probe is claimed (offered to the majority vote) when the mean of the evaluations it got is negative.
    ``resample = 0`` (default) is the paper's rule, bit for bit.

    Example:
        >>> res = SignHunt(norm="linf", eps=0.05, budget=1000).run(LocalBlackBox(model, budget=1000), x, y)
    """

    name = "signhunt"
    access = "scores"
    norms = ("linf", "l2")
    config_class = SignHuntConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, SignHuntConfig)
        n, dim = state.n, state.x0[0].numel()
        shape = state.x0.shape[1:]
        max_h = math.ceil(math.log2(dim)) if dim > 1 else 0
        scale = cfg.probe_length if cfg.norm == "linf" else cfg.probe_length / math.sqrt(dim)
        dev = state.x0.device

        def probe(xo: torch.Tensor, sign: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return state.project(xo + scale * sign.view(-1, *shape), idx)

        x_o = state.x0.clone()  # base point of the current round
        sign = torch.ones(n, dim, device=dev)
        x_cur = state.x0.clone()  # the point of the best sign found (what the attack would return)
        best = torch.full((n,), float("inf"), device=dev)
        h, i, fresh = 0, 0, True
        while True:
            idx = state.active_idx(cfg.eot)
            if idx.numel() == 0:
                break
            if fresh:  # a round starts with the all-ones sign vector
                cand = probe(x_o[idx], sign[idx], idx)
                m = state.margin(cand, idx)
                if cfg.resample:  # always taken; its estimate is the mean of 1 + resample evaluations
                    m, _ = resampled_margin(state, cand, idx, m, cfg.resample)
                x_cur[idx], best[idx] = cand, m
                state.report(cand, idx, m < 0)
                fresh = False
                continue
            start, end = chunk_bounds(dim, h, i)
            s = sign[idx]
            s[:, start:end] *= -1
            cand = probe(x_o[idx], s, idx)
            moved = (cand - x_cur[idx]).abs().flatten(1).amax(1) >= _UNCHANGED_TOL
            keep = ~moved  # an unchanged probe is kept without a query (a tie keeps the flip)
            q = torch.nonzero(moved).flatten()
            if q.numel():
                m = state.margin(cand[q], idx[q])
                better = m <= best[idx[q]]
                if cfg.resample and bool(better.any()):  # pay the re-evaluations of the probes that look as good
                    c = torch.nonzero(better).flatten()
                    qc = idx[q][c]
                    mean, done = resampled_margin(state, cand[q][c], qc, m[c], cfg.resample)
                    m[c] = mean  # each probe's estimate: the mean of the evaluations it got (claims use it too)
                    better[c] = done & (mean <= best[qc])
                keep[q] = better
                best[idx[q]] = torch.where(better, m, best[idx[q]])
                state.report(cand[q], idx[q], m < 0)
            sign[idx] = torch.where(keep[:, None], s, sign[idx])
            x_cur[idx] = torch.where(keep.view(-1, 1, 1, 1), cand, x_cur[idx])
            i += 1
            if i == 2**h or end == dim:
                h, i = h + 1, 0
                if h == max_h + 1:  # finest level done: restart the search around the current best point
                    x_o = x_cur.clone()
                    sign.fill_(1.0)
                    h, fresh = 0, True
        state.keep(x_cur, torch.arange(n, device=dev))
