"""Gradient-norm ratios per layer on clean images and after one step toward the adversary (paper Figure 1,
Figures 4-7, Table 14's "change of ratio", Table 6's mean gradient norm).

The step simulates an attacker one move into its search: it descends the margin loss ``L`` once,

- ``norm="l2"``:   ``x' = clip(x - size * grad_x / ||grad_x||_2, 0, 1)``  (an l2 move of length ``size``)
- ``norm="linf"``: ``x' = clip(x - size * sign(grad_x), 0, 1)``          (an FGSM-like move of ``size`` per pixel)

with ``grad_x = dL/dx`` at the clean image (pixel units). Ratios ``r = ||grad_h||^2 / ||grad_x||^2`` are then
measured at ``x`` and at ``x'``. By Theorem 1 a larger ``r`` means a larger chance that the attacker misjudges a
proposal, so a ratio that grows during the attack means a defense at that layer gets stronger as the attack
proceeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from rfd.analysis.gradients import MarginGradients, check_eval_mode, margin_gradients, model_device
from rfd.analysis.stats import describe
from rfd.analysis.taps import check_layer_names

__all__ = ["RatioResult", "StepConfig", "adversarial_step", "gradient_ratios"]


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """One descent step of the margin loss, the simulated attacker's move."""

    norm: Literal["l2", "linf"] = "l2"  # geometry of the step
    size: float = 0.5  # l2 length (norm="l2") or per-pixel size (norm="linf"), pixel units

    def __post_init__(self) -> None:
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"step norm must be 'l2' or 'linf', got {self.norm!r}")
        if not (isinstance(self.size, (int, float)) and self.size > 0):
            raise ValueError(f"step size must be > 0 (pixel units), got {self.size!r}")


def adversarial_step(x: torch.Tensor, grad_x: torch.Tensor, step: StepConfig) -> torch.Tensor:
    """``x`` (N, C, H, W) moved one step against ``grad_x`` (same shape), clipped to [0, 1] (see module doc).

    Images whose gradient is exactly zero are left where they are."""
    if step.norm == "l2":
        norm = grad_x.flatten(1).norm(dim=1).clamp_min(torch.finfo(grad_x.dtype).tiny)
        move = grad_x / norm.view(-1, *([1] * (x.dim() - 1)))
    else:
        move = grad_x.sign()
    return (x - step.size * move).clamp(0.0, 1.0)


@dataclass(frozen=True)
class RatioResult:
    """Per-image gradient norms and ratios before and after the step.

    Attributes:
        layers: the layers (L,).
        step: the step used.
        index: (N,) dataset indices of the analysed images; labels: (N,).
        before, after: :class:`MarginGradients` at the clean and at the stepped images.
    """

    layers: tuple[str, ...]
    step: StepConfig
    index: torch.Tensor
    labels: torch.Tensor
    before: MarginGradients
    after: MarginGradients

    def ratios(self, phase: Literal["before", "after"]) -> dict[str, torch.Tensor]:
        g = self.before if phase == "before" else self.after
        return {n: g.ratio(n).cpu() for n in self.layers}

    def change(self) -> dict[str, torch.Tensor]:
        """layer -> (N,) ``r_after / r_before`` per image (Table 14's change of ratio, before averaging)."""
        b, a = self.ratios("before"), self.ratios("after")
        return {n: a[n] / b[n] for n in self.layers}

    def summary(self) -> dict[str, Any]:
        """Per layer: distribution of the ratio before/after, mean and median change, mean gradient norm."""
        b, a, c = self.ratios("before"), self.ratios("after"), self.change()
        per_layer = []
        for n in self.layers:
            per_layer.append({
                "layer": n, "ratio_before": describe(b[n]), "ratio_after": describe(a[n]),
                "change_mean": describe(c[n])["mean"], "change_median": describe(c[n])["median"],
                "grad_norm_mean": float(self.before.grad_h_norm[n].mean()),
                "grad_norm_after_mean": float(self.after.grad_h_norm[n].mean()),
            })
        return {
            "images": int(self.index.numel()), "step": {"norm": self.step.norm, "size": self.step.size},
            "loss_before_mean": float(self.before.loss.mean()), "loss_after_mean": float(self.after.loss.mean()),
            "fooled_by_step": float((self.after.loss <= 0).double().mean()),
            "layers": per_layer,
        }

    def rows(self) -> list[dict[str, Any]]:
        """One row per (image, layer, phase) for CSV."""
        out = []
        for phase, g in (("before", self.before), ("after", self.after)):
            loss, gx = g.loss.tolist(), g.grad_x_norm.tolist()
            for n in self.layers:
                gh, r = g.grad_h_norm[n].tolist(), g.ratio(n).tolist()
                for i in range(len(loss)):
                    out.append({"image": int(self.index[i]), "label": int(self.labels[i]), "layer": n,
                                "phase": phase, "loss": loss[i], "grad_x_norm": gx[i], "grad_h_norm": gh[i],
                                "ratio": r[i]})
        return out


def gradient_ratios(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str], *, step: StepConfig | None = None,
    batch_size: int = 128, index: torch.Tensor | None = None, progress: bool = False,
) -> RatioResult:
    """Gradient norms and ratios at ``layers`` on ``x`` and after one step toward the adversary.

    Args:
        model: classifier in eval mode.
        x, y: images (N, C, H, W) in [0, 1] and labels (N,) (usually the correctly classified ones).
        layers: ``"input"``, ``"penultimate"`` or module names.
        step: the simulated attacker's step (default :class:`StepConfig`()).
        batch_size: images per forward/backward.
        index: (N,) dataset indices for the output rows (default ``arange(N)``).
    """
    check_eval_mode(model)
    names = check_layer_names(model, layers)
    step = step if step is not None else StepConfig()
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    before = margin_gradients(model, x, y, names, batch_size=batch_size, keep_input_grad=True, progress=progress)
    assert before.grad_x is not None
    x_step = adversarial_step(x, before.grad_x, step)
    after = margin_gradients(model, x_step, y, names, batch_size=batch_size, progress=progress)
    idx = index.cpu() if index is not None else torch.arange(x.shape[0])
    return RatioResult(layers=names, step=step, index=idx, labels=y.cpu(), before=before, after=after)
