"""P-RGF: prior-guided random gradient-free attack (Cheng, Dong, Pang, Su & Zhu, NeurIPS 2019, "Improving
Black-box Adversarial Attacks with a Transfer-based Prior", https://arxiv.org/abs/1906.06919), l_2 and l_inf.

Score-based. Each iteration estimates the gradient of the target's loss f by random finite differences whose
directions are biased toward a transfer-based prior v, the gradient of the same loss on a surrogate model the
attacker owns (free: no query). How much to trust the prior follows from alpha = v^T grad f / (|v| |grad f|),
itself estimated with queries, through the paper's closed-form optimal mixing coefficient lambda*.

Directions, as in the authors' code, are scaled to unit RMS per pixel (l_2 norm sqrt(D), D = C H W) and
``fd_sigma`` (1e-4, as published) is the RMS per pixel of a probe's displacement. Per iteration and image:

* alpha. ``|grad f|^2 ~ mean_s ((f(x + sigma u_s) - f(x)) / sigma)^2`` over S = ``norm_samples`` (10) random
  directions u_s (E[(grad f . u)^2] = |grad f|^2 for u uniform on the sphere of radius sqrt(D)); re-estimated
  every ``norm_every`` (10) iterations and at iteration 3, as in the authors' code (the norm changes slowly).
  Then 1 query: ``alpha = (f(x + sigma v) - f(x)) / (sigma sqrt(D) |grad f|)``; if alpha < 0 the prior is
  flipped (v <- -v, alpha <- -alpha).
* lambda* (the paper's eq. for the RGF estimator without data prior, n = D): 0 if alpha^2 <= 1 / (D + 2q - 2);
  1 if alpha^2 >= (2q - 1) / (D + 2q - 2); else
  ``(1 - alpha^2) (alpha^2 (D + 2q - 2) - 1) / (2 alpha^2 D q - alpha^4 D (D + 2q - 2) - 1)``.
* gradient. With lambda* = 1 the step follows v (no further query); else q = ``samples`` (50) directions
  ``u_i = sqrt(lambda) v + sqrt(1 - lambda) xi_i``, xi_i Gaussian projected orthogonal to v and RMS-normalised,
  q queries, ``g = mean_i (f(x + sigma u_i) - f(x)) u_i``.
* step: ``x + lr sign(g)`` (l_inf) or ``x + lr g / |g|_2`` (l_2), projection onto the eps-ball and [0, 1],
  then 1 query of the new point (its loss for the next iteration; misclassified -> offered to the check).

Queries (each ``eot`` forwards): 1 for f(x0), then per iteration 1 (prior probe) + q (unless lambda* = 1) + 1
(new point) + S when the norm is re-estimated; an image whose remaining budget cannot pay its iteration's
worst case stops (the leftover is not spent).

What differs from the paper / the authors' code (github.com/thu-ml/Prior-Guided-RGF):

* the loss is the paper's margin (rfd's score-based convention, eq. 3: ``max_{i != y} z_i - z_y``, maximised)
  by default, on the target and the surrogate alike; ``loss="ce"`` is the published cross-entropy (read from
  the scores as logits). The margin does not saturate on confident images, where float32 cross-entropy
  differences at sigma = 1e-4 vanish.
* probes are clipped to [0, 1] (rfd's images contract; the authors' models took any input).
* a zero finite difference (prior probe, or the whole estimate) does not retry within the iteration: that
  image's sigma is doubled (prior) or multiplied by 5 (estimate) from the next iteration on (at most 1), never reset
  (the authors retry at once and test every second iteration, with 2 extra queries, whether 1e-4 works again).
* default steps: l_inf 0.1 eps per pixel (the published 0.005 at eps 0.05), l_2 0.125 eps (the published
  l_2 step 2 at eps sqrt(1e-3 D) = 16.4 on 299x299x3 images is 0.122 eps).
* the data-dependent prior (P-RGF_D) and the fixed-lambda / averaging variants are not included.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from rfd.attacks.base import AttackConfig, AttackState
from rfd.attacks.surrogate import SurrogateAttack, SurrogateAttackConfig, surrogate_gradient
from rfd.attacks.whitebox import LOSSES, objective

__all__ = [
    "PRGF",
    "PRGFConfig",
    "biased_directions",
    "estimate_alpha",
    "prgf_lambda",
    "rgf_gradient",
    "rms_normalize",
]

log = logging.getLogger(__name__)

# Upper bound on the elements of one probe batch (bounds memory for large images; same numbers either way).
_MAX_PROBE_ELEMENTS = 2**25
# Cap of the grown finite-difference step (RMS per pixel): a probe that large already spans the [0, 1] box.
_MAX_SIGMA = 1.0


@dataclass(frozen=True, kw_only=True)
class PRGFConfig(SurrogateAttackConfig):
    """Settings of :class:`PRGF` (plus norm, eps, budget, seed, eot, surrogate)."""

    samples: int = 50  # q, biased random directions (= queries) per gradient estimate (published: 50)
    fd_sigma: float = 1e-4  # RMS per pixel of a probe's displacement, pixel units (published: 1e-4)
    lr: float | None = None  # step: per pixel (l_inf, sign step) or l_2 length; default 0.1 eps / 0.125 eps
    norm_samples: int = 10  # S, random directions (= queries) per estimate of |grad f| (authors' code: 10)
    norm_every: int = 10  # re-estimate |grad f| every this many iterations (and at iteration 3, as published)
    loss: str = "margin"  # "margin" (paper eq. 3, rfd's convention) or "ce" (published; scores read as logits)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("samples", "norm_samples", "norm_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.fd_sigma) and self.fd_sigma > 0):
            raise ValueError(f"fd_sigma must be positive (pixel units), got {self.fd_sigma}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive (pixel units) or None, got {self.lr}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def step(self) -> float:
        """The step size in use (pixel units)."""
        if self.lr is not None:
            return self.lr
        return 0.1 * self.eps if self.norm == "linf" else 0.125 * self.eps


# -- the estimator as plain functions ------------------------------------------------------------------------
def _rows(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v.view(*v.shape, *([1] * dims))


def rms_normalize(v: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
    """v (*batch, C, H, W) scaled to unit RMS over its last ``v.dim() - batch_dims`` dimensions (l_2 norm
    sqrt(D)); zero rows stay zero."""
    flat = v.flatten(batch_dims)
    rms = flat.pow(2).mean(-1).sqrt().clamp_min(1e-12)
    return v / _rows(rms, v.dim() - batch_dims)


def estimate_alpha(d_prior: torch.Tensor, norm_sq: torch.Tensor, dim: int) -> torch.Tensor:
    """The paper's estimate of the cosine between the prior v (unit RMS, |v| = sqrt(D)) and grad f:
    ``d_prior / (sqrt(D) |grad f|)`` with d_prior (B,) ~ v^T grad f and norm_sq (B,) ~ |grad f|^2
    (a zero norm estimate gives +-inf for a non-zero d_prior: follow the prior, as the authors' code does)."""
    return d_prior / (dim * norm_sq).sqrt().clamp_min(1e-12)


def prgf_lambda(alpha: torch.Tensor, dim: int, q: int) -> torch.Tensor:
    """lambda* (B,) of the paper for cosine estimates alpha (B,), dimension D = ``dim`` and q directions.

    The weight of the prior in each direction ``u = sqrt(lambda) v + sqrt(1 - lambda) xi`` that minimises the
    expected error of the estimate: 0 when the prior is no better than a random direction
    (alpha^2 <= 1 / (D + 2q - 2)), 1 when it beats what q random directions can give
    (alpha^2 >= (2q - 1) / (D + 2q - 2)), the closed form between. |alpha| >= 1 gives 1."""
    a2 = alpha.double().pow(2)
    n = float(dim)
    lo, hi = 1.0 / (n + 2 * q - 2), (2 * q - 1) / (n + 2 * q - 2)
    num = (1 - a2) * (a2 * (n + 2 * q - 2) - 1)
    den = 2 * a2 * n * q - a2.pow(2) * n * (n + 2 * q - 2) - 1
    mid = (num / torch.where(den > 0, den, torch.ones_like(den))).clamp(0.0, 1.0)
    lam = torch.where(a2 <= lo, torch.zeros_like(a2), torch.where(a2 >= hi, torch.ones_like(a2), mid))
    return torch.where(a2 >= 1, torch.ones_like(lam), lam).to(alpha.dtype)


def biased_directions(prior: torch.Tensor, xi: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """P-RGF's directions (B, q, C, H, W): ``sqrt(lam) v + sqrt(1 - lam) xi_perp`` with xi_perp the Gaussian
    xi (B, q, C, H, W) projected orthogonal to the prior v (B, C, H, W; unit RMS) and RMS-normalised, so every
    direction has unit RMS. lam: (B,) in [0, 1]."""
    v = prior.unsqueeze(1)
    dims = prior.dim() - 1
    vv = prior.flatten(1).pow(2).sum(1).clamp_min(1e-12)  # (B,)
    coef = (xi * v).flatten(2).sum(2) / vv[:, None]  # (B, q)
    perp = rms_normalize(xi - _rows(coef, dims) * v, batch_dims=2)
    lam = lam.to(prior.dtype)
    return _rows(lam.sqrt(), dims + 1) * v + _rows((1 - lam).sqrt(), dims + 1) * perp


def rgf_gradient(u: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
    """The random gradient-free estimate (B, C, H, W): ``mean_i diffs_i u_i`` from directions u (B, q, C, H, W)
    and loss differences diffs (B, q) = f(x + sigma u_i) - f(x) (the scale 1/sigma is dropped: only the
    direction is used)."""
    return (_rows(diffs.to(u.dtype), u.dim() - 2) * u).mean(1)


# -- the attack ------------------------------------------------------------------------------------------------
class PRGF(SurrogateAttack):
    """P-RGF, score-based, l_2 or l_inf: random gradient-free estimation biased toward a surrogate's gradient.

    The target is reached only through charged score queries (``eot`` forwards each); the surrogate's gradients
    are free. Start at the clean image; each iteration estimates alpha (the prior's cosine with the true
    gradient), picks lambda*, estimates the gradient with q biased directions (none when lambda* = 1), steps
    and queries the new point (see the module docstring for formulas and query counts). All random directions
    come from each image's own stream (``state.rng``). Per-sample extras: ``alpha`` (mean estimated cosine
    over the image's iterations, after the sign flip) and ``lambda`` (mean lambda*).

    Args (:class:`PRGFConfig`): norm ("linf" | "l2"), eps (pixel units), budget (queries per sample), seed, eot,
        surrogate (registry name, "fmnist-resnet"), samples (q = 50), fd_sigma (1e-4), lr (0.1 eps l_inf,
        0.125 eps l_2), norm_samples (10), norm_every (10), loss ("margin" | "ce").

    Shapes: images (N, C, H, W) in [0, 1]; the surrogate takes the same images and gives the target's K logits.
    Use :meth:`with_surrogate` to pass a module instead of a registry name.

    Example::

        bb = LocalBlackBox(load_model("fmnist-vgg"), budget=1000)
        result = PRGF(norm="l2", eps=1.0, budget=1000, surrogate="fmnist-resnet").run(bb, x, y)
    """

    name: ClassVar[str] = "prgf"
    access = "scores"
    norms = ("linf", "l2")
    config_class: ClassVar[type[AttackConfig]] = PRGFConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, PRGFConfig)
        eot, q, s = cfg.eot, cfg.samples, cfg.norm_samples
        if state.active_idx(eot).numel() == 0:
            return
        model = self.surrogate_for(state)
        obj = objective(cfg.loss)
        dev, n = state.x0.device, state.n
        shape = state.x0.shape[1:]
        dim = math.prod(shape)

        def loss(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """The target's loss f (maximised; float64) and whether its answer is misclassified: 1 query."""
            f, margin = state.objective(x, idx, cfg.loss, dtype=torch.float64)
            return f, margin < 0

        def probe_losses(x: torch.Tensor, idx: torch.Tensor, u: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            """f at clip(x + sigma u_k) for directions u (B, k, C, H, W): (B, k), k queries per image."""
            b, k = u.shape[:2]
            sig = _rows(sigma.to(x.dtype), x.dim())
            chunk = max(1, _MAX_PROBE_ELEMENTS // max(1, b * dim))
            out = []
            for j in range(0, k, chunk):  # one batched query per chunk of directions (usually one chunk)
                uj = u[:, j: j + chunk]
                pts = (x.unsqueeze(1) + sig * uj).clamp(0.0, 1.0)
                f, _ = loss(pts.flatten(0, 1), idx.repeat_interleave(uj.shape[1]))
                out.append(f.view(b, uj.shape[1]))
            return torch.cat(out, 1)

        x = state.x0.clone()
        f = torch.zeros(n, dtype=torch.float64, device=dev)  # f at each image's current point
        sigma = torch.full((n,), cfg.fd_sigma, dtype=torch.float64, device=dev)
        norm_sq = torch.zeros(n, dtype=torch.float64, device=dev)
        t = torch.zeros(n, dtype=torch.int64, device=dev)  # iterations done per image
        alpha_sum = torch.zeros(n, dtype=torch.float64, device=dev)
        lambda_sum = torch.zeros(n, dtype=torch.float64, device=dev)

        idx = state.active_idx(eot)
        f[idx], _ = loss(x[idx], idx)  # the clean point's loss (its label was already checked: not a claim)
        while True:
            due = (t % cfg.norm_every == 0) | (t == 3)
            cost = eot * (q + 2 + s * due.long())
            idx = state.active_idx(eot * (q + 2))
            fits = state.remaining(idx) >= cost[idx]
            if not bool(fits.all()):
                state.active[idx[~fits]] = False  # cannot pay this iteration's worst case: stop here
                idx = idx[fits]
            if idx.numel() == 0:
                break
            b = idx.numel()
            xi, fi, si = x[idx], f[idx], sigma[idx]
            rows = state.rng.rows(idx)
            v = rms_normalize(surrogate_gradient(model, xi, state.y[idx], obj))  # the prior (free)

            d = due[idx]
            if bool(d.any()):  # |grad f|^2 from S random directions
                u = rms_normalize(rows.subset(d).randn(int(d.sum()), s, *shape).to(xi.dtype), batch_dims=2)
                fs = probe_losses(xi[d], idx[d], u, si[d])
                norm_sq[idx[d]] = ((fs - fi[d, None]) / si[d, None]).pow(2).mean(1)

            fp = probe_losses(xi, idx, v.unsqueeze(1), si)[:, 0]
            dp = (fp - fi) / si
            alpha = estimate_alpha(dp, norm_sq[idx], dim)
            flip = alpha < 0
            v = torch.where(_rows(flip, len(shape)), -v, v)
            alpha = alpha.abs()
            stuck = (dp == 0) & (v.flatten(1).abs().amax(1) > 0)
            lam = prgf_lambda(alpha, dim, q)

            grad = v.clone()  # lambda* = 1: follow the prior
            est = lam < 1
            if bool(est.any()):
                m = int(est.sum())
                u = biased_directions(v[est], rows.subset(est).randn(m, q, *shape).to(xi.dtype), lam[est])
                fq = probe_losses(xi[est], idx[est], u, si[est])
                g = rgf_gradient(u, fq - fi[est, None])
                grad[est] = g
                zero = torch.zeros(b, dtype=torch.bool, device=dev)
                zero[est] = g.flatten(1).abs().amax(1) == 0
                sigma[idx[zero]] *= 5.0
            sigma[idx[stuck]] *= 2.0
            sigma.clamp_(max=_MAX_SIGMA)

            if cfg.norm == "linf":
                x_new = xi + cfg.step * grad.sign()
            else:
                gn = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                x_new = xi + cfg.step * grad / _rows(gn, len(shape))
            x_new = state.project(x_new, idx)
            f_new, wrong = loss(x_new, idx)
            x[idx], f[idx] = x_new, f_new
            t[idx] += 1
            alpha_sum[idx] += alpha.double().clamp(max=1e6)
            lambda_sum[idx] += lam.double()
            state.report(x_new, idx, wrong)
        state.keep(x, torch.arange(n, device=dev))
        iters = t.double()
        nan = torch.full_like(iters, float("nan"))
        state.extras["alpha"] = torch.where(t > 0, alpha_sum / iters.clamp_min(1), nan)
        state.extras["lambda"] = torch.where(t > 0, lambda_sum / iters.clamp_min(1), nan)
        log.debug("prgf: %d broken, mean lambda %.3f", int(state.success.sum()),
                  float(lambda_sum.sum() / iters.sum().clamp_min(1)))

