"""What the white-box attacks (PGD, C&W) share: the base class, objectives, update rules and the PGD loop.

White-box attacks differentiate the model, so they need a black box that ``supports_gradients`` (a
:class:`~rfd.blackbox.local.LocalBlackBox` around an in-process model); they reach the model only through
:meth:`~rfd.blackbox.base.BlackBox.logits_with_grad`. They still go through the same
:class:`~rfd.attacks.base.AttackState`: every forward/backward pass is charged as one query per sample
(``eot`` of them per gradient when gradients are averaged over noise draws, EOT), and success is decided by
the black box's uncounted majority vote plus the eps-ball test, exactly as for the query-based attacks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from rfd.attacks.base import Attack, AttackState
from rfd.attacks.projections import l2_normalize
from rfd.attacks.rng import RowDraws
from rfd.blackbox.losses import LOSSES, margin_loss

__all__ = [
    "LOSSES",
    "Objective",
    "WhiteBoxAttack",
    "ascent_step",
    "cw_margin",
    "eot_objective",
    "objective",
    "pgd_loop",
    "random_start",
]

log = logging.getLogger(__name__)

# Objective to MAXIMISE: logits (B, K), labels (B,) -> (B,)
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cw_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Carlini & Wagner's f_6: ``max(Z_y - max_{i != y} Z_i, -kappa)``, shape (B,) from logits (B, K).

    The attacker minimises it; the clamp at ``-kappa`` stops pushing once the wrong class leads by kappa."""
    return margin_loss(logits, y).clamp_min(-kappa)


def objective(loss: str, kappa: float = math.inf) -> Objective:
    """The per-sample objective PGD ascends: ``"ce"`` (cross-entropy, Madry et al.) or ``"margin"``
    (``-cw_margin(kappa)``; kappa = inf gives the plain negative margin)."""
    if loss == "ce":
        return lambda z, y: F.cross_entropy(z, y, reduction="none")
    if loss == "margin":
        return lambda z, y: -cw_margin(z, y, kappa)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def random_start(x0: torch.Tensor, norm: str, eps: float, draws: RowDraws) -> torch.Tensor:
    """A random point of the eps-ball around x0 (B, C, H, W), clipped to [0, 1], drawn from ``draws`` (the
    per-sample streams of these B rows, e.g. ``state.rng.rows(idx)``: each row's start is its own stream's).

    l_inf: uniform in the box. l_2: uniform direction, radius uniform in [0, eps] (as torchattacks does)."""
    if norm == "linf":
        delta = (draws.rand(*x0.shape) * 2 - 1) * eps
    elif norm == "l2":
        direction = l2_normalize(draws.randn(*x0.shape))
        radius = draws.rand(x0.shape[0]) * eps
        delta = direction * radius.view(-1, *([1] * (x0.dim() - 1)))
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return (x0 + delta).clamp(0.0, 1.0)


def ascent_step(x: torch.Tensor, grad: torch.Tensor, norm: str, step_size: float) -> torch.Tensor:
    """One steepest-ascent step of length ``step_size`` in the ``norm`` geometry: sign of the gradient (l_inf)
    or the l_2-normalised gradient (l_2). x, grad: (B, C, H, W). No projection (the caller projects)."""
    if norm == "linf":
        return x + step_size * grad.sign()
    if norm == "l2":
        return x + step_size * l2_normalize(grad)
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def eot_objective(state: AttackState, x: torch.Tensor, idx: torch.Tensor, obj: Objective
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objective averaged over ``eot`` forwards (Athalye et al.'s EOT: gradient of the mean = mean of the
    gradients over noise draws). x (B, C, H, W) must require grad. Costs ``eot`` queries per row.

    Returns (objective (B,) with graph, mean logits (B, K) detached, per-draw logits (eot, B, K) detached)."""
    logits = state.logits_with_grad(x, idx)  # (M, B, K)
    m, b, k = logits.shape
    value = obj(logits.reshape(m * b, k), state.y[idx].repeat(m)).view(m, b).mean(0)
    z = logits.detach()
    return value, z.mean(0), z


def pgd_loop(state: AttackState, obj: Objective, *, steps: int, step_size: float, restarts: int = 1,
             start_random: bool = True, early_stop: bool = True) -> None:
    """Projected gradient ascent on ``obj`` for all active samples together (Madry et al. 2018).

    Each step costs ``eot`` queries per sample. With ``early_stop`` a sample whose current iterate is
    misclassified by the mean logits of its own (charged) forward is offered to ``state.report``; the final
    iterate of each restart is offered too (it was never forwarded). Verified samples stop; the others keep
    their last iterate. A restart begins from a fresh random point for the samples still unbroken, drawn from
    each sample's own stream (``state.rng``), so a sample's starts do not depend on the other samples."""
    cfg = state.config
    cost = cfg.eot
    for restart in range(restarts):
        idx = state.active_idx(cost)
        if idx.numel() == 0:
            break
        x0 = state.x0[idx]
        x = random_start(x0, cfg.norm, cfg.eps, state.rng.rows(idx)) if start_random else x0.clone()
        for _ in range(steps):
            keep = torch.isin(idx, state.active_idx(cost))  # drops samples broken or out of budget
            if not bool(keep.all()):
                idx, x = idx[keep], x[keep]
            if idx.numel() == 0:
                break
            x.requires_grad_(True)
            value, z, _ = eot_objective(state, x, idx, obj)
            (grad,) = torch.autograd.grad(value.sum(), x)
            x = x.detach()
            if early_stop:
                state.report(x, idx, claimed=z.argmax(1) != state.y[idx])
            x = state.project(ascent_step(x, grad, cfg.norm, step_size), idx)
            state.keep(x, idx)
        if idx.numel():
            state.report(x, idx)
        log.debug("restart %d: %d broken so far", restart, int(state.success.sum()))


class WhiteBoxAttack(Attack):
    """Base of the gradient-based attacks (``access = "gradients"``): ``run`` needs a black box that
    ``supports_gradients`` (else :class:`~rfd.blackbox.base.GradientsUnavailable`); everything else (checks,
    clean majority vote, budgets, result) is the common :class:`Attack` machinery."""

    access = "gradients"
