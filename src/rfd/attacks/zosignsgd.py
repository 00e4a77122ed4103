"""ZO-signSGD (Liu, Chen, Chen & Hong, "signSGD via Zeroth-Order Oracle", ICLR 2019,
https://openreview.net/forum?id=BJe-DsC5Fm), l_inf and l_2.

Zeroth-order sign SGD: per iteration and image, q random directions give a forward-difference estimate of the
loss gradient, ``g = sum_j (J(x + fd_eta u_j) - J(x)) / fd_eta * u_j`` with ``u_j ~ N(0, I)``, and the image takes
a step along ``sign(g)``, then is projected onto the eps-ball and [0, 1]. Written after BlackboxBench's
``ZOSignSGDAttack`` (Gaussian directions with per-pixel std ``fd_eta``, forward differences against the loss at the
current point), whose CIFAR-10 l_inf config gives the defaults: q = 30, fd_eta = lr = 0.01 (2.55 on their 0-255
scale).

**l_2 variant.** BlackboxBench takes the same sign step for l_2 and lets the projection rescale it. rfd's l_2
variant takes a normalized step instead, ``x + lr g / ||g||_2`` (the l_2 steepest-ascent direction for the
estimate; a sign step would fix the step's direction to a corner of the cube whatever the ball), with ``lr`` the
l_2 length of the step: default 0.5, about the l_2 length of BlackboxBench's sign step on CIFAR-10 (0.01 *
sqrt(3072) = 0.55) and a half of the Fashion-MNIST l_2 preset radius.

**Queries.** The loss at the current point is needed for the forward differences. The clean image is queried
once at the start (``eot`` queries); each iteration then queries the q probes and the new iterate, whose answer
is both the next iteration's base loss and the test whether the iterate looks adversarial (its margin is
negative: it is offered to the success check). An iteration costs ``(q + 1) * eot`` queries, the same count as
BlackboxBench's, but rfd pays for the check of each iterate that BlackboxBench does for free. The probes are
clipped to [0, 1] and are not offered as candidates (as in :class:`~rfd.attacks.nes.NES`). The loss is rfd's
margin by default (``J = -margin`` ascended); ``loss="ce"`` is BlackboxBench's cross-entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.projections import l2_normalize
from rfd.blackbox.losses import LOSSES

__all__ = ["ZOSignSGD", "ZOSignSGDConfig", "zo_gradient", "zo_step"]

# Upper bound on the elements of one probe batch (bounds memory for large images; same numbers either way).
_MAX_PROBE_ELEMENTS = 2**25


@dataclass(frozen=True, kw_only=True)
class ZOSignSGDConfig(AttackConfig):
    """Settings of :class:`ZOSignSGD` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`)."""

    q: int = 30  # random directions (= probe queries) per gradient estimate (BlackboxBench: 30)
    fd_eta: float = 0.01  # forward-difference step: per-pixel std of the Gaussian probes, pixel units
    lr: float | None = None  # step: per pixel (sign step) for l_inf (0.01), l_2 length (normalized step) for l_2 (0.5)
    loss: str = "margin"  # "margin" (paper eq. 3, rfd's score attacks) or "ce" (cross-entropy, BlackboxBench)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.q, bool) or not isinstance(self.q, int) or self.q < 1:
            raise ValueError(f"q must be an integer >= 1 (directions per estimate), got {self.q!r}")
        if (isinstance(self.fd_eta, bool) or not isinstance(self.fd_eta, (int, float))
                or not math.isfinite(self.fd_eta) or self.fd_eta <= 0):
            raise ValueError(f"fd_eta must be a positive finite number, got {self.fd_eta!r}")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or not math.isfinite(self.lr) or self.lr <= 0):
            raise ValueError(f"lr must be a positive finite number or None (the norm's default), got {self.lr!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def step(self) -> float:
        """lr, or the default for the norm: 0.01 per pixel (l_inf), l_2 length 0.5 (l_2)."""
        if self.lr is not None:
            return float(self.lr)
        return 0.01 if self.norm == "linf" else 0.5

    @property
    def iteration_cost(self) -> int:
        """Queries per iteration and image: q probes plus the new iterate, times eot."""
        return (self.q + 1) * self.eot


def zo_gradient(u: torch.Tensor, j_probes: torch.Tensor, j_base: torch.Tensor, fd_eta: float) -> torch.Tensor:
    """Forward-difference estimate of the objective's gradient.

    Args:
        u: directions (Q, B, C, H, W) for Q directions of B images.
        j_probes: objectives (Q, B) at ``x + fd_eta u``; j_base: objectives (B,) at x.
    Returns:
        (B, C, H, W): ``sum_j u_j (J_j - J) / fd_eta`` (its scale does not matter for the steps below)."""
    w = (j_probes - j_base[None]) / fd_eta
    return (w.view(*w.shape, *([1] * (u.dim() - 2))) * u).sum(0)


def zo_step(x: torch.Tensor, grad: torch.Tensor, norm: str, lr: float) -> torch.Tensor:
    """An ascent step: ``x + lr sign(g)`` (l_inf) or ``x + lr g / ||g||_2`` (l_2); not projected."""
    if norm == "linf":
        return x + lr * grad.sign()
    return x + lr * l2_normalize(grad)


class ZOSignSGD(Attack):
    """ZO-signSGD, score-based, l_inf or l_2 (Liu et al., ICLR 2019, https://openreview.net/forum?id=BJe-DsC5Fm).

    q Gaussian directions per forward-difference gradient estimate, a sign step (l_inf) or a normalized step
    (l_2), projection onto the eps-ball and [0, 1]. See the module docstring for the l_2 variant and the query
    accounting.

    Settings (:class:`ZOSignSGDConfig`):
        norm ("linf"), eps (0.05), budget (1000), seed (0), eot (1): as every attack.
        q (30): directions per gradient estimate.
        fd_eta (0.01): per-pixel std of the probes.
        lr (None = 0.01 for l_inf, per pixel; 0.5 for l_2, the step's l_2 length).
        loss ("margin"): "margin" or "ce" (BlackboxBench's cross-entropy).

    Shapes: x (N, C, H, W) float32 in [0, 1], y (N,) int64.

    Cost: ``eot`` queries for the clean image's loss, then ``(q + 1) * eot`` per iteration and active image (q
    probes and the new iterate); an image with fewer left stops. An iterate whose margin is negative is offered to
    the black box's success check; a verified image stops. The directions of an image come from its own random
    stream (``state.rng``), so its trajectory does not depend on the other images.

    Example:
        >>> res = ZOSignSGD(norm="linf", eps=0.05, budget=1000).run(LocalBlackBox(model, budget=1000), x, y)
    """

    name = "zosignsgd"
    access = "scores"
    norms = ("linf", "l2")
    config_class = ZOSignSGDConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, ZOSignSGDConfig)
        x = state.x0.clone()
        base = torch.zeros(state.n, device=x.device)  # the objective at each image's current point

        def evaluate(xs: torch.Tensor, idx: torch.Tensor) -> None:
            j, m = state.objective(xs, idx, cfg.loss)
            base[idx] = j
            state.report(xs, idx, m < 0)

        idx = state.active_idx(cfg.eot)
        if idx.numel():
            evaluate(x[idx], idx)
        while True:
            idx = state.active_idx(cfg.iteration_cost)
            if idx.numel() == 0:
                break
            xi = x[idx]
            b = xi.shape[0]
            u = state.rng.rows(idx).randn(b, cfg.q, *xi.shape[1:]).transpose(0, 1)
            chunk = max(1, _MAX_PROBE_ELEMENTS // xi.numel())
            parts = []
            for k in range(0, cfg.q, chunk):  # one batched query per chunk of directions (usually a single chunk)
                uk = u[k: k + chunk]
                probes = (xi + cfg.fd_eta * uk).clamp(0.0, 1.0).flatten(0, 1)
                rows = idx.repeat(uk.shape[0])
                j, _ = state.objective(probes, rows, cfg.loss)
                parts.append(j.view(uk.shape[0], b))
            g = zo_gradient(u, torch.cat(parts), base[idx], cfg.fd_eta)
            x_new = state.project(zo_step(xi, g, cfg.norm, cfg.step), idx)
            x[idx] = x_new
            evaluate(x_new, idx)
        state.keep(x, torch.arange(state.n, device=x.device))
