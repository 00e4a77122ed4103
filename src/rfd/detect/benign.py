"""Benign traffic for detector thresholds and false-positive rates: distinct images, and benign users who re-send
slightly changed copies (a shift of 1-2 pixels, a brightness change, a coarser rounding), as real clients do."""

from __future__ import annotations

import torch

from rfd.data.checks import check_images
from rfd.detect.base import Detector

__all__ = ["changed_copies", "false_positive_rate", "resend_stream"]


def changed_copies(images: torch.Tensor, *, seed: int) -> torch.Tensor:
    """One slightly changed copy (N, C, H, W) in [0, 1] of each image (N, C, H, W) in [0, 1], on its device.

    Each image gets one change, drawn (seeded, a CPU ``torch.Generator``) with equal odds: a shift by
    (dy, dx), each in -2..2 pixels and not both 0, with the edges replicated (the copy's pixel (i, j) is the
    original's (i - dy, j - dx), clamped to the image); a brightness factor uniform in [0.9, 1.1] (clipped to
    [0, 1]); or rounding to a grid of 1/32 (a coarser re-encoding, as JPEG-like compression does)."""
    check_images(images)
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    dev = images.device
    kind = torch.randint(0, 3, (n,), generator=g).to(dev)
    shift = torch.randint(-2, 3, (n, 2), generator=g)
    shift[:, 1] += (shift == 0).all(1).long()  # (0, 0) is no change: shift one pixel right instead
    gain = (0.9 + 0.2 * torch.rand(n, generator=g)).to(dev)
    shift = shift.to(dev)
    # the shift as two gathers with clamped indices (replicate padding), all images at once
    rows = (torch.arange(h, device=dev).view(1, h) - shift[:, :1]).clamp(0, h - 1)  # (N, H)
    cols = (torch.arange(w, device=dev).view(1, w) - shift[:, 1:]).clamp(0, w - 1)  # (N, W)
    moved = images.gather(2, rows.view(n, 1, h, 1).expand_as(images))
    moved = moved.gather(3, cols.view(n, 1, 1, w).expand_as(images))
    bright = (images * gain.view(n, 1, 1, 1)).clamp(0.0, 1.0)
    coarse = torch.round(images * 32) / 32
    k = kind.view(n, 1, 1, 1)
    return torch.where(k == 0, moved, torch.where(k == 1, bright, coarse))


def resend_stream(images: torch.Tensor, *, copies: int = 1, seed: int) -> torch.Tensor:
    """A benign stream in which every image is sent, and later ``copies`` changed copies of it, at random
    (seeded) positions after it: ((1 + copies) N, C, H, W)."""
    parts = [images] + [changed_copies(images, seed=seed + 1 + c) for c in range(copies)]
    owner = torch.arange(images.shape[0]).repeat(1 + copies)
    version = torch.arange(1 + copies).repeat_interleave(images.shape[0])
    g = torch.Generator().manual_seed(seed)
    # random order in which each image's original comes before its copies: sort by (random key of the image's
    # first appearance + random delay per copy)
    start = torch.rand(images.shape[0], generator=g)[owner]
    delay = torch.rand(owner.numel(), generator=g) * (version > 0)
    order = torch.argsort(start + delay, stable=True)
    return torch.cat(parts)[order.to(images.device)]


def false_positive_rate(detector: Detector, stream: torch.Tensor, *, account: str = "benign",
                        batch: int = 256) -> float:
    """The fraction of a benign ``stream`` (N, C, H, W), sent in order as one fresh account, that ``detector``
    flags; the account is reset before and after."""
    detector.reset(account)
    flagged = 0
    try:
        for i in range(0, stream.shape[0], batch):
            rows = stream[i: i + batch]
            flagged += int(detector.check(rows, [account] * rows.shape[0]).sum())
    finally:
        detector.reset(account)
    return flagged / max(stream.shape[0], 1)
