"""A VGG-style CNN for 1x28x28 inputs (~0.39M parameters): stacked 3x3 convs, max-pooling, two FC layers."""

from __future__ import annotations

from torch import nn

__all__ = ["SmallVGG"]


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallVGG(nn.Module):
    """VGG-style network: features (four 3x3 convs in three max-pooled stages) then classifier (FC-ReLU-Dropout-FC).

    Input (N, in_channels, 28, 28) normalized; output logits (N, num_classes). The penultimate feature is the
    128-d input of ``classifier.3``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(in_channels, w), nn.MaxPool2d(2),  # 14x14
            *_block(w, 2 * w), nn.MaxPool2d(2),  # 7x7
            *_block(2 * w, 4 * w), *_block(4 * w, 4 * w), nn.MaxPool2d(2),  # 3x3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * 9, 128), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(128, num_classes)
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x))
