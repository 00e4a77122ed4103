"""A small catalogue of the datasets rfd reads: name -> loader, splits, and whether the files are here.

Used by ``rfd data`` to list what is available, and by code that loads a dataset by name
(:func:`load_dataset`).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfd.data.dataset import ImageDataset

__all__ = ["DATASETS", "DatasetEntry", "dataset_entry", "dataset_status", "list_datasets", "load_dataset"]

PathLike = str | os.PathLike[str] | None


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset rfd can load."""

    name: str  # catalogue key, e.g. "fashion-mnist"
    splits: tuple[str, ...]  # split names the loader accepts
    needs_path: bool  # True if there is no default location: the caller must pass a path
    description: str  # one line for `rfd data`
    load: Callable[..., ImageDataset]  # load(split, path, **options) -> ImageDataset
    eval_split: str  # the split attacks are evaluated on by default
    calib_split: str  # the split calibration images come from by default (disjoint from the evaluation images)


def _load_fmnist(split: str, path: PathLike = None, **_: Any) -> ImageDataset:
    from rfd.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(split, path)


def _load_bundled(split: str, path: PathLike = None, **_: Any) -> ImageDataset:
    from rfd.data.bundled import load_bundled

    if path is not None:
        raise ValueError("the bundled set ships inside the package and takes no path")
    return load_bundled(split)


def _load_cifar10(split: str, path: PathLike = None, **_: Any) -> ImageDataset:
    from rfd.data.cifar10 import load_cifar10

    if path is None:
        raise ValueError("cifar10 needs a path: the cifar-10-batches-py folder")
    return load_cifar10(path, split)


def _load_imagefolder(split: str, path: PathLike = None, **options: Any) -> ImageDataset:
    from rfd.data.imagefolder import load_image_folder

    if path is None:
        raise ValueError("imagefolder needs a path: a folder with one sub-folder per class")
    if "size" not in options:
        raise ValueError("imagefolder needs size= (side of the center crop in pixels)")
    return load_image_folder(path, **options)


DATASETS: dict[str, DatasetEntry] = {e.name: e for e in (
    DatasetEntry("fashion-mnist", ("train", "test"), False,
                 "Fashion-MNIST IDX files, 1x28x28, 10 classes (Debian: dataset-fashion-mnist)", _load_fmnist,
                 "test", "test"),
    DatasetEntry("bundled", ("eval", "calib"), False,
                 "Fashion-MNIST test images shipped in the package: disjoint class-balanced eval and calib splits",
                 _load_bundled, "eval", "calib"),
    DatasetEntry("cifar10", ("train", "test"), True,
                 "CIFAR-10 python batches (cifar-10-batches-py), 3x32x32, 10 classes", _load_cifar10,
                 "test", "test"),
    DatasetEntry("imagefolder", ("all",), True,
                 "class-per-folder image tree, resized and center-cropped to a given size", _load_imagefolder,
                 "all", "all"),
)}


def dataset_entry(name: str) -> DatasetEntry:
    """The catalogue entry of ``name``; unknown names fail with the list of known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, split: str, path: PathLike = None, **options: Any) -> ImageDataset:
    """Load ``split`` of dataset ``name`` (see :data:`DATASETS`); ``options`` go to the loader (e.g. size=)."""
    entry = dataset_entry(name)
    if split not in entry.splits:
        raise ValueError(f"dataset {name!r} has splits {entry.splits}, got {split!r}")
    return entry.load(split, path, **options)


def _idx_count(path: Path) -> int:
    """Number of items an IDX file's header declares (reads 8 bytes; gzip or raw)."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    return int.from_bytes(head[4:8], "big")


def _fmnist_status(path: PathLike) -> list[dict[str, Any]]:
    from rfd.data.fashion_mnist import IDX_FILES, fashion_mnist_dir, find_idx_file

    folder = fashion_mnist_dir(path)
    rows = []
    for split, (img_stem, _lab_stem) in IDX_FILES.items():
        row: dict[str, Any] = {"split": split, "path": str(folder)}
        try:
            row.update(available=True, size=_idx_count(find_idx_file(folder, img_stem)))
        except (FileNotFoundError, ValueError, OSError, EOFError) as exc:
            row.update(available=False, size=None, reason=str(exc))
        rows.append(row)
    return rows


def _bundled_status() -> list[dict[str, Any]]:
    from rfd.data.bundled import bundled_path, load_bundled

    rows = []
    for split in DATASETS["bundled"].splits:
        row: dict[str, Any] = {"split": split, "path": str(bundled_path())}
        try:
            row.update(available=True, size=len(load_bundled(split)))
        except (FileNotFoundError, ValueError) as exc:
            row.update(available=False, size=None, reason=str(exc))
        rows.append(row)
    return rows


def _path_split_size(name: str, split: str, path: str | os.PathLike[str]) -> int:
    """Images in ``split`` of a dataset at ``path``, found without decoding them to floats."""
    if name == "imagefolder":
        from rfd.data.imagefolder import find_images

        return len(find_images(path)[0])
    from rfd.data.cifar10 import SPLIT_BATCHES, cifar10_dir, read_cifar_batch

    folder = cifar10_dir(path)
    return sum(int(getattr(read_cifar_batch(folder / f).get(b"data"), "shape", (0,))[0]) for f in SPLIT_BATCHES[split])


def dataset_status(name: str, path: PathLike = None) -> list[dict[str, Any]]:
    """Per split of ``name``: ``{"split", "available", "size", "path"}`` (plus ``"reason"`` when unavailable).

    Datasets without a default location report ``available=None`` unless ``path`` is given; then the files are
    found and counted (not fully validated: loading does that)."""
    entry = dataset_entry(name)
    if name == "fashion-mnist":
        return _fmnist_status(path)
    if name == "bundled":
        if path is not None:
            raise ValueError("the bundled set ships inside the package and takes no path")
        return _bundled_status()
    if path is None:
        return [{"split": s, "available": None, "size": None, "path": None, "reason": "needs --path"}
                for s in entry.splits]
    rows = []
    for split in entry.splits:
        row: dict[str, Any] = {"split": split, "path": str(path)}
        try:
            row.update(available=True, size=_path_split_size(name, split, path))
        except (FileNotFoundError, ValueError, OSError) as exc:
            row.update(available=False, size=None, reason=str(exc))
        rows.append(row)
    return rows


def list_datasets() -> list[dict[str, Any]]:
    """Every catalogue entry with its per-split status at the default locations (see :func:`dataset_status`)."""
    return [{"name": e.name, "description": e.description, "needs_path": e.needs_path, "splits": dataset_status(e.name)}
            for e in DATASETS.values()]
