"""An image tree with one folder per class (``root/<class>/<image>``), read with Pillow.

Class names are the sub-folder names in sorted order (label = index), as in torchvision's ``ImageFolder``.
Each image is converted to RGB or grayscale, resized so its shorter side is ``resize`` pixels (bilinear, with
Pillow's antialiasing) and center-cropped to ``size`` x ``size``; this matches torchvision's
``Resize(resize)`` + ``CenterCrop(size)`` on PIL images, the usual evaluation transform of timm/torchvision models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from rfd.data.dataset import ImageDataset
from rfd.data.selection import balanced_indices

__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_image_folder", "read_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_MODES = {"RGB": 3, "L": 1}


def find_images(root: str | os.PathLike[str]) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """List the image files under ``root``: (paths, labels, class names), sorted by class then file name.

    Files are found recursively inside each class folder; hidden files/folders and files whose extension is
    not in :data:`IMAGE_EXTENSIONS` are ignored.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if ``root`` has no class folders, or a class folder holds no image.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image folder not found: {base}")
    classes = tuple(sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise ValueError(f"{base}: no class folders; expected root/<class>/<image> (e.g. root/cat/001.png)")
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        files = sorted(
            f for f in (base / name).rglob("*")
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(base).parts)
        )
        if not files:
            empty.append(name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if empty:
        raise ValueError(
            f"{base}: class folder(s) without images: {', '.join(empty)} (extensions read: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths, labels, classes


def read_image(path: str | os.PathLike[str], size: int, *, resize: int | None = None, mode: str = "RGB") -> np.ndarray:
    """Read one image as uint8 (C, size, size): convert to ``mode``, shorter side to ``resize``, center crop.

    Raises:
        ValueError: naming the file if Pillow cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)} (RGB or grayscale), got {mode!r}")
    short = size if resize is None else resize
    if size < 1 or short < size:
        raise ValueError(f"need 1 <= size <= resize, got size={size}, resize={resize}")
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            # Same rounding as torchvision.transforms.Resize(int): the longer side is truncated, not rounded.
            new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            if new != (w, h):
                im = im.resize(new, Image.Resampling.BILINEAR)
            left, top = round((new[0] - size) / 2.0), round((new[1] - size) / 2.0)
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(
    root: str | os.PathLike[str],
    size: int,
    *,
    resize: int | None = None,
    mode: str = "RGB",
    limit: int | None = None,
    balanced: bool = True,
    seed: int = 0,
) -> ImageDataset:
    """Load a class-per-folder image tree as float32 (N, C, size, size) in [0, 1] with int64 labels.

    Args:
        root: folder whose sub-folders are the classes.
        size: side of the square center crop, in pixels.
        resize: shorter side after resizing, before the crop (default ``size``; e.g. 256 with size 224).
        mode: "RGB" (C = 3) or "L" (grayscale, C = 1).
        limit: read only this many images (default: all).
        balanced: with ``limit``, pick a seeded class-balanced subset (:func:`balanced_indices`); if False,
            take the first ``limit`` files in class/file order.
        seed: seed of the balanced selection.

    ``meta["files"]`` lists the file of each image.

    Raises:
        FileNotFoundError / ValueError: see :func:`find_images`, :func:`read_image`; also a bad ``limit``.
    """
    paths, labels, classes = find_images(root)
    y = torch.tensor(labels, dtype=torch.int64)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if limit > len(paths):
            raise ValueError(f"limit={limit} but {root} holds only {len(paths)} images")
        if balanced:
            index = balanced_indices(y, limit, seed=seed, num_classes=len(classes))
        else:
            index = torch.arange(limit)
        paths, y = [paths[i] for i in index.tolist()], y[index]
    # File decoding is inherently per image; everything after it is one batched conversion.
    arrays = [read_image(p, size, resize=resize, mode=mode) for p in paths]
    x = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    return ImageDataset(x, y, classes, name=f"imagefolder/{Path(root).name}",
                        meta={"root": str(root), "files": [str(p) for p in paths]})
