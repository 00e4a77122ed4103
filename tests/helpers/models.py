"""Tiny seeded models (and a counting wrapper) used by test modules of more than one file."""

from __future__ import annotations

import math

import torch
from torch import nn

from rfd.models.classifier import ImageClassifier

__all__ = ["SERVED_CLASSES", "SERVED_SHAPE", "Counting", "TinyCNN", "served_mlp", "tiny_cnn"]


class TinyCNN(nn.Module):
    """Seeded random conv net; ``noise`` > 0 adds fresh Gaussian noise to the hidden feature on every forward,
    from its own seeded generator (a stand-in for the randomized feature defense)."""

    def __init__(self, channels: int, size: int, classes: int, seed: int, noise: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.fc = nn.Linear(6 * (size // 2) ** 2, classes)
        self.noise = noise
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.num_classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(nn.functional.max_pool2d(self.conv(x), 2)).flatten(1)
        if self.noise:
            h = h + self.noise * torch.randn(h.shape, generator=self.gen)
        return self.fc(h)


class Counting(nn.Module):
    """Counts every row forwarded to the wrapped model and records the range of all inputs it saw."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0
        self.lo, self.hi = math.inf, -math.inf
        if hasattr(model, "num_classes"):  # passed on only when the model declares it (a black box reads it)
            self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        return self.model(x)


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A random 10-class CNN on 1x8x8 images (decision regions irregular enough to exercise the searches)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)).eval()
    with torch.no_grad():
        net[3].weight.mul_(20.0)  # logit gaps of order 1 instead of 0.05, so mild noise rarely flips clean images
    return net


SERVED_SHAPE = (1, 8, 8)
SERVED_CLASSES = 4


def served_mlp(seed: int = 0) -> ImageClassifier:
    """The model the server tests serve: a small MLP on 1x8x8 images with 4 classes (untrained, seeded)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, SERVED_CLASSES))
    return ImageClassifier(net, mean=(0.5,), std=(0.25,), input_shape=SERVED_SHAPE, num_classes=SERVED_CLASSES,
                           head="3").eval()
