"""Theorem 1 (paper Section 3.3, Appendix C): predicted vs measured probability that a random-search attacker
takes the wrong decision under randomized feature noise.

Setting. The attacker proposes ``u ~ N(0, mu I)`` (pixel units) and accepts it when the loss it observes
decreases. Undefended it sees ``dL = L(f(x+u)) - L(f(x))``; through the randomized model ``f_rand`` (noise
``delta ~ N(0, nu I)`` added at layer ``h``, fresh on every query) it sees
``dL_rand = L(f_rand(x+u)) - L(f_rand(x))`` from two independent noise draws. A *wrong decision* is
``(dL_rand < 0) != (dL < 0)``: accepting a bad step or rejecting a good one.

Prediction. To first order ``dL_rand - dL = grad_h . (delta_1 - delta_2)`` and ``dL = grad_x . u``, two independent
centred normals with variances ``2 nu ||grad_h||^2`` and ``mu ||grad_x||^2``; their ratio is Cauchy and::

    P(wrong) = 1/pi * arctan(-(2 nu ||grad_h||^2 / (mu ||grad_x||^2))^-0.5) + 1/2
             = 1/2 - 1/pi * arctan(sqrt(mu / (2 nu r))),   r = ||grad_h||^2 / ||grad_x||^2

which rises from 0 (no defense noise) to 1/2 (the attacker's feedback is a coin flip).

Measurement. For each image, layer, ``nu`` and ``mu``: ``draws`` proposals ``u`` (the same proposals for every
layer and ``nu``, so cells are compared on common random numbers), each judged through the real defended model
:func:`rfd.defenses.defend` (kind ``"feature"`` at the layer, or ``"input"`` for ``"input"``, ``sigma = sqrt(nu)``),
and through the clean model. The measured rate is the fraction of wrong decisions; it matches the prediction
while the first-order approximation holds (small ``mu`` and ``nu``, see :mod:`rfd.analysis.approx_error`).
Proposals are not clipped to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rfd.analysis.approx_error import input_loss_changes
from rfd.analysis.gradients import MarginGradients, check_eval_mode, margin_gradients, model_device
from rfd.analysis.sampling import child_seed, input_proposals, margin_rows
from rfd.analysis.stats import pearson, quantiles, spearman
from rfd.analysis.taps import INPUT, check_layer_names
from rfd.defenses import DefenseSpec, defend

__all__ = ["Theorem1Result", "defense_for_layer", "measure_flip_rate", "predicted_flip_probability", "theorem1"]


def predicted_flip_probability(
    ratio: torch.Tensor | float, nu: torch.Tensor | float, mu: torch.Tensor | float
) -> torch.Tensor:
    """Theorem 1's probability of a wrong decision, elementwise (broadcasting).

    Args:
        ratio: ``||grad_h||^2 / ||grad_x||^2`` (>= 0; ``inf`` gives 1/2).
        nu: variance of the defense noise at ``h`` (``sigma^2``, feature units squared; >= 0).
        mu: variance of the attacker's proposal per pixel (pixel units squared; > 0).

    Returns:
        ``1/pi * arctan(-(2 nu ratio / mu)^-0.5) + 1/2`` in [0, 1/2], as float64.
    """
    r = torch.as_tensor(ratio, dtype=torch.float64)
    n = torch.as_tensor(nu, dtype=torch.float64, device=r.device)
    m = torch.as_tensor(mu, dtype=torch.float64, device=r.device)
    if bool((n < 0).any()) or not bool((m > 0).all()):
        raise ValueError("need nu >= 0 (defense noise variance) and mu > 0 (attacker step variance)")
    if bool((r < 0).any()):
        raise ValueError("ratio ||grad_h||^2 / ||grad_x||^2 must be >= 0")
    s = 2.0 * n * r / m
    return torch.atan(-torch.rsqrt(s)) / math.pi + 0.5  # s = 0 -> rsqrt = inf -> probability 0


def defense_for_layer(layer: str, nu: float) -> DefenseSpec:
    """The defense whose noise variance at ``layer`` is ``nu``: input noise for ``"input"``, else feature noise."""
    if not nu >= 0:
        raise ValueError(f"nu must be >= 0, got {nu}")
    sigma = math.sqrt(nu)
    if layer == INPUT:
        return DefenseSpec(family="input", sigma=sigma)
    return DefenseSpec(family="feature", sigma=sigma, layers=(layer,))


@torch.no_grad()
def measure_flip_rate(
    defended: nn.Module, x: torch.Tensor, y: torch.Tensor, true_change: torch.Tensor, mu: float, *,
    draws: int, proposal_seed: int, batch_size: int,
) -> torch.Tensor:
    """Per image, the fraction of proposals judged wrongly through ``defended``.

    Args:
        defended: the randomized model (fresh noise per forward and per sample).
        x, y: images (N, C, H, W) and labels (N,) on the model's device.
        true_change: (N, D) ``L(f(x+u)) - L(f(x))`` of the clean model for the same proposals.
        mu, draws, proposal_seed, batch_size: replay the proposals of
            :func:`rfd.analysis.sampling.input_proposals` exactly.

    Returns:
        float64 (N,) rates in [0, 1].
    """
    wrong = torch.empty(x.shape[0], draws, dtype=torch.bool, device=x.device)
    for s, e, u in input_proposals(x, draws, mu, proposal_seed, batch_size):
        b = e - s
        yr = y[s:e].repeat_interleave(draws)
        moved = margin_rows(defended, (x[s:e, None] + u).flatten(0, 1), yr, batch_size)
        # The reference query is a separate forward: an independent noise draw (delta_2) per proposal.
        here = margin_rows(defended, x[s:e].repeat_interleave(draws, 0), yr, batch_size)
        wrong[s:e] = ((moved - here) < 0).view(b, draws) != (true_change[s:e] < 0)
    return wrong.double().mean(1)


@dataclass(frozen=True)
class Theorem1Result:
    """Predicted and measured wrong-decision probabilities on a grid.

    Attributes:
        layers, mus: grid axes (L,) and (M,).
        nus: layer -> its V defense variances (a shared grid, or per layer, e.g. multiples of a calibrated
            ``sigma^2``: layers live on different scales).
        draws: proposals per image and cell; seed: the seed of everything random.
        index: (N,) the images' indices in the caller's dataset; labels: (N,).
        ratio: layer -> (N,) ``||grad_h||^2 / ||grad_x||^2`` on the clean images.
        predicted, measured: float64 (L, V, M, N).
        approx_rel_error: (M,) median relative first-order error of the input-side loss change for each ``mu``.
        approx_sign_mismatch: (M,) fraction of proposals whose true change and ``grad_x . u`` differ in sign.
    """

    layers: tuple[str, ...]
    nus: dict[str, tuple[float, ...]]
    mus: tuple[float, ...]
    draws: int
    seed: int
    index: torch.Tensor
    labels: torch.Tensor
    ratio: dict[str, torch.Tensor]
    predicted: torch.Tensor
    measured: torch.Tensor
    approx_rel_error: torch.Tensor
    approx_sign_mismatch: torch.Tensor

    def correlations(self) -> dict[str, float]:
        """Pearson and Spearman correlation of predicted vs measured, over all (layer, nu, mu, image) cells and over
        the cell means (layer, nu, mu), plus the mean absolute gap over images."""
        p, m = self.predicted, self.measured
        pm, mm = p.mean(-1), m.mean(-1)
        return {
            "pearson": pearson(p, m), "spearman": spearman(p, m),
            "pearson_cell_means": pearson(pm, mm), "spearman_cell_means": spearman(pm, mm),
            "mean_abs_gap": float((p - m).abs().mean()),
            # Standard error of a measured rate from `draws` Bernoulli decisions, at its worst (p = 1/2).
            "binomial_se_max": 0.5 / math.sqrt(self.draws),
        }

    def cells(self) -> list[dict[str, Any]]:
        """One row per (layer, nu, mu): mean predicted and measured over the images."""
        rows = []
        for li, layer in enumerate(self.layers):
            for vi, nu in enumerate(self.nus[layer]):
                for mi, mu in enumerate(self.mus):
                    p, m = self.predicted[li, vi, mi], self.measured[li, vi, mi]
                    rows.append({
                        "layer": layer, "nu_index": vi, "nu": nu, "mu": mu, "sigma": math.sqrt(nu),
                        "predicted_mean": float(p.mean()), "measured_mean": float(m.mean()),
                        "mean_abs_gap": float((p - m).abs().mean()),
                        "approx_rel_error": float(self.approx_rel_error[mi]),
                        "approx_sign_mismatch": float(self.approx_sign_mismatch[mi]),
                    })
        return rows

    def rows(self) -> list[dict[str, Any]]:
        """One row per (layer, nu, mu, image), for CSV."""
        out = []
        for li, layer in enumerate(self.layers):
            r = self.ratio[layer]
            for vi, nu in enumerate(self.nus[layer]):
                for mi, mu in enumerate(self.mus):
                    p, m = self.predicted[li, vi, mi].tolist(), self.measured[li, vi, mi].tolist()
                    for i in range(len(p)):
                        out.append({"layer": layer, "nu": nu, "mu": mu, "image": int(self.index[i]),
                                    "label": int(self.labels[i]), "ratio": float(r[i]), "predicted": p[i],
                                    "measured": m[i]})
        return out

    def approx_breakdown(self, threshold: float = 0.5) -> float | None:
        """Smallest ``mu`` whose median relative first-order error exceeds ``threshold`` (None: never on the grid)."""
        for mu, e in zip(self.mus, self.approx_rel_error.tolist()):
            if e > threshold:
                return mu
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers), "nus": {k: list(v) for k, v in self.nus.items()}, "mus": list(self.mus),
            "draws": self.draws,
            "seed": self.seed, "images": int(self.index.numel()), "correlations": self.correlations(),
            "approx_breakdown_mu": self.approx_breakdown(),
            "approx": [{"mu": mu, "median_rel_error": float(e), "sign_mismatch": float(s)}
                       for mu, e, s in zip(self.mus, self.approx_rel_error, self.approx_sign_mismatch)],
            "cells": self.cells(),
        }


def _nu_grid(
    names: tuple[str, ...], nus: Sequence[float] | Mapping[str, Sequence[float]]
) -> dict[str, tuple[float, ...]]:
    if isinstance(nus, Mapping):
        missing = [n for n in names if n not in nus]
        if missing:
            raise ValueError(f"nus has no grid for layers {missing}")
        grid = {n: tuple(float(v) for v in nus[n]) for n in names}
    else:
        shared = tuple(float(v) for v in nus)
        grid = {n: shared for n in names}
    sizes = {len(g) for g in grid.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every layer needs a non-empty nu grid of the same length, got lengths {sorted(sizes)}")
    for n, g in grid.items():
        if not all(v > 0 and math.isfinite(v) for v in g):
            raise ValueError(f"nu (defense noise variance) must be finite and > 0; layer {n!r} has {list(g)}")
    return grid


def theorem1(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str],
    nus: Sequence[float] | Mapping[str, Sequence[float]], mus: Sequence[float], *, draws: int = 200, seed: int = 0,
    batch_size: int = 1024,
    index: torch.Tensor | None = None, grads: MarginGradients | None = None, progress: bool = False,
) -> Theorem1Result:
    """Predicted (Theorem 1) and measured wrong-decision rates for every image, layer, ``nu`` and ``mu``.

    Args:
        model: classifier in eval mode ([0, 1] images -> logits).
        x, y: images (N, C, H, W) and labels (N,).
        layers: ``"input"``, ``"penultimate"`` or module names.
        nus: defense noise variances ``sigma^2`` (feature units squared; pixel units for ``"input"``), each > 0:
            one grid for every layer, or a mapping layer -> grid (all grids of the same length).
        mus: attacker proposal variances (pixel units squared), each > 0.
        draws: proposals per image and cell (the measured rate's standard error is at most ``0.5/sqrt(draws)``).
        seed: seeds the proposals (per ``mu``) and the defense noise (per layer, ``nu``, ``mu``).
        batch_size: rows (image x draw) per forward.
        index: (N,) dataset indices of the images, kept for the output rows (default ``arange(N)``).
        grads: precomputed :func:`margin_gradients` at ``layers`` with ``keep_input_grad=True``.

    Cost: ``(1 + 2 L V) M N draws`` forwards.
    """
    check_eval_mode(model)
    names = check_layer_names(model, layers)
    grid = _nu_grid(names, nus)
    if not mus:
        raise ValueError("need at least one mu (attacker proposal variance)")
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    if grads is None or grads.grad_x is None or any(n not in grads.grad_h_norm for n in names):
        grads = margin_gradients(model, x, y, names, batch_size=min(batch_size, 128), keep_input_grad=True)
    assert grads.grad_x is not None
    ratio = {n: grads.ratio(n) for n in names}
    L, V, M, N = len(names), len(grid[names[0]]), len(mus), x.shape[0]
    predicted = torch.empty(L, V, M, N, dtype=torch.float64)
    measured = torch.empty_like(predicted)
    rel = torch.empty(M, dtype=torch.float64)
    mism = torch.empty(M, dtype=torch.float64)
    bar = tqdm(total=L * V * M, desc="theorem1", disable=not progress, leave=False)
    for mi, mu in enumerate(mus):
        pseed = child_seed(seed, "mu", float(mu))
        change, linear = input_loss_changes(model, x, y, grads.loss, grads.grad_x, float(mu), draws=draws, seed=pseed,
                                            batch_size=batch_size)
        rel[mi] = quantiles((change - linear).abs() / linear.abs(), (0.5,))[0]
        mism[mi] = float(((change < 0) != (linear < 0)).double().mean())
        for li, layer in enumerate(names):
            for vi, nu in enumerate(grid[layer]):
                dseed = child_seed(seed, "defense", layer, float(nu), float(mu)) % 2**31
                defended = defend(model, defense_for_layer(layer, float(nu)), seed=dseed)
                try:
                    measured[li, vi, mi] = measure_flip_rate(defended, x, y, change, float(mu), draws=draws,
                                                             proposal_seed=pseed, batch_size=batch_size).cpu()
                finally:
                    defended.remove()
                predicted[li, vi, mi] = predicted_flip_probability(ratio[layer].cpu(), float(nu), float(mu))
                bar.update()
    bar.close()
    idx = index.cpu() if index is not None else torch.arange(N)
    return Theorem1Result(
        layers=names, nus=grid, mus=tuple(float(m) for m in mus), draws=draws, seed=seed,
        index=idx, labels=y.cpu(), ratio={k: v.cpu() for k, v in ratio.items()}, predicted=predicted,
        measured=measured, approx_rel_error=rel, approx_sign_mismatch=mism,
    )
