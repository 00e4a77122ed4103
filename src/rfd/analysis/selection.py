"""Choosing the images an analysis runs on: a seeded class-balanced subset, optionally only the correct ones."""

from __future__ import annotations

import torch
from torch import nn

from rfd.analysis.gradients import check_eval_mode, model_device
from rfd.data.checks import check_images_labels
from rfd.data.selection import balanced_indices

__all__ = ["select_images"]


@torch.no_grad()
def select_images(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, n: int | None, *, seed: int = 0,
    correct_only: bool = True, batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick ``n`` class-balanced images (all when ``n`` is None or covers the pool) and keep, if asked, those the
    clean ``model`` classifies correctly (an attacker only attacks those).

    Returns:
        ``(x, y, index)``: images (M, C, H, W), labels (M,) and their indices (M,) into ``images``; ``M <= n``.

    Raises:
        ValueError: bad images/labels, ``n < 1``, or no image left after filtering.
    """
    check_images_labels(images, labels)
    check_eval_mode(model)
    if n is None or n >= labels.shape[0]:
        idx = torch.arange(labels.shape[0])
    else:
        idx = balanced_indices(labels, n, seed=seed)
    idx = idx.sort().values
    x, y = images[idx], labels[idx]
    if correct_only:
        dev = model_device(model)
        pred = torch.cat([model(x[s:s + batch_size].to(dev)).argmax(1).cpu() for s in range(0, x.shape[0], batch_size)])
        keep = pred == y
        if not bool(keep.any()):
            raise ValueError(f"the model misclassifies all {x.shape[0]} selected images; nothing to analyse")
        x, y, idx = x[keep], y[keep], idx[keep]
    return x, y, idx
