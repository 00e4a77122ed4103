"""Robustness magnitude per layer at equal clean-accuracy cost (paper Section 3.5, Figures 2, 8, 9).

For each layer the defense noise ``sigma`` is calibrated (:func:`rfd.defenses.calibrate`, on the calibration
split) so that the expected clean accuracy drops by ``target_drop``; then, on the analysed images that the model
classifies correctly, the *robustness magnitude* is ``sigma * ||grad_h||`` -- the standard deviation of the
first-order loss change the defense noise causes (logit units). By Theorem 1 the attacker is misled more often
where it is large, so layers are compared at the same accuracy cost by their magnitude distributions.

Also reported, per layer (eq. 13-14): the margin-to-gradient ratio ``L(x) / ||grad_h||``, whose low quantile
sets how much noise the layer tolerates, and the first-order accuracy prediction
``mean_i Phi(L_i / (sigma ||grad_h,i||))`` over all analysed images (misclassified ones have ``L < 0``), to compare
with the calibrated accuracy (the calibration split and the analysed images differ, so only roughly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rfd.analysis.gradients import MarginGradients, check_eval_mode, margin_gradients, model_device
from rfd.analysis.stats import describe
from rfd.analysis.taps import INPUT, check_layer_names
from rfd.defenses import DefenseSpec, calibrate

__all__ = ["MagnitudeResult", "calibrate_layers", "calibrated_nus", "robustness_magnitude"]


def calibrate_layers(
    model: nn.Module, layers: Sequence[str], target_drop: float, calib_x: torch.Tensor, calib_y: torch.Tensor, *,
    seed: int = 0, draws: int = 10, tol: float = 0.002, batch_size: int = 256, progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per layer, the noise std that costs ``target_drop`` clean accuracy on the calibration images.

    ``"input"`` calibrates input noise (pixel units), any other layer unscaled feature noise (feature units).
    Returns layer -> :meth:`rfd.defenses.CalibrationResult.to_dict` (without the history)."""
    out: dict[str, dict[str, Any]] = {}
    for layer in tqdm(list(layers), desc="calibrate layers", disable=not progress, leave=False):
        spec = (DefenseSpec(family="input", drop=target_drop) if layer == INPUT
                else DefenseSpec(family="feature", layers=(layer,), drop=target_drop))
        res = calibrate(model, spec, calib_x, calib_y, draws=draws, tol=tol, seed=seed,
                        batch_size=batch_size)
        out[layer] = {k: v for k, v in res.to_dict().items() if k != "history"}
    return out


def calibrated_nus(calibration: Mapping[str, Mapping[str, Any]], scales: Sequence[float]) -> dict[str, list[float]]:
    """Per layer the variances ``scale * sigma^2`` around its calibrated sigma (layers live on different scales,
    so a grid shared by all layers would compare unlike noise levels)."""
    if not scales or not all(s > 0 for s in scales):
        raise ValueError(f"variance scales must be > 0, got {list(scales)}")
    return {n: [float(s) * float(c["sigma"]) ** 2 for s in scales] for n, c in calibration.items()}


@dataclass(frozen=True)
class MagnitudeResult:
    """Calibrated sigmas and per-image robustness magnitudes.

    Attributes:
        layers: the layers (L,); target_drop: the accuracy cost every sigma was calibrated to.
        calibration: layer -> calibration numbers (``sigma``, ``accuracy``, ``base_accuracy``, ``drop``, ...).
        index: (N,) dataset indices of the analysed images; labels: (N,).
        grads: margin loss and gradient norms of the analysed images.
    """

    layers: tuple[str, ...]
    target_drop: float
    calibration: dict[str, dict[str, Any]]
    index: torch.Tensor
    labels: torch.Tensor
    grads: MarginGradients

    def sigma(self, layer: str) -> float:
        return float(self.calibration[layer]["sigma"])

    @property
    def correct(self) -> torch.Tensor:
        return self.grads.correct.cpu()

    def magnitude(self, layer: str) -> torch.Tensor:
        """(M,) ``sigma * ||grad_h||`` over the correctly classified images (logit units)."""
        return self.sigma(layer) * self.grads.grad_h_norm[layer].cpu()[self.correct]

    def margin_ratio(self, layer: str) -> torch.Tensor:
        """(M,) ``L(x) / ||grad_h||`` over the correctly classified images (feature units)."""
        c = self.correct
        return self.grads.loss.cpu()[c] / self.grads.grad_h_norm[layer].cpu()[c]

    def predicted_accuracy(self, layer: str) -> float:
        """First-order expected accuracy at the calibrated sigma over all analysed images (eq. 14)."""
        z = self.grads.loss.cpu().double() / (self.sigma(layer) * self.grads.grad_h_norm[layer].cpu().double())
        return float((0.5 * (1 + torch.erf(z / math.sqrt(2)))).mean())

    def summary(self) -> dict[str, Any]:
        per_layer = []
        for n in self.layers:
            cal = self.calibration[n]
            per_layer.append({
                "layer": n, "sigma": cal["sigma"], "calib_accuracy": cal["accuracy"],
                "calib_base_accuracy": cal["base_accuracy"], "calib_drop": cal["drop"],
                "calib_converged": cal["converged"], "magnitude": describe(self.magnitude(n)),
                "margin_ratio": describe(self.margin_ratio(n)),
                "predicted_accuracy": self.predicted_accuracy(n),
            })
        return {"target_drop": self.target_drop, "images": int(self.index.numel()),
                "correct": int(self.correct.sum()), "analysed_accuracy": float(self.correct.double().mean()),
                "layers": per_layer}

    def rows(self) -> list[dict[str, Any]]:
        """One row per (correct image, layer) for CSV."""
        c = self.correct
        idx, lab = self.index[c].tolist(), self.labels[c].tolist()
        loss = self.grads.loss.cpu()[c].tolist()
        out = []
        for n in self.layers:
            g = self.grads.grad_h_norm[n].cpu()[c].tolist()
            mag = self.magnitude(n).tolist()
            for i in range(len(idx)):
                out.append({"image": idx[i], "label": lab[i], "layer": n, "sigma": self.sigma(n), "loss": loss[i],
                            "grad_h_norm": g[i], "magnitude": mag[i], "margin_ratio": loss[i] / g[i] if g[i] else
                            float("inf")})
        return out


def robustness_magnitude(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str], *, target_drop: float,
    calib_x: torch.Tensor, calib_y: torch.Tensor, seed: int = 0, calib_draws: int = 10, calib_tol: float = 0.002,
    calibration: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 128,
    index: torch.Tensor | None = None, progress: bool = False,
) -> MagnitudeResult:
    """Calibrate sigma per layer to ``target_drop`` and compute the robustness magnitudes on ``x``.

    Args:
        model: classifier in eval mode.
        x, y: analysed images (N, C, H, W) in [0, 1] and labels (N,) -- the evaluation split.
        layers: ``"input"``, ``"penultimate"`` or module names.
        target_drop: absolute clean-accuracy drop, e.g. 0.02.
        calib_x, calib_y: the calibration split (disjoint from ``x``).
        seed, calib_draws, calib_tol: calibration noise seed, draws per sigma, tolerance on the drop.
        calibration: precomputed :func:`calibrate_layers` output for these layers (skips calibrating).
        batch_size: images per gradient pass.
        index: (N,) dataset indices for the output rows.
    """
    check_eval_mode(model)
    names = check_layer_names(model, layers)
    if calibration is None:
        cal = calibrate_layers(model, names, target_drop, calib_x, calib_y, seed=seed, draws=calib_draws,
                               tol=calib_tol, progress=progress)
    else:
        missing = [n for n in names if n not in calibration]
        if missing:
            raise ValueError(f"calibration lacks layers {missing}")
        cal = {n: dict(calibration[n]) for n in names}
    dev = model_device(model)
    grads = margin_gradients(model, x.to(dev), y.to(dev), names, batch_size=batch_size, progress=progress)
    idx = index.cpu() if index is not None else torch.arange(x.shape[0])
    return MagnitudeResult(layers=names, target_drop=float(target_drop), calibration=cal, index=idx,
                           labels=y.cpu(), grads=grads)
