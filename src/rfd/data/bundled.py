"""The evaluation set shipped inside the package: 2000 class-balanced Fashion-MNIST test images (uint8).

Split ``"eval"`` (1000 images, 100 per class) is for attacks and accuracy; split ``"calib"`` (a disjoint
1000, 100 per class) is for calibrating noise levels, so calibration never sees the evaluation images.
License: MIT (Zalando SE), see ``rfd/assets/data/LICENSE-fashion-mnist.txt``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rfd.data.dataset import ImageDataset
from rfd.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from rfd.data.selection import balanced_indices

__all__ = ["BUNDLED_FILE", "SPLITS", "bundled_path", "load_bundled", "write_bundled"]

BUNDLED_FILE = "fmnist-eval2000.safetensors"
SPLITS = ("eval", "calib")


def bundled_path() -> Path:
    return Path(str(resources.files("rfd") / "assets" / "data" / BUNDLED_FILE))


def load_bundled(split: str = "eval") -> ImageDataset:
    """The bundled ``split`` ("eval" or "calib") as float32 (1000, 1, 28, 28) in [0, 1] with int64 labels.

    ``meta["test_index"]`` gives each image's index in the Fashion-MNIST test set."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = bundled_path()
    if not path.is_file():
        raise FileNotFoundError(f"bundled eval set missing at {path}; the rfd installation is incomplete")
    t = load_file(str(path))
    rows = t["split"] == SPLITS.index(split)
    return ImageDataset(
        t["images"][rows].float().div_(255.0), t["labels"][rows].long(), FASHION_MNIST_CLASSES,
        name=f"bundled/{split}", meta={"test_index": t["test_index"][rows]},
    )


def write_bundled(out: str | os.PathLike[str], root: str | None = None, seed: int = 0) -> Path:
    """Build the bundled file from the Fashion-MNIST test set: 1000 eval + 1000 disjoint calib images,
    each class-balanced, drawn with ``seed``."""
    test = load_fashion_mnist("test", root)
    ev = balanced_indices(test.labels, 1000, seed=seed, num_classes=10)
    cal = balanced_indices(test.labels, 1000, seed=seed + 1, num_classes=10, exclude=ev)
    idx = torch.cat([ev, cal])
    split = torch.cat([torch.zeros(1000, dtype=torch.uint8), torch.ones(1000, dtype=torch.uint8)])
    images = (test.images[idx] * 255).round().to(torch.uint8).contiguous()
    p = Path(out)
    save_file({"images": images, "labels": test.labels[idx].to(torch.uint8), "split": split, "test_index": idx},
              str(p), metadata={"source": "fashion-mnist t10k", "seed": str(seed)})
    return p
