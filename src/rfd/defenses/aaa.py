"""AAA: "Adversarial Attack on Attackers" (Chen et al., NeurIPS 2022), the linear-attractor variant.

AAA post-processes the logits so that a score-based attacker, who follows the margin between the top two
logits, is led the wrong way: the margin ``m`` is moved to ``t = a - reverse_step * (m - a)`` where ``a`` is
the nearest point of the attractor grid ``(k - dev) * interval``. A second term keeps the probability of
the top class (softmax at ``temperature``) at its original value, so calibration is preserved. The loss

    |m(z) - t| + calibration_weight * |softmax(z / T)[top] - p_top|

is minimised over the logits ``z`` with Adam. The post-processing is deterministic. The predicted label must
never change: any row whose argmax moved is returned unchanged (the original logits).

Differences from the authors' code (facts checked in their public repository, not copied): the loss is summed
over rows instead of averaged, so one row's result does not depend on what else is in the batch (Adam is
invariant to the scale of the loss up to its epsilon); the temperature is applied in the optimised softmax too
(identical at the default T = 1); their input quantisation to 8 bits is not part of the defense here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["AAAConfig", "aaa_logits", "aaa_targets"]


@dataclass(frozen=True, kw_only=True)
class AAAConfig:
    """Settings of AAA (Chen et al. 2022, "Adversarial Attack on Attackers", NeurIPS), defaults as in the paper."""

    interval: float = 6.0  # attractor interval: attractors sit at (k - dev) * interval on the logit margin
    reverse_step: float = 1.0  # how far past the attractor the margin is pushed: target = a - step * (m - a)
    calibration_weight: float = 5.0  # weight of the "keep the top probability" term in the loss
    steps: int = 100  # Adam steps on the logits
    lr: float = 0.1  # Adam learning rate
    temperature: float = 1.0  # softmax temperature of the calibration term
    dev: float = 0.5  # offset of the attractor grid (in units of the interval)

    def __post_init__(self) -> None:
        for name in ("interval", "lr", "temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"AAAConfig.{name} must be a positive finite number, got {v!r}")
        for name in ("reverse_step", "calibration_weight", "dev"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"AAAConfig.{name} must be a non-negative finite number, got {v!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"AAAConfig.steps must be a non-negative int, got {self.steps!r}")


def aaa_targets(margin: torch.Tensor, cfg: AAAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Attractor ``a`` and target margin ``t`` for original margins ``margin`` (N,), in logit units."""
    attractor = (torch.round(margin / cfg.interval + cfg.dev) - cfg.dev) * cfg.interval
    target = attractor - cfg.reverse_step * (margin - attractor)
    return attractor, target


def aaa_logits(logits: torch.Tensor, cfg: AAAConfig | None = None) -> torch.Tensor:
    """AAA-processed logits (N, K) for ``logits`` (N, K); same argmax per row, guaranteed.

    Runs ``cfg.steps`` Adam steps on a detached copy (gradients are enabled locally, also under
    ``torch.no_grad()`` or ``torch.inference_mode()``); the result carries no graph to the model.
    """
    cfg = cfg or AAAConfig()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"AAA needs logits of shape (N, K), got {getattr(logits, 'shape', type(logits).__name__)}")
    if logits.shape[1] < 2:
        raise ValueError(f"AAA needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
    if logits.shape[0] == 0 or cfg.steps == 0:
        return logits.detach().clone()
    with torch.inference_mode(False), torch.no_grad():
        orig = logits.detach().float().clone()
        # argmax (not topk) defines "the prediction", so exact ties resolve the way every caller sees them.
        top = orig.argmax(dim=1)
        rows = torch.arange(orig.shape[0], device=orig.device)
        runner_up = orig.scatter(1, top[:, None], float("-inf")).amax(dim=1)
        p_top = torch.softmax(orig / cfg.temperature, dim=1)[rows, top]
        _, target = aaa_targets(orig[rows, top] - runner_up, cfg)
        z = _adam_on_logits(orig, top, p_top, target, cfg)
        # The one hard promise: never change a prediction. Rows whose top class moved (or tied) keep the original.
        changed = z.argmax(dim=1) != top
        out = torch.where(changed[:, None], orig, z)
    return out.to(logits.dtype)


def _adam_on_logits(
    z0: torch.Tensor, top: torch.Tensor, p_top: torch.Tensor, target: torch.Tensor, cfg: AAAConfig
) -> torch.Tensor:
    """Minimise the AAA loss over logits (N, K) with Adam (betas 0.9/0.999, eps 1e-8, as torch.optim.Adam).

    The gradient is written out instead of taken by autograd: AAA runs on every query, and for small batches
    the autograd and optimizer bookkeeping costs far more than the arithmetic. d|m - t|/dz is
    sign(m - t) * (e_first - e_second) for the current top two logits (the subgradient autograd would pick);
    d|p - p0|/dz is sign(p - p0) * p * (e_top - softmax) / T.
    """
    b1, b2, eps = 0.9, 0.999, 1e-8
    z = z0.clone()
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    rows = torch.arange(z.shape[0], device=z.device)
    onehot_top = torch.zeros_like(z).scatter_(1, top[:, None], 1.0)
    w, temp = cfg.calibration_weight, cfg.temperature
    for step in range(1, cfg.steps + 1):
        vals, idx = z.topk(2, dim=1)
        g = torch.zeros_like(z)
        s_margin = torch.sign(vals[:, 0] - vals[:, 1] - target)[:, None]
        g.scatter_add_(1, idx, torch.cat([s_margin, -s_margin], dim=1))
        prob = torch.softmax(z / temp, dim=1)
        p = prob[rows, top]
        g += (w * torch.sign(p - p_top) * p / temp)[:, None] * (onehot_top - prob)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2 ** step)).sqrt_().add_(eps)
        z.addcdiv_(m, denom, value=-cfg.lr / (1 - b1 ** step))
    return z
