"""Bandits-TD (Ilyas, Engstrom & Madry, "Prior Convictions: Black-Box Adversarial Attacks with Bandits and Priors",
ICLR 2019, https://arxiv.org/abs/1807.07978), l_inf and l_2.

The attack keeps, per image, a *prior* v: a running estimate of the loss gradient, learned online as the action
of a bandit. Two priors of the paper are combined (hence "TD"):

* **time prior**: the gradient changes slowly along the attack, so v is carried over from one iteration to the
  next and only corrected by each new estimate;
* **data prior**: neighbouring pixels have similar gradients, so v lives on a coarse grid of tiles and is
  upsampled (nearest neighbour) to the image.

One iteration, per image (after the authors' code, MadryLab/blackbox-bandits ``src/main.py``): draw exploration
noise ``u = delta * N(0, I) / sqrt(dim v)``; query the two antithetic probes ``x + eta * q / ||q||_2`` with
``q = up(v +- u)``; the finite difference ``(L+ - L-) / (eta * delta)`` times u estimates the gradient of the loss
with respect to v; v takes an exponentiated-gradient step (l_inf, keeping v in [-1, 1]) or a gradient step (l_2)
of ``online_lr``; the image takes a step of ``image_lr`` along ``sign(up(v))`` (l_inf) or ``up(v) / ||up(v)||``
(l_2) and is projected onto the eps-ball and [0, 1].

Defaults are the paper's ImageNet settings (its table of hyperparameters, and the repository's configs):
l_inf ``fd_eta`` 0.1, ``image_lr`` 0.01, ``online_lr`` 100, ``exploration`` 1.0; l_2 ``fd_eta`` 0.01,
``image_lr`` 0.5, ``online_lr`` 0.1, ``exploration`` 0.01.

**Tile size.** Ilyas et al. tile a 50 x 50 prior over 299 x 299 Inception inputs (their code's ``tile_size`` is the
side of the prior; the paper speaks of tiles of about 6 x 6 pixels). rfd's ``tile`` is the side of one tile in
pixels, so the prior is ``ceil(H / tile) x ceil(W / tile)`` per channel. Its default 4 is the scaled choice for
28 x 28 inputs (Fashion-MNIST): a 6-pixel tile would leave a 5 x 5 prior too coarse for 28-pixel objects, and 4 is
the divisor of 28 nearest to the paper's pixels-per-tile, giving a 7 x 7 prior (a quarter of the side, as 50 is
about a sixth of 299). On 32 x 32 CIFAR-10 it gives 8 x 8 (BlackboxBench's CIFAR config uses a finer 20 x 20);
``tile=1`` switches the data prior off (a full-resolution prior).

Differences from the authors' code:

* success is not checked for free on every iterate: an attacker must query a point to learn that it is
  adversarial. Each iteration pays the two probes and one query of the new iterate (``3 * eot`` queries); an
  iterate whose margin is negative is offered to the success check (as rfd's :class:`~rfd.attacks.nes.NES` does).
  The probes are clipped to [0, 1] but, as in the authors' code, not projected onto the eps-ball, and they are not
  offered as candidates. (Projected probes would be valid candidates and save the third query, but a pixel on the
  ball's boundary whose prior points outwards is then clipped in both probes, gives the finite difference no
  signal, and its prior never comes back: the search stalls short of the corner.)
* the loss is rfd's margin (paper eq. 3, as for the other score attacks) by default; ``loss="ce"`` is the
  authors' cross-entropy. Either way the attack ascends ``J = -margin`` or ``J = CE``.
* the exponentiated-gradient step is computed as ``tanh(atanh(v) + online_lr g)`` (the same map as the authors'
  ``pos / (pos + neg)``, without overflow), with v kept 1e-6 inside (-1, 1) so a saturated coordinate can come
  back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.projections import l2_normalize
from rfd.blackbox.losses import LOSSES

__all__ = [
    "Bandits",
    "BanditsConfig",
    "BanditsParams",
    "bandits_gradient",
    "bandits_image_step",
    "bandits_prior_step",
    "eg_step",
    "tile_upsample",
]

# How far inside (-1, 1) the l_inf prior is kept before atanh (float32 tanh saturates to exactly 1 beyond ~9).
_EG_MARGIN = 1e-6


@dataclass(frozen=True)
class BanditsParams:
    """The step sizes of :class:`Bandits` for one norm (the config's values with None resolved)."""

    fd_eta: float
    image_lr: float
    online_lr: float
    exploration: float


# The paper's ImageNet settings per norm
_DEFAULTS = {
    "linf": BanditsParams(fd_eta=0.1, image_lr=0.01, online_lr=100.0, exploration=1.0),
    "l2": BanditsParams(fd_eta=0.01, image_lr=0.5, online_lr=0.1, exploration=0.01),
}


def _check_positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number or None (the norm's default), got {value!r}")


@dataclass(frozen=True, kw_only=True)
class BanditsConfig(AttackConfig):
    """Settings of :class:`Bandits` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`).

    Fields left None take the paper's value for the norm (l_inf / l_2); :attr:`params` resolves them."""

    fd_eta: float | None = None  # l_2 length of the finite-difference probes, pixel units: 0.1 / 0.01
    image_lr: float | None = None  # image step: per pixel for l_inf (0.01), l_2 length for l_2 (0.5)
    online_lr: float | None = None  # prior step: exponentiated gradient for l_inf (100), gradient for l_2 (0.1)
    exploration: float | None = None  # delta, scale of the exploration noise around the prior: 1.0 / 0.01
    tile: int = 4  # side of one tile of the data prior, pixels; prior ceil(H/tile) x ceil(W/tile); 1 = no tiling
    loss: str = "margin"  # "margin" (paper eq. 3, rfd's score attacks) or "ce" (cross-entropy, the authors' code)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("fd_eta", "image_lr", "online_lr", "exploration"):
            _check_positive(name, getattr(self, name))
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile < 1:
            raise ValueError(f"tile must be an integer >= 1 (pixels per tile side), got {self.tile!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def params(self) -> BanditsParams:
        """The step sizes for this norm: each field's value, or the paper's default where it is None."""
        d = _DEFAULTS[self.norm]
        return BanditsParams(
            fd_eta=d.fd_eta if self.fd_eta is None else float(self.fd_eta),
            image_lr=d.image_lr if self.image_lr is None else float(self.image_lr),
            online_lr=d.online_lr if self.online_lr is None else float(self.online_lr),
            exploration=d.exploration if self.exploration is None else float(self.exploration),
        )

    @property
    def iteration_cost(self) -> int:
        """Queries per iteration and image: the two antithetic probes and the new iterate, times eot."""
        return 3 * self.eot


# -- the math, as plain batched functions ------------------------------------------------------------------------
def tile_upsample(prior: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The data prior on the image grid: prior (B, C, h, w) upsampled by nearest neighbour to (B, C, *size)."""
    if tuple(prior.shape[-2:]) == tuple(size):
        return prior
    return F.interpolate(prior, size=size, mode="nearest")


def bandits_gradient(u: torch.Tensor, j_plus: torch.Tensor, j_minus: torch.Tensor, fd_eta: float,
                     exploration: float) -> torch.Tensor:
    """Two-query estimate (B, C, h, w) of the objective's gradient with respect to the prior:
    ``(J+ - J-) / (fd_eta * exploration) * u`` for exploration noise u (B, C, h, w) and objectives J+- (B,) at the
    probes of ``up(v + u)`` and ``up(v - u)``."""
    d = (j_plus - j_minus) / (fd_eta * exploration)
    return d.view(-1, *([1] * (u.dim() - 1))) * u


def eg_step(v: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
    """Exponentiated-gradient ascent step on a prior v in (-1, 1): ``tanh(atanh(v) + lr g)``.

    The authors' form ``p e^{lr g} / (p e^{lr g} + (1 - p) e^{-lr g})`` with ``p = (v + 1) / 2``, mapped back to
    [-1, 1], is exactly this; written with tanh it cannot overflow. v is kept ``1e-6`` inside (-1, 1) first."""
    z = torch.atanh(v.clamp(-1.0 + _EG_MARGIN, 1.0 - _EG_MARGIN))
    return torch.tanh(z + lr * g)


def bandits_prior_step(v: torch.Tensor, g: torch.Tensor, norm: str, lr: float) -> torch.Tensor:
    """The prior update: exponentiated gradient (l_inf) or plain gradient ascent ``v + lr g`` (l_2)."""
    if norm == "linf":
        return eg_step(v, g, lr)
    return v + lr * g


def bandits_image_step(x: torch.Tensor, direction: torch.Tensor, norm: str, lr: float) -> torch.Tensor:
    """An ascent step of the image along the upsampled prior: ``x + lr sign(d)`` (l_inf) or ``x + lr d / ||d||_2``
    (l_2); not projected."""
    if norm == "linf":
        return x + lr * direction.sign()
    return x + lr * l2_normalize(direction)


class Bandits(Attack):
    """Bandits-TD, score-based, l_inf or l_2 (Ilyas, Engstrom & Madry, ICLR 2019, https://arxiv.org/abs/1807.07978).

    A per-image gradient prior with a time prior (carried over iterations) and a data prior (tiles of ``tile`` x
    ``tile`` pixels), learned from two antithetic probes per iteration; the image follows the prior with projected
    steps. See the module docstring for the algorithm, the tile-size choice and the differences from the authors'
    code.

    Settings (:class:`BanditsConfig`; None = the paper's value for the norm, l_inf / l_2):
        norm ("linf"), eps (0.05), budget (1000), seed (0), eot (1): as every attack.
        fd_eta (0.1 / 0.01): l_2 length of the finite-difference probes.
        image_lr (0.01 / 0.5): image step, per pixel (l_inf) or l_2 length (l_2).
        online_lr (100 / 0.1): prior step size (exponentiated gradient for l_inf, gradient for l_2).
        exploration (1.0 / 0.01): scale delta of the exploration noise.
        tile (4): tile side in pixels (a 7 x 7 prior on 28 x 28 images); 1 = no data prior.
        loss ("margin"): "margin" or "ce" (the authors' cross-entropy).

    Shapes: x (N, C, H, W) float32 in [0, 1], y (N,) int64; the prior is (N, C, ceil(H/tile), ceil(W/tile)).

    Cost: each iteration costs ``3 * eot`` queries per active image (the two probes and the new iterate); an image
    with fewer left stops. An iterate whose margin is negative is offered to the black box's success check; a
    verified image stops. The start point is the clean image and the prior starts at zero. Every random draw of an
    image comes from its own stream (``state.rng``), so its trajectory does not depend on the other images.

    Example:
        >>> res = Bandits(norm="linf", eps=0.05, budget=1000).run(LocalBlackBox(model, budget=1000), x, y)
    """

    name = "bandits"
    access = "scores"
    norms = ("linf", "l2")
    config_class = BanditsConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, BanditsConfig)
        p = cfg.params
        n, c, h, w = state.x0.shape
        prior_shape = (c, math.ceil(h / cfg.tile), math.ceil(w / cfg.tile))
        dim = math.prod(prior_shape)
        x = state.x0.clone()
        prior = torch.zeros(n, *prior_shape, device=x.device)
        while True:
            idx = state.active_idx(cfg.iteration_cost)
            if idx.numel() == 0:
                break
            b = idx.shape[0]
            xi, vi = x[idx], prior[idx]
            u = p.exploration * state.rng.rows(idx).randn(b, *prior_shape) / math.sqrt(dim)
            q_plus, q_minus = tile_upsample(vi + u, (h, w)), tile_upsample(vi - u, (h, w))
            probes = torch.cat([
                (xi + p.fd_eta * l2_normalize(q_plus)).clamp(0.0, 1.0),
                (xi + p.fd_eta * l2_normalize(q_minus)).clamp(0.0, 1.0),
            ])
            j, _ = state.objective(probes, idx.repeat(2), cfg.loss)
            g = bandits_gradient(u, j[:b], j[b:], p.fd_eta, p.exploration)
            vi = bandits_prior_step(vi, g, cfg.norm, p.online_lr)
            prior[idx] = vi
            x_new = state.project(bandits_image_step(xi, tile_upsample(vi, (h, w)), cfg.norm, p.image_lr), idx)
            x[idx] = x_new
            state.report(x_new, idx, state.margin(x_new, idx) < 0)
        state.keep(x, torch.arange(n, device=x.device))
