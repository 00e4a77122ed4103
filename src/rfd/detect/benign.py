"""Benign traffic for detector thresholds and false-positive rates: distinct images, and benign users who re-send
slightly changed copies (a shift of 1-2 pixels, a brightness change, a coarser rounding), as real clients do."""

from __future__ import annotations

import torch

from rfd.data.checks import check_images
from rfd.detect.base import Detector

__all__ = ["changed_copies", "false_positive_rate", "resend_stream"]


def changed_copies(images: torch.Tensor, *, seed: int) -> torch.Tensor:
    """One slightly changed copy (N, C, H, W) in [0, 1] of each image: at random (seeded) a shift by 1-2 pixels in
    each direction (edges replicated), a brightness factor in [0.9, 1.1], or rounding to a 1/32 grid."""
    check_images(images)
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    kind = torch.randint(0, 3, (n,), generator=g)
    shift = torch.randint(-2, 3, (n, 2), generator=g)
    gain = 0.9 + 0.2 * torch.rand(n, generator=g)
    out = images.clone()
    x = images.cpu()
    for k in range(n):  # one small change per image; n is a benign stream's length, not a hot loop
        if kind[k] == 0:
            dy, dx = int(shift[k, 0]), int(shift[k, 1])
            if dy == 0 and dx == 0:
                dx = 1
            pad = torch.nn.functional.pad(x[k: k + 1], (2, 2, 2, 2), mode="replicate")
            h, w = x.shape[2], x.shape[3]
            out[k] = pad[0, :, 2 - dy: 2 - dy + h, 2 - dx: 2 - dx + w].to(out.device)
        elif kind[k] == 1:
            out[k] = (images[k] * float(gain[k])).clamp(0.0, 1.0)
        else:
            out[k] = torch.round(images[k] * 32) / 32
    return out


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
