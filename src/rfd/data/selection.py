"""Seeded, class-balanced selection of evaluation images (the paper's 1000 images covering every class)."""

from __future__ import annotations

import torch

__all__ = ["balanced_indices"]


def balanced_indices(
    labels: torch.Tensor, n: int, *, seed: int = 0, num_classes: int | None = None, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Pick ``n`` indices covering every class as equally as possible, deterministically for ``seed``.

    Each class gets ``n // K`` images; the ``n % K`` remaining slots go to the classes that come first in a
    seeded permutation of the classes. Within a class, images are drawn by a seeded permutation.

    Args:
        labels: int64 (N,) labels of the pool.
        n: number of images wanted (``>= 1``).
        seed: seed of the draw; same seed, same indices.
        num_classes: number of classes K (default: ``labels.max() + 1``).
        exclude: int64 indices that must not be chosen (e.g. the calibration split).

    Returns:
        int64 (n,) indices into ``labels``, sorted by class then draw order.

    Raises:
        ValueError: if ``n`` is not positive or some class has too few images.
    """
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64 of shape (N,), got {labels.dtype} {tuple(labels.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.ones(labels.shape[0], dtype=torch.bool)
    if exclude is not None:
        allowed[exclude] = False
    per_class = torch.full((k,), n // k, dtype=torch.int64)
    extra = torch.randperm(k, generator=gen)[: n % k]
    per_class[extra] += 1
    chosen = []
    for c in range(k):  # K classes, not N images: a loop over classes is fine here
        pool = torch.nonzero((labels == c) & allowed).flatten()
        want = int(per_class[c])
        if pool.numel() < want:
            raise ValueError(f"class {c} has {pool.numel()} available images, {want} needed for n={n}")
        chosen.append(pool[torch.randperm(pool.numel(), generator=gen)[:want]])
    return torch.cat(chosen)
