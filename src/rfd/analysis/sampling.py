"""Seeded random proposals in input space and batched margin-loss evaluation over (image, draw) rows.

Rows are image-major: row ``i * D + j`` is draw ``j`` of image ``i``. Every draw comes from an explicit
``torch.Generator``; the numbers depend only on the seed, the shapes and ``batch_size`` (which fixes how the
generator is consumed chunk by chunk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import nn

from rfd.blackbox.losses import margin_loss

__all__ = ["child_seed", "images_per_chunk", "input_proposals", "margin_rows"]


def child_seed(seed: int, *keys: object) -> int:
    """A seed derived from ``seed`` and ``keys`` (stable across runs and Python versions, unlike ``hash``).

    Used so that, e.g., the proposals for one ``mu`` do not depend on which other ``mu`` values are in the grid."""
    h = hashlib.sha256(repr((int(seed),) + tuple(str(k) for k in keys)).encode()).digest()
    return int.from_bytes(h[:7], "little")


def images_per_chunk(draws: int, batch_size: int) -> int:
    """Images whose ``draws`` rows fit in one chunk of about ``batch_size`` rows (at least one image)."""
    return max(1, batch_size // max(1, draws))


def input_proposals(
    x: torch.Tensor, draws: int, mu: float, seed: int, batch_size: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Attacker proposals ``u ~ N(0, mu I)`` (pixel units), chunk by chunk.

    Yields ``(start, end, u)`` with ``u`` of shape (end - start, draws, C, H, W) for images ``x[start:end]``.
    The same ``(x.shape, draws, mu, seed, batch_size)`` give the same numbers, so two passes (e.g. through the
    model and through its defended copy) see identical proposals."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if not mu > 0:
        raise ValueError(f"mu (variance of the attacker's step, pixel units^2) must be > 0, got {mu}")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    std = float(mu) ** 0.5
    step = images_per_chunk(draws, batch_size)
    for s in range(0, x.shape[0], step):
        e = min(s + step, x.shape[0])
        u = torch.randn((e - s, draws) + tuple(x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
        yield s, e, u.mul_(std)


@torch.no_grad()
def margin_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Margin loss (R,) of ``model`` on rows ``x`` (R, C, H, W) with labels ``y`` (R,), ``batch_size`` rows per call."""
    parts = [margin_loss(model(x[s:s + batch_size]), y[s:s + batch_size])
             for s in range(0, x.shape[0], batch_size)]
    return torch.cat(parts)
