"""NES attack (Ilyas et al., ICML 2018, https://arxiv.org/abs/1804.08598), l_inf and l_2.

Gradient estimation with natural evolution strategies: antithetic Gaussian probes around the current iterate
give a finite-difference estimate of the margin's gradient, then a projected step follows it (PGD-style sign
step for l_inf, normalised step for l_2), as in the BlackboxBench implementation that the paper's code builds on.

Defaults follow the paper's appendix D.3: 60 / 30 probes per estimate (l_inf / l_2), finite-difference step
0.01 / 0.005, learning rate 0.005 / 1. The authors' released configs differ (nes_linf.yaml: 15 antithetic pairs
with probe and step 2.55, apparently on a 0-255 pixel scale; nes_l2.yaml: 50 pairs, probe and step 0.01), and it
is the appendix that states the settings behind the paper's tables, so rfd's paper preset uses those. The probe
count is the number of queries per estimate (30 / 15 antithetic pairs), as Ilyas et al.'s ``samples_per_draw``.
Unlike BlackboxBench, which checks success on every iterate for free, rfd pays one query (``eot`` forwards) to
evaluate each new iterate: an attacker must query a point to learn that it is adversarial.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.projections import l2_normalize
from rfd.attacks.rng import RowDraws, draws_for

__all__ = ["NES", "NESConfig", "antithetic_probes", "nes_directions", "nes_gradient", "nes_step", "plateau_update"]

# Upper bound on the elements of one probe batch (bounds memory for large images; same numbers either way).
_MAX_PROBE_ELEMENTS = 2**25


@dataclass(frozen=True, kw_only=True)
class NESConfig(AttackConfig):
    """Settings of :class:`NES` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`).

    Fields left None take the paper's value for the norm."""

    samples: int | None = None  # probes (= queries) per gradient estimate, even: 60 (l_inf) / 30 (l_2)
    fd_step: float | None = None  # std of the Gaussian probes, pixel units: 0.01 (l_inf) / 0.005 (l_2)
    lr: float | None = None  # step length: per pixel for l_inf (0.005), l_2 norm of the step for l_2 (1.0)
    # Adaptive options of Ilyas et al.'s code (all off by default; none costs a query):
    momentum: float = 0.0  # in [0, 1): g <- momentum g_prev + (1 - momentum) g_est; their code: 0.9
    plateau_length: int = 0  # losses kept per image for plateau lr decay; 0 = off (constant lr); their code: 5
    plateau_drop: float = 2.0  # > 1: an image's lr is divided by this on a plateau (their code: 2)
    min_lr: float | None = None  # floor of the decayed lr, in (0, lr]; None = lr / 200 (their 1e-2 / 5e-5)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples is not None and (self.samples < 2 or self.samples % 2):
            raise ValueError(f"samples must be an even number >= 2 (antithetic pairs), got {self.samples}")
        if self.fd_step is not None and not self.fd_step > 0:
            raise ValueError(f"fd_step must be positive, got {self.fd_step}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if (isinstance(self.plateau_length, bool) or not isinstance(self.plateau_length, int)
                or self.plateau_length < 0 or self.plateau_length == 1):
            raise ValueError(f"plateau_length must be 0 (off) or an integer >= 2 (losses compared), got "
                             f"{self.plateau_length!r}")
        if not self.plateau_drop > 1.0:
            raise ValueError(f"plateau_drop must be > 1 (the lr is divided by it), got {self.plateau_drop}")
        if self.min_lr is not None and not 0.0 < self.min_lr <= self.step:
            raise ValueError(f"min_lr must be in (0, lr] = (0, {self.step}], got {self.min_lr}")

    @property
    def n_samples(self) -> int:
        return self.samples if self.samples is not None else (60 if self.norm == "linf" else 30)

    @property
    def sigma(self) -> float:
        return self.fd_step if self.fd_step is not None else (0.01 if self.norm == "linf" else 0.005)

    @property
    def step(self) -> float:
        return self.lr if self.lr is not None else (0.005 if self.norm == "linf" else 1.0)

    @property
    def lr_floor(self) -> float:
        """min_lr, or lr / 200 (the ratio of Ilyas et al.'s defaults, max_lr 1e-2 and min_lr 5e-5)."""
        return self.min_lr if self.min_lr is not None else self.step / 200

    @property
    def iteration_cost(self) -> int:
        """Queries per iteration and image: the probes plus one evaluation of the new iterate, times eot."""
        return (self.n_samples + 1) * self.eot


def nes_gradient(u: torch.Tensor, loss_plus: torch.Tensor, loss_minus: torch.Tensor, sigma: float) -> torch.Tensor:
    """Antithetic NES estimate of the loss gradient.

    Args:
        u: Gaussian directions (P, B, C, H, W) for P pairs of B images.
        loss_plus, loss_minus: losses (P, B) at ``x + sigma u`` and ``x - sigma u``.
    Returns:
        (B, C, H, W): ``sum_j u_j (L+ - L-) / (2 sigma P)``. Pairs with a NaN loss (a probe a stateful
        detector refused) are left out, and P counts the answered pairs of each image."""
    if bool(torch.isfinite(loss_plus).all()) and bool(torch.isfinite(loss_minus).all()):
        w = (loss_plus - loss_minus) / (2 * sigma * u.shape[0])
    else:  # refused probes (a stateful detector): the estimate averages the answered pairs only
        ok = torch.isfinite(loss_plus) & torch.isfinite(loss_minus)
        n_ok = ok.sum(0).clamp_min(1).to(loss_plus.dtype)
        w = torch.where(ok, (loss_plus - loss_minus).nan_to_num(0.0), torch.zeros_like(loss_plus)) / (2 * sigma * n_ok)
    return (w.view(*w.shape, *([1] * (u.dim() - 2))) * u).sum(0)


def nes_directions(rows: RowDraws, pairs: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Gaussian probe directions (P, B, *shape) for the B images of ``rows``: ``pairs`` = P directions per image,
    all from the image's own stream (one draw per row), so an image's probes do not depend on the other images."""
    b = rows.idx.shape[0]
    return rows.randn(b, pairs, *shape).transpose(0, 1)


def antithetic_probes(x: torch.Tensor, u: torch.Tensor, sigma: float) -> torch.Tensor:
    """Probes (2P, B, ...) = ``[clip(x + sigma u); clip(x - sigma u)]`` for directions u (P, B, ...) around x
    (B, ...), written into one buffer: the same values as building both halves and concatenating them, with
    three passes over the probes' memory fewer (NES probes tens of MB per step)."""
    k = u.shape[0]
    out = torch.empty(2 * k, *u.shape[1:], dtype=torch.result_type(x, u), device=x.device)
    d = u * sigma
    torch.add(x, d, out=out[:k])
    torch.sub(x, d, out=out[k:])
    return out.clamp_(0.0, 1.0)


def nes_step(x: torch.Tensor, grad: torch.Tensor, norm: str, lr: float | torch.Tensor) -> torch.Tensor:
    """A descent step on the loss: ``x - lr sign(g)`` (l_inf) or ``x - lr g / ||g||_2`` (l_2); not projected.

    ``lr`` is one float, or a tensor (B,) with one learning rate per image."""
    if isinstance(lr, torch.Tensor):
        lr = lr.view(-1, *([1] * (x.dim() - 1)))
    if norm == "linf":
        return x - lr * grad.sign()
    return x - lr * l2_normalize(grad)


def plateau_update(lr: torch.Tensor, history: torch.Tensor, count: torch.Tensor, loss: torch.Tensor, *,
                   drop: float, min_lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of Ilyas et al.'s plateau learning-rate decay, per image (their ``last_ls`` / ``max_lr`` logic).

    The newest loss is appended to each image's window of the last L losses. When the window is full and its
    newest loss is above its oldest, the image's lr is divided by ``drop`` (not below ``min_lr``; an lr already
    at the floor stays) and the window is emptied, so the next decay needs L fresh losses.

    Args:
        lr: float (B,) learning rates; history: (B, L) windows (the last ``count`` columns are valid, oldest
            first); count: int64 (B,) valid entries; loss: (B,) newest losses.
    Returns:
        new (lr, history, count); the inputs are not modified."""
    length = history.shape[1]
    history = torch.cat([history[:, 1:], loss[:, None].to(history.dtype)], 1)
    count = (count + 1).clamp_max(length)
    plateau = (count == length) & (history[:, -1] > history[:, 0])
    decayed = torch.where(lr > min_lr, (lr / drop).clamp_min(min_lr), lr)
    lr = torch.where(plateau, decayed, lr)
    count = torch.where(plateau, torch.zeros_like(count), count)
    return lr, history, count


class NES(Attack):
    """NES, score-based, l_inf or l_2, minimising the margin loss (paper eq. 3).

    One iteration per active image: ``samples`` probes ``clip(x +- fd_step u)`` (antithetic pairs, u ~ N(0, I)),
    the gradient estimate, a step of ``lr``, projection onto the eps-ball and [0, 1], then one query of the new
    iterate to see whether it is adversarial. It costs ``(samples + 1) * eot`` queries; an image with fewer left
    stops (the leftover is not spent). The start point is the clean image. The probes of an image come from its
    own random stream (``state.rng``), so its trajectory does not depend on the other images of the batch.

    Two options of Ilyas et al.'s released code (labsix/limited-blackbox-attacks, ``attacks.py``), both off by
    default and both free (no query beyond the probes and the iterate's evaluation):

    * ``momentum`` beta: the step follows ``g = beta g_prev + (1 - beta) g_est`` per image (``g_prev`` starts
      at 0), averaging the noisy estimates over iterations (their default 0.9).
    * plateau decay (``plateau_length`` L > 0): each image keeps its last L losses, the loss of an iteration
      being the mean margin of its ``samples`` probes (their ``l``: already paid for); when the newest is above
      the oldest its lr is divided by ``plateau_drop`` (not below ``min_lr``) and the window restarts (see
      :func:`plateau_update`); their defaults L = 5, drop 2, min_lr = max_lr / 200. The decay happens before the
      iteration's step, as in their code. Their lr line search (extra queries per step) is not included.

    Example:
        >>> res = NES(norm="linf", eps=0.05, budget=10000).run(LocalBlackBox(model, budget=10000), x, y)
    """

    name = "nes"
    access = "scores"
    norms = ("linf", "l2")
    config_class = NESConfig
    oars_scale = ("fd_step", 0.01, 0.5)

    def _oars_trials(self, state: AttackState, idx: torch.Tensor, scale: float, trials: int) -> torch.Tensor:
        """NES probes of the clean images at sampling step ``scale``: ``clip(x0 + scale u)``, u ~ N(0, I)."""
        x0 = state.x0[idx]
        u = state.rng.rows(idx).randn(idx.numel(), trials, *x0.shape[1:])
        return (x0.unsqueeze(1) + scale * u).clamp(0.0, 1.0).flatten(0, 1)

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, NESConfig)
        pairs, sigma = cfg.n_samples // 2, cfg.sigma
        x = state.x0.clone()
        beta, plateau = cfg.momentum, cfg.plateau_length
        g_prev = torch.zeros_like(x) if beta else None
        if plateau:  # per-image learning rates and loss windows
            lrs = torch.full((state.n,), cfg.step, device=x.device)
            hist = torch.zeros(state.n, plateau, device=x.device)
            count = torch.zeros(state.n, dtype=torch.int64, device=x.device)
        while True:
            idx = state.active_idx(cfg.iteration_cost)
            if idx.numel() == 0:
                break
            xi = x[idx]
            b = xi.shape[0]
            u = nes_directions(state.rng.rows(idx), pairs, xi.shape[1:])
            chunk = max(1, _MAX_PROBE_ELEMENTS // (2 * xi.numel()))
            plus, minus = [], []
            for j in range(0, pairs, chunk):  # one batched query per chunk of pairs (usually a single chunk)
                uj = u[j: j + chunk]
                k = uj.shape[0]
                probes = antithetic_probes(xi, uj, sigma)
                m = state.margin(probes.flatten(0, 1), idx.repeat(2 * k)).view(2 * k, b)
                plus.append(m[:k])
                minus.append(m[k:])
            lp, lm = torch.cat(plus), torch.cat(minus)
            if state.retries:  # OARS rejection sampling: redraw the refused pairs' directions
                u, lp, lm = _redraw_refused(state, xi, idx, u, lp, lm, sigma, cfg.eot)
            g = nes_gradient(u, lp, lm, sigma)
            if g_prev is not None:
                g = beta * g_prev[idx] + (1.0 - beta) * g
                g_prev[idx] = g
            lr: float | torch.Tensor = cfg.step
            if plateau:
                loss = (lp.nansum(0) + lm.nansum(0)) / (2 * pairs)  # the probes' mean margin: no extra query
                lrs[idx], hist[idx], count[idx] = plateau_update(lrs[idx], hist[idx], count[idx], loss,
                                                                 drop=cfg.plateau_drop, min_lr=cfg.lr_floor)
                lr = lrs[idx]
            x_new = state.project(nes_step(xi, g, cfg.norm, lr), idx)
            m = state.margin(x_new, idx)
            x[idx] = x_new
            state.report(x_new, idx, m < 0)
        state.keep(x, torch.arange(state.n, device=x.device))


def _redraw_refused(state: AttackState, xi: torch.Tensor, idx: torch.Tensor, u: torch.Tensor, lp: torch.Tensor,
                    lm: torch.Tensor, sigma: float, eot: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OARS's rejection sampling for NES (Feng et al., CCS 2023): a pair (P, B) with a refused probe (NaN loss)
    gets a fresh direction from its image's stream and is queried again, up to ``state.retries`` times. An image
    redraws only while it can still pay the redrawn pairs and the evaluation of its next iterate, so the budget
    is never exceeded; pairs still refused stay out of the estimate (:func:`nes_gradient`)."""
    for _ in range(state.retries):
        bad = ~(torch.isfinite(lp) & torch.isfinite(lm))  # (P, B)
        need = (2 * bad.sum(0) + 1) * eot  # the redrawn pairs, plus the iterate's evaluation still to come
        can = state.remaining(idx) >= need
        bad &= can.unsqueeze(0)
        if not bool(bad.any()):
            break
        p_i, b_i = torch.nonzero(bad, as_tuple=True)
        new_u = draws_for(state.rng, idx[b_i], tuple(xi.shape[1:]))
        base = xi[b_i]
        probes = antithetic_probes(base, new_u.unsqueeze(0), sigma).flatten(0, 1)
        m = state.margin(probes, idx[b_i].repeat(2))
        u = u.clone()
        u[p_i, b_i] = new_u
        lp, lm = lp.clone(), lm.clone()
        lp[p_i, b_i], lm[p_i, b_i] = m[: b_i.numel()], m[b_i.numel():]
    return u, lp, lm
