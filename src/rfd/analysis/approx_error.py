"""Error of the first-order approximations behind Theorem 1 (paper appendix C.1 / F.1, Figure 3).

Input side (eq. 16), for an attacker proposal ``u ~ N(0, mu I)`` in pixel units::

    error = |L(f(x + u)) - L(f(x)) - grad_x . u|

Feature side (eq. 17), for a defense perturbation ``delta ~ N(0, nu I)`` added at layer ``h`` (at every call of
the module)::

    error = |L(g(h(x) + delta)) - L(f(x)) - grad_h . delta|

``relative`` divides by the first-order term ``|grad . u|`` (resp. ``|grad_h . delta|``): the approximation is
good while it is well below 1. ``sign_mismatch`` is the fraction of draws whose true loss change and first-order
term have opposite signs -- what matters for the attacker's accept/reject decision, hence for Theorem 1.
The approximation breaks as ``mu`` (or ``nu``) grows; :meth:`ApproxErrorResult.breakdown` reports the first
variance at which the median relative error exceeds a threshold.

Proposals are not clipped to [0, 1]: the theorem is about Gaussian steps around ``x``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from rfd.analysis.gradients import MarginGradients, check_eval_mode, margin_gradients, model_device
from rfd.analysis.sampling import child_seed, input_proposals, margin_rows
from rfd.analysis.stats import quantiles
from rfd.analysis.taps import INPUT, TapFn, check_layer_names, tap_layers

__all__ = ["ApproxErrorResult", "feature_approx_error", "input_approx_error", "input_loss_changes"]


@dataclass(frozen=True)
class ApproxErrorResult:
    """First-order errors over a grid of noise variances at one place of the model.

    Attributes:
        layer: ``"input"`` (attacker proposals, variance ``mu``) or a hidden layer (defense noise, variance ``nu``).
        variances: the grid (V,).
        error: (V, N, D) absolute errors (logit units).
        linear: (V, N, D) first-order terms ``grad . u``.
        change: (V, N, D) true loss changes.
    """

    layer: str
    variances: tuple[float, ...]
    error: torch.Tensor
    linear: torch.Tensor
    change: torch.Tensor

    @property
    def relative(self) -> torch.Tensor:
        """(V, N, D) error / |first-order term| (inf where the term is exactly 0)."""
        return self.error / self.linear.abs()

    @property
    def sign_mismatch(self) -> torch.Tensor:
        """(V,) fraction of draws where the true change and the first-order term disagree in sign."""
        return ((self.change < 0) != (self.linear < 0)).float().flatten(1).mean(1)

    def summary(self) -> list[dict[str, float]]:
        """One dict per variance: median/p90 absolute and relative error, sign mismatch rate."""
        rows = []
        mism = self.sign_mismatch
        for v, var in enumerate(self.variances):
            err = self.error[v].flatten()
            rel = self.relative[v].flatten()
            q_err = quantiles(err, (0.5, 0.9))
            q_rel = quantiles(rel, (0.5, 0.9))
            rows.append({
                "layer": self.layer, "variance": float(var), "std": float(var) ** 0.5,
                "median_abs_error": q_err[0], "p90_abs_error": q_err[1],
                "median_rel_error": q_rel[0], "p90_rel_error": q_rel[1],
                "median_abs_change": quantiles(self.change[v].abs().flatten(), (0.5,))[0],
                "sign_mismatch": float(mism[v]),
            })
        return rows

    def breakdown(self, threshold: float = 0.5) -> float | None:
        """The smallest variance whose median relative error exceeds ``threshold`` (None if none does)."""
        for row in self.summary():
            if row["median_rel_error"] > threshold:
                return row["variance"]
        return None


def input_loss_changes(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, grad_x: torch.Tensor, mu: float, *,
    draws: int, seed: int, batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """True loss changes ``L(f(x+u)) - L(f(x))`` and first-order terms ``grad_x . u``, both (N, D).

    ``u`` comes from :func:`rfd.analysis.sampling.input_proposals` with the same arguments, so callers can replay
    the identical proposals through a defended model."""
    change = torch.empty(x.shape[0], draws, device=x.device)
    linear = torch.empty_like(change)
    for s, e, u in input_proposals(x, draws, mu, seed, batch_size):
        rows = (x[s:e, None] + u).flatten(0, 1)
        yr = y[s:e].repeat_interleave(draws)
        change[s:e] = margin_rows(model, rows, yr, batch_size).view(e - s, draws) - loss[s:e, None]
        linear[s:e] = (u.flatten(2) * grad_x[s:e].flatten(1)[:, None]).sum(2)
    return change, linear


def input_approx_error(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, mus: Sequence[float], *, draws: int = 64, seed: int = 0,
    batch_size: int = 1024, grads: MarginGradients | None = None, progress: bool = False,
) -> ApproxErrorResult:
    """First-order error of the loss in input space for attacker proposals ``u ~ N(0, mu I)``, each ``mu``.

    Args:
        model: classifier in eval mode.
        x, y: images (N, C, H, W) in [0, 1] and labels (N,).
        mus: variances of the proposals (pixel units squared), each > 0.
        draws: proposals per image and ``mu``.
        seed: seed of the proposals (each ``mu`` gets its own derived stream).
        batch_size: rows (image x draw) per forward.
        grads: precomputed :func:`margin_gradients` with ``keep_input_grad=True`` for these images (else computed).
    """
    check_eval_mode(model)
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    if grads is None or grads.grad_x is None:
        grads = margin_gradients(model, x, y, (), batch_size=batch_size, keep_input_grad=True)
    assert grads.grad_x is not None
    err, lin, chg = [], [], []
    for mu in tqdm(list(mus), desc="approx-error input", disable=not progress, leave=False):
        c, l_ = input_loss_changes(model, x, y, grads.loss, grads.grad_x, float(mu), draws=draws,
                                   seed=child_seed(seed, "mu", float(mu)), batch_size=batch_size)
        err.append((c - l_).abs())
        lin.append(l_)
        chg.append(c)
    return ApproxErrorResult(INPUT, tuple(float(m) for m in mus), torch.stack(err), torch.stack(lin), torch.stack(chg))


def _gaussian_offsets(gen: torch.Generator, std: float, record: list[torch.Tensor]) -> TapFn:
    """A tap adding ``std * N(0, 1)`` noise drawn from ``gen`` and recording each draw in ``record``."""

    def add(_name: str, _call: int, value: torch.Tensor) -> torch.Tensor:
        d = torch.randn(value.shape, generator=gen, device=value.device, dtype=value.dtype).mul_(std)
        record.append(d)
        return value + d

    return add


def feature_approx_error(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str, nus: Sequence[float], *, draws: int = 64,
    seed: int = 0, batch_size: int = 1024, progress: bool = False,
) -> ApproxErrorResult:
    """First-order error of the loss for a perturbation ``delta ~ N(0, nu I)`` added at hidden ``layer``.

    ``delta`` is drawn here (from a generator seeded by ``seed``, ``layer`` and ``nu``), not by the defense, because
    the first-order term needs its value; it is added at exactly the defense's place (see :mod:`rfd.analysis.taps`).
    """
    check_eval_mode(model)
    if layer == INPUT:
        raise ValueError("feature_approx_error needs a hidden layer; use input_approx_error for the input")
    check_layer_names(model, (layer,))
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    grads = margin_gradients(model, x, y, (layer,), batch_size=batch_size, keep_grads=True)
    gh = grads.grad_h[layer]  # list over calls of (N, *feature)
    n = x.shape[0]
    step = max(1, batch_size // draws)
    err, lin, chg = [], [], []
    for nu in tqdm(list(nus), desc=f"approx-error {layer}", disable=not progress, leave=False):
        if not nu > 0:
            raise ValueError(f"nu (variance of the feature noise) must be > 0, got {nu}")
        std = float(nu) ** 0.5
        gen = torch.Generator(device=dev).manual_seed(child_seed(seed, "nu", layer, float(nu)))
        change = torch.empty(n, draws, device=dev)
        linear = torch.zeros_like(change)
        for s in range(0, n, step):
            e = min(s + step, n)
            deltas: list[torch.Tensor] = []
            add_delta = _gaussian_offsets(gen, std, deltas)

            rows = x[s:e].repeat_interleave(draws, 0)
            yr = y[s:e].repeat_interleave(draws)
            with tap_layers(model, (layer,), add_delta):
                loss = margin_rows(model, rows, yr, rows.shape[0])  # one forward: calls map 1:1 to gh
            if len(deltas) != len(gh):
                raise ValueError(f"layer {layer!r} was called {len(deltas)} times here but {len(gh)} times before")
            for d, g in zip(deltas, gh):
                g_rows = g[s:e].repeat_interleave(draws, 0)
                linear[s:e] += (d.flatten(1) * g_rows.flatten(1)).sum(1).view(e - s, draws)
            change[s:e] = loss.view(e - s, draws) - grads.loss[s:e, None]
        err.append((change - linear).abs())
        lin.append(linear)
        chg.append(change)
    return ApproxErrorResult(layer, tuple(float(v) for v in nus), torch.stack(err), torch.stack(lin),
                             torch.stack(chg))
