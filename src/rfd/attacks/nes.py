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

__all__ = ["NESAttack", "NESConfig", "nes_gradient", "nes_step"]

# Upper bound on the elements of one probe batch (bounds memory for large images; same numbers either way).
_MAX_PROBE_ELEMENTS = 2**25


@dataclass(frozen=True, kw_only=True)
class NESConfig(AttackConfig):
    """Settings of :class:`NESAttack` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`).

    Fields left None take the paper's value for the norm."""

    samples: int | None = None  # probes (= queries) per gradient estimate, even: 60 (l_inf) / 30 (l_2)
    fd_step: float | None = None  # std of the Gaussian probes, pixel units: 0.01 (l_inf) / 0.005 (l_2)
    lr: float | None = None  # step length: per pixel for l_inf (0.005), l_2 norm of the step for l_2 (1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples is not None and (self.samples < 2 or self.samples % 2):
            raise ValueError(f"samples must be an even number >= 2 (antithetic pairs), got {self.samples}")
        if self.fd_step is not None and not self.fd_step > 0:
            raise ValueError(f"fd_step must be positive, got {self.fd_step}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

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
    def iteration_cost(self) -> int:
        """Queries per iteration and image: the probes plus one evaluation of the new iterate, times eot."""
        return (self.n_samples + 1) * self.eot


def nes_gradient(u: torch.Tensor, loss_plus: torch.Tensor, loss_minus: torch.Tensor, sigma: float) -> torch.Tensor:
    """Antithetic NES estimate of the loss gradient.

    Args:
        u: Gaussian directions (P, B, C, H, W) for P pairs of B images.
        loss_plus, loss_minus: losses (P, B) at ``x + sigma u`` and ``x - sigma u``.
    Returns:
        (B, C, H, W): ``sum_j u_j (L+ - L-) / (2 sigma P)``."""
    w = (loss_plus - loss_minus) / (2 * sigma * u.shape[0])
    return (w.view(*w.shape, *([1] * (u.dim() - 2))) * u).sum(0)


def nes_step(x: torch.Tensor, grad: torch.Tensor, norm: str, lr: float) -> torch.Tensor:
    """A descent step on the loss: ``x - lr sign(g)`` (l_inf) or ``x - lr g / ||g||_2`` (l_2); not projected."""
    if norm == "linf":
        return x - lr * grad.sign()
    return x - lr * l2_normalize(grad)


class NESAttack(Attack):
    """NES, score-based, l_inf or l_2, minimising the margin loss (paper eq. 3).

    One iteration per active image: ``samples`` probes ``clip(x +- fd_step u)`` (antithetic pairs, u ~ N(0, I)),
    the gradient estimate, a step of ``lr``, projection onto the eps-ball and [0, 1], then one query of the new
    iterate to see whether it is adversarial. It costs ``(samples + 1) * eot`` queries; an image with fewer left
    stops (the leftover is not spent). The start point is the clean image.

    Example:
        >>> res = NESAttack(norm="linf", eps=0.05, budget=10000).run(LocalBlackBox(model, budget=10000), x, y)
    """

    name = "nes"
    access = "scores"
    norms = ("linf", "l2")
    config_class = NESConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, NESConfig)
        pairs, sigma = cfg.n_samples // 2, cfg.sigma
        x = state.x0.clone()
        while True:
            idx = state.active_idx(cfg.iteration_cost)
            if idx.numel() == 0:
                break
            xi = x[idx]
            b = xi.shape[0]
            u = torch.randn((pairs, *xi.shape), device=xi.device, generator=gen)
            chunk = max(1, _MAX_PROBE_ELEMENTS // (2 * xi.numel()))
            plus, minus = [], []
            for j in range(0, pairs, chunk):  # one batched query per chunk of pairs (usually a single chunk)
                uj = u[j: j + chunk]
                k = uj.shape[0]
                probes = torch.cat([(xi + sigma * uj).clamp(0.0, 1.0), (xi - sigma * uj).clamp(0.0, 1.0)])
                m = state.margin(probes.flatten(0, 1), idx.repeat(2 * k)).view(2 * k, b)
                plus.append(m[:k])
                minus.append(m[k:])
            g = nes_gradient(u, torch.cat(plus), torch.cat(minus), sigma)
            x_new = state.project(nes_step(xi, g, cfg.norm, cfg.step), idx)
            m = state.margin(x_new, idx)
            x[idx] = x_new
            state.report(x_new, idx, m < 0)
        state.keep(x, torch.arange(state.n, device=x.device))
