"""Fashion-MNIST from its IDX files (gzip or raw), e.g. where Debian's ``dataset-fashion-mnist`` puts them."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from rfd.data.dataset import ImageDataset

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "IDX_FILES", "fashion_mnist_dir", "find_idx_file",
           "load_fashion_mnist", "read_idx"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_ENV = "RFD_FASHION_MNIST_DIR"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW_TO_GET = (
    "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs to "
    f"{DEFAULT_FASHION_MNIST_DIR}); or download the four IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist and pass their folder with --data-path / root= "
    f"or the environment variable {_ENV}."
)


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder to read: ``root`` if given, else ``$RFD_FASHION_MNIST_DIR``, else Debian's location."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(_ENV, DEFAULT_FASHION_MNIST_DIR))


def _open(path: Path) -> bytes:
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes into a uint8 array of the shape its header gives.

    Raises:
        ValueError: if the magic number, type code, dimensions or length are not those of an IDX uint8 file.
    """
    p = Path(path)
    data = _open(p)
    if len(data) < 4:
        raise ValueError(f"{p}: too short to be an IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(
            f"{p}: not an IDX file of unsigned bytes (magic {data[:4].hex()}, expected 0000 08 0d with d = ndim)"
        )
    if ndim < 1 or ndim > 4:
        raise ValueError(f"{p}: IDX header says {ndim} dimensions, expected 1 (labels) or 3 (images)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{p}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(f"{p}: IDX header promises shape {shape} ({expected} bytes) but holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {folder}. {_HOW_TO_GET}")


def load_fashion_mnist(split: str = "test", root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Load the Fashion-MNIST ``split`` ("train": 60k, "test": 10k) as float32 (N, 1, 28, 28) in [0, 1]."""
    if split not in IDX_FILES:
        raise ValueError(f"split must be one of {sorted(IDX_FILES)}, got {split!r}")
    folder = fashion_mnist_dir(root)
    img_stem, lab_stem = IDX_FILES[split]
    images = read_idx(find_idx_file(folder, img_stem))
    labels = read_idx(find_idx_file(folder, lab_stem))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{folder}/{img_stem}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{folder}: {images.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and int(labels.max()) >= 10:
        raise ValueError(f"{folder}/{lab_stem}: label {int(labels.max())} outside 0..9")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(x, y, FASHION_MNIST_CLASSES, name=f"fashion-mnist/{split}", meta={"root": str(folder)})
