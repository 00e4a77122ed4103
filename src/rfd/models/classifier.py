"""The classifier contract: a module mapping [0, 1] images (N, C, H, W) to logits (N, K).

Normalization (mean/std) lives inside the model, as in the paper's code, so every epsilon is in pixel units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ImageClassifier"]


class ImageClassifier(nn.Module):
    """Wrap a network that expects normalized inputs into one that takes [0, 1] pixels.

    Args:
        net: module mapping normalized (N, C, H, W) to logits (N, K).
        mean, std: per-channel statistics (length C) used to normalize: ``(x - mean) / std``.
        input_shape: (C, H, W) the network expects.
        num_classes: K.
        head: name (relative to ``net``) of the final classifier layer; its input is the "penultimate" feature.

    The submodule names of the wrapped network are ``net.<name>`` in ``named_modules()``.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_shape: tuple[int, int, int],
        num_classes: int,
        head: str | None = None,
    ) -> None:
        super().__init__()
        if len(mean) != input_shape[0] or len(std) != input_shape[0]:
            raise ValueError(f"mean/std need {input_shape[0]} entries (one per channel), got {len(mean)}/{len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.net = net
        self.mean: torch.Tensor  # buffers (declared for type checkers): per-channel mean and std, (1, C, 1, 1)
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.head = f"net.{head}" if head else _last_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of images ``x`` (N, C, H, W) in [0, 1]."""
        return self.net((x - self.mean) / self.std)


def _last_linear(model: nn.Module) -> str | None:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name
