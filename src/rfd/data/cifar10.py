"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder (the "python version" of the dataset).

The folder holds pickled dicts: ``data_batch_1`` .. ``data_batch_5`` (train, 10000 images each), ``test_batch``
(10000 images) and ``batches.meta`` (class names). Each batch maps ``b"data"`` to a uint8 array (N, 3072), rows
laid out as 1024 red, 1024 green, 1024 blue values in row-major 32x32 order, and ``b"labels"`` to N ints.

Pickle can run arbitrary code, so the files are read with :class:`_BatchUnpickler`, which resolves only the few
globals a numpy array needs (see ``_ALLOWED``); a file that names anything else is rejected before any call.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfd.data.dataset import ImageDataset

__all__ = ["CIFAR10_CLASSES", "CIFAR10_FOLDER", "SPLIT_BATCHES", "cifar10_dir", "load_cifar10", "read_cifar_batch"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_FOLDER = "cifar-10-batches-py"
SPLIT_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_HOW_TO_GET = (
    "Download and extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and pass the "
    f"extracted {CIFAR10_FOLDER} folder (or its parent) as the path."
)


def _numpy_attr(module: str, name: str) -> Any:
    """Resolve a numpy global under its numpy 2 name (``numpy._core``) or numpy 1 name (``numpy.core``)."""
    for mod in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


# The only globals an array pickle needs: the array/dtype constructors, and ``_codecs.encode``, which Python 3
# uses to rebuild bytes in protocol 2. None of them touches files, processes or imports.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers and numpy arrays, rejecting every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a CIFAR batch file")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        return _numpy_attr(module, name)


def read_cifar_batch(path: str | os.PathLike[str]) -> dict[bytes, Any]:
    """Unpickle one CIFAR batch or meta file safely into a dict with bytes keys.

    Raises:
        FileNotFoundError: if ``path`` is missing.
        ValueError: if the file is not a pickled dict of builtins and numpy arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CIFAR-10 file not found: {p}. {_HOW_TO_GET}")
    try:
        with open(p, "rb") as fh:
            # encoding="bytes": the official files were written by Python 2, whose str must stay bytes here.
            obj = _BatchUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"{p}: not a CIFAR batch file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: expected a pickled dict, got {type(obj).__name__}")
    # Files written by Python 3 may use str keys; accept both by normalising to bytes.
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def cifar10_dir(root: str | os.PathLike[str]) -> Path:
    """The batches folder: ``root`` itself if it holds ``batches.meta``, else ``root/cifar-10-batches-py``."""
    p = Path(root)
    if not p.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {p}. {_HOW_TO_GET}")
    if not (p / "batches.meta").is_file() and (p / CIFAR10_FOLDER).is_dir():
        return p / CIFAR10_FOLDER
    return p


def _class_names(folder: Path) -> tuple[str, ...]:
    meta = read_cifar_batch(folder / "batches.meta")
    names = meta.get(b"label_names")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{folder / 'batches.meta'}: no b'label_names' list")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _read_split_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = read_cifar_batch(path)
    if b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path}: batch must hold b'data' and b'labels', found keys {sorted(d)}")
    data, labels = d[b"data"], np.asarray(d[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {getattr(data, 'dtype', type(data).__name__)} {shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {data.shape[0]} images but b'labels' is {labels.dtype} of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike[str], split: str = "test") -> ImageDataset:
    """Load CIFAR-10 ``split`` ("train": 50000 images, "test": 10000) as float32 (N, 3, 32, 32) in [0, 1].

    Args:
        root: the ``cifar-10-batches-py`` folder or the folder containing it.
        split: "train" (``data_batch_1..5``) or "test" (``test_batch``).

    Raises:
        FileNotFoundError: if the folder or one of its files is missing (the message says how to get them).
        ValueError: for an unknown split, a file that is not a CIFAR batch, wrong shapes or labels out of range.
    """
    if split not in SPLIT_BATCHES:
        raise ValueError(f"split must be one of {sorted(SPLIT_BATCHES)}, got {split!r}")
    folder = cifar10_dir(root)
    classes = _class_names(folder)
    parts = [_read_split_batch(folder / name, len(classes)) for name in SPLIT_BATCHES[split]]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float().div_(255.0)
    return ImageDataset(x, torch.from_numpy(labels), classes, name=f"cifar10/{split}", meta={"root": str(folder)})
