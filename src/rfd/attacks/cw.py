"""Carlini & Wagner (IEEE S&P 2017, https://arxiv.org/abs/1608.04644): the l_2 attack (tanh-space Adam with
a binary search over the constant c) and, for l_inf, PGD on their margin loss (the paper's Table 13)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from rfd.attacks.base import AttackConfig, AttackState
from rfd.attacks.whitebox import WhiteBoxAttack, cw_margin, eot_objective, objective, pgd_loop
from rfd.blackbox.losses import margin_loss

__all__ = ["CarliniWagner", "CarliniWagnerConfig", "adam_step", "from_tanh_space", "to_tanh_space"]

# c above this means "no upper bound found yet" in the binary search (as in Carlini's reference code)
_NO_UPPER = 1e10


@dataclass(frozen=True, kw_only=True)
class CarliniWagnerConfig(AttackConfig):
    """Settings of :class:`CarliniWagner` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`).

    l_inf: PGD on ``max(Z_y - max_{i != y} Z_i, -kappa)``; queries per sample <= steps * restarts * eot.
    l_2: queries per sample <= binary_steps * steps * eot."""

    kappa: float = 0.0  # confidence: stop pushing once another logit leads the true one by kappa
    steps: int = 100  # l_inf: PGD steps per restart; l_2: Adam steps per binary-search step
    # l_inf only
    step_size: float | None = None  # pixel units per step; default 2.5 * eps / steps
    restarts: int = 1
    random_start: bool = True
    # l_2 only
    binary_steps: int = 5  # binary-search steps over c
    initial_const: float = 1e-2  # first c (multiplied by 10 until an adversarial is found, then bisected)
    lr: float = 1e-2  # Adam learning rate in tanh space

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.kappa >= 0):
            raise ValueError(f"kappa must be >= 0 (logit units), got {self.kappa}")
        for name in ("steps", "restarts", "binary_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be positive (pixel units) or None, got {self.step_size}")
        for name in ("initial_const", "lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v}")


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    """w with ``(tanh(w) + 1) / 2 = x`` for x in [0, 1] (shrunk slightly so 0 and 1 stay finite)."""
    return torch.atanh((2 * x - 1) * (1 - 1e-6))


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    """``(tanh(w) + 1) / 2``: any real w maps into (0, 1), so the box constraint never binds."""
    return (torch.tanh(w) + 1) / 2


def adam_step(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step (Kingma & Ba) on rows of w (B, ...) with gradient g, moments m, v, step count t >= 1.

    Returns the new (w, m, v). A plain function so the optimiser state can follow the shrinking active set."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    return w - lr * m_hat / (v_hat.sqrt() + eps), m, v


class CarliniWagner(WhiteBoxAttack):
    """The C&W attack, batched over images.

    l_2 (the classic form): minimise ``||x - x0||_2^2 + c * max(Z_y - max_{i != y} Z_i, -kappa)`` over
    ``x = (tanh(w) + 1) / 2`` with Adam, for ``binary_steps`` values of c per sample (times 10 until an
    adversarial is found, then bisection). Each sample keeps its smallest adversarial found; at the end of
    every binary-search step a new best that lies within eps is offered to the majority-vote check, and
    verified samples stop there (so their query count includes that whole binary step).

    l_inf (the white-box setting of the paper's Table 13): PGD with the same margin loss.

    With ``eot=M`` the loss is averaged over M forwards (fresh noise each) and each step costs M queries.

    Args (:class:`CarliniWagnerConfig`): norm, eps, budget, seed, eot, kappa (0), steps (100), step_size,
        restarts, random_start (l_inf), binary_steps (5), initial_const (0.01), lr (0.01) (l_2).

    Example::

        result = CarliniWagner(norm="l2", eps=1.5, budget=500).run(LocalBlackBox(model), x, y)
    """

    name: ClassVar[str] = "cw"
    config_class: ClassVar[type[AttackConfig]] = CarliniWagnerConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg: CarliniWagnerConfig = self.config  # type: ignore[assignment]
        if cfg.norm == "linf":
            step = cfg.step_size if cfg.step_size is not None else 2.5 * cfg.eps / cfg.steps
            pgd_loop(state, objective("margin", cfg.kappa), steps=cfg.steps, step_size=step,
                     restarts=cfg.restarts, start_random=cfg.random_start)
        else:
            self._run_l2(state, cfg)

    def _run_l2(self, state: AttackState, cfg: CarliniWagnerConfig) -> None:
        cost = cfg.eot
        idx = state.active_idx(cost)
        if idx.numel() == 0:
            return
        b = idx.shape[0]
        dev = state.x0.device
        x0, y = state.x0[idx], state.y[idx]
        w0 = to_tanh_space(x0)
        const = torch.full((b,), cfg.initial_const, device=dev)
        lower = torch.zeros(b, device=dev)
        upper = torch.full((b,), _NO_UPPER, device=dev)
        best_l2 = torch.full((b,), math.inf, device=dev)
        best_x = x0.clone()
        last_x = x0.clone()
        for _ in range(cfg.binary_steps):
            pos = torch.nonzero(torch.isin(idx, state.active_idx(cost))).flatten()
            if pos.numel() == 0:
                break
            # Carlini's code restarts every binary step from the clean image with fresh Adam moments
            w = w0.clone()
            m, v = torch.zeros_like(w), torch.zeros_like(w)
            found = torch.zeros(b, dtype=torch.bool, device=dev)
            improved = torch.zeros(b, dtype=torch.bool, device=dev)
            for t in range(1, cfg.steps + 1):
                pos = pos[torch.isin(idx[pos], state.active_idx(cost))]
                if pos.numel() == 0:
                    break
                wi = w[pos].requires_grad_(True)
                xi = from_tanh_space(wi)
                f, z, _ = eot_objective(state, xi, idx[pos], lambda zz, yy: cw_margin(zz, yy, cfg.kappa))
                dist2 = (xi - x0[pos]).flatten(1).pow(2).sum(1)
                (g,) = torch.autograd.grad((dist2 + const[pos] * f).sum(), wi)
                xi = xi.detach()
                # the iterate just queried: a smaller adversarial than the best so far replaces it
                adv = z.argmax(1) != y[pos]
                l2 = dist2.detach().sqrt()
                better = adv & (l2 < best_l2[pos])
                best_l2[pos[better]] = l2[better]
                best_x[pos[better]] = xi[better]
                improved[pos[better]] = True
                # the binary search asks C&W's question: did f reach its floor (misclassified by kappa)?
                found[pos[adv & (margin_loss(z, y[pos]) <= -cfg.kappa)]] = True
                last_x[pos] = xi
                w[pos], m[pos], v[pos] = adam_step(w[pos], g, m[pos], v[pos], t, cfg.lr)
            # offer each new best that lies in the ball once (re-offering the same image would give a
            # randomized model's vote extra chances)
            offer = torch.nonzero(improved & (best_l2 <= cfg.eps * (1 + 1e-6))).flatten()
            if offer.numel():
                state.report(best_x[offer], idx[offer])
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < _NO_UPPER, (lower + upper) / 2, const * 10)
        # unbroken samples keep their smallest adversarial found (outside the ball), else the last iterate
        state.keep(torch.where(torch.isfinite(best_l2).view(-1, 1, 1, 1), best_x, last_x), idx)
