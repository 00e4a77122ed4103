"""Validation of the image and label contract: float32 (N, C, H, W) in [0, 1], int64 labels (N,)."""

from __future__ import annotations

import torch

__all__ = ["check_images", "check_images_labels", "check_labels"]


def check_images(x: object, name: str = "images") -> torch.Tensor:
    """Return ``x`` unchanged if it is a float32 tensor of shape (N, C, H, W) with values in [0, 1].

    Raises:
        ValueError: naming ``name`` and saying exactly what is wrong (type, dtype, shape, NaN, range).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(
            f"{name} must have dtype float32 with values in [0, 1], got {x.dtype}"
            + (" (convert uint8 images with x.float() / 255)" if x.dtype == torch.uint8 else "")
        )
    if x.dim() != 4:
        raise ValueError(f"{name} must have 4 dimensions (N, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return x


def check_labels(y: object, n: int | None = None, num_classes: int | None = None, name: str = "labels") -> torch.Tensor:
    """Return ``y`` unchanged if it is an int64 tensor of shape (n,) with values in [0, num_classes)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N,), got {type(y).__name__}")
    if y.dtype != torch.int64:
        raise ValueError(f"{name} must have dtype int64, got {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but there are {n} images")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {int(y.min())}")
    if num_classes is not None and y.numel() and int(y.max()) >= num_classes:
        raise ValueError(f"{name} must be < {num_classes}, got maximum {int(y.max())}")
    return y


def check_images_labels(x: object, y: object, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch of images with its labels; see :func:`check_images` and :func:`check_labels`."""
    xi = check_images(x)
    return xi, check_labels(y, n=xi.shape[0], num_classes=num_classes)
