"""The in-memory dataset type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rfd.data.checks import check_images_labels

__all__ = ["ImageDataset"]


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels held in memory.

    Attributes:
        images: float32 (N, C, H, W) in [0, 1].
        labels: int64 (N,).
        classes: class names, index = label.
        name: where the data came from (e.g. ``"fashion-mnist/test"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_images_labels(self.images, self.labels, num_classes=len(self.classes))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor, name: str | None = None) -> ImageDataset:
        """The rows ``index`` (int64 (M,)) as a new dataset."""
        return ImageDataset(self.images[index], self.labels[index], self.classes, name or self.name, dict(self.meta))
