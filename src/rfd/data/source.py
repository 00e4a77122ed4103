"""Where evaluation and calibration images come from: one data path for the API, studies and every command.

A :class:`DataSpec` names a dataset of :data:`rfd.data.DATASETS`, its evaluation and calibration splits, a path
and loader options. :func:`select_data` draws ``n`` class-balanced, seeded evaluation images and calibration
images that never overlap them, and identifies both by their content (the results store keys runs by it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from rfd.data.dataset import ImageDataset
from rfd.data.registry import dataset_entry, load_dataset
from rfd.data.selection import balanced_indices
from rfd.jsonable import Frozen, freeze, thaw

__all__ = ["DataSpec", "EvalData", "calibration_indices", "select_data", "tensor_digest"]


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """The images of an evaluation.

    Attributes:
        dataset: a name of :data:`rfd.data.DATASETS` (bundled, fashion-mnist, cifar10, imagefolder).
        eval_split: split the attacked images come from (default: the dataset's, e.g. "eval" for bundled, "test").
        calib_split: split calibration images come from (default: the dataset's; "calib" for bundled, else the
            evaluation split, whose images not selected for evaluation are used).
        path: dataset location (cifar10, imagefolder; fashion-mnist defaults to Debian's folder).
        calib_images: calibration images: an int draws that many class-balanced images (seeded, ``seed + 1``);
            None takes every image of the calibration split in file order (minus the evaluation images when the
            splits are the same).
        options: loader options (imagefolder: ``size``); a dict is frozen (see :func:`rfd.jsonable.freeze`).
    """

    dataset: str = "bundled"
    eval_split: str = ""
    calib_split: str = ""
    path: str | None = None
    calib_images: int | None = 1000
    options: Frozen = ()

    def __post_init__(self) -> None:
        try:
            entry = dataset_entry(self.dataset)
        except ValueError as exc:
            raise ValueError(f"dataset: {exc}") from None
        if not self.eval_split:
            object.__setattr__(self, "eval_split", entry.eval_split)
        if not self.calib_split:
            object.__setattr__(self, "calib_split", entry.calib_split if self.eval_split == entry.eval_split
                               else self.eval_split)
        for key in ("eval_split", "calib_split"):
            split = getattr(self, key)
            if split not in entry.splits:
                raise ValueError(f"{key}: dataset {self.dataset!r} has splits {', '.join(entry.splits)}, got {split!r}")
        if self.calib_images is not None and (isinstance(self.calib_images, bool) or self.calib_images < 1):
            raise ValueError(f"calib_images must be >= 1 (or None for the whole split), got {self.calib_images!r}")
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", freeze(self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "eval_split": self.eval_split, "calib_split": self.calib_split,
                "path": self.path, "calib_images": self.calib_images, "options": thaw(self.options)}

    def load(self, split: str) -> ImageDataset:
        """One split of the dataset, loaded with the spec's path and options."""
        return load_dataset(self.dataset, split, self.path, **thaw(self.options))


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 (first 20 hex characters) of the tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class EvalData:
    """The selected evaluation images and the calibration images.

    Attributes:
        images: float32 (n, C, H, W) in [0, 1], in sample order; labels: int64 (n,).
        dataset_index: int64 (n,), each sample's index in the evaluation split.
        calib_images, calib_labels: the calibration images (never among the evaluation images).
        identity, calib_identity: dataset, split and content digest (go into run and calibration keys).
        name, calib_name: the splits' dataset names (as the loaders give them).
    """

    images: torch.Tensor
    labels: torch.Tensor
    dataset_index: torch.Tensor
    calib_images: torch.Tensor
    calib_labels: torch.Tensor
    identity: dict[str, Any]
    calib_identity: dict[str, Any]
    name: str = ""
    calib_name: str = ""


_CACHE: dict[tuple[Any, ...], EvalData] = {}


def select_data(data: DataSpec, n: int, seed: int, *, input_shape: tuple[int, ...] | None = None) -> EvalData:
    """``n`` class-balanced evaluation images of ``data.eval_split`` drawn with ``seed``, and the calibration
    images (see :attr:`DataSpec.calib_images`), never among them. Cached per process.

    ``input_shape`` (C, H, W), when given, must match the images (a model of another dataset fails clearly)."""
    key = (data, n, seed)
    out = _CACHE.get(key)
    if out is None:
        out = _select(data, n, seed)
        _CACHE[key] = out
    if input_shape is not None and tuple(out.images.shape[1:]) != tuple(input_shape):
        raise ValueError(f"the model expects images of shape {tuple(input_shape)} but {out.name} images are "
                         f"{tuple(out.images.shape[1:])}; choose data of the model's dataset")
    return out


def _select(data: DataSpec, n: int, seed: int) -> EvalData:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (images to evaluate) must be an int >= 1, got {n!r}")
    ev = data.load(data.eval_split)
    if n > len(ev):
        raise ValueError(f"n={n} images asked for, but {data.dataset}/{data.eval_split} has {len(ev)}")
    idx = balanced_indices(ev.labels, n, seed=seed, num_classes=len(ev.classes))
    cal, cidx = calibration_indices(data, idx, seed, ev=ev)
    images, labels = ev.images[idx].contiguous(), ev.labels[idx].contiguous()
    cimages, clabels = cal.images[cidx].contiguous(), cal.labels[cidx].contiguous()
    base = {"dataset": data.dataset, "options": thaw(data.options)}
    return EvalData(
        images=images, labels=labels, dataset_index=idx, calib_images=cimages, calib_labels=clabels,
        identity={**base, "split": data.eval_split, "digest": tensor_digest(images, labels, idx)},
        calib_identity={**base, "split": data.calib_split, "digest": tensor_digest(cimages, clabels)},
        name=ev.name, calib_name=cal.name,
    )



def calibration_indices(data: DataSpec, eval_index: torch.Tensor, seed: int, *,
                        ev: ImageDataset | None = None) -> tuple[ImageDataset, torch.Tensor]:
    """The calibration split and the indices of its calibration images (see :attr:`DataSpec.calib_images`),
    none of them among ``eval_index`` of the evaluation split when the two splits are the same. ``ev``: the
    evaluation split when the caller has loaded it (it is loaded here only when it is the calibration split)."""
    same = data.calib_split == data.eval_split
    if same:
        cal = ev if ev is not None else data.load(data.eval_split)
    else:
        cal = data.load(data.calib_split)
    if data.calib_images is None:
        keep = torch.ones(len(cal), dtype=torch.bool)
        if same:
            keep[eval_index] = False
        cidx = torch.nonzero(keep).flatten()
        if cidx.numel() == 0:
            raise ValueError(f"no calibration images left in {data.dataset}/{data.calib_split}")
        return cal, cidx
    k = len(cal.classes)
    m = min(data.calib_images, len(cal) - (int(eval_index.numel()) if same else 0))
    if m < k:
        raise ValueError(f"only {m} calibration images available in {data.dataset}/{data.calib_split}")
    return cal, balanced_indices(cal.labels, m, seed=seed + 1, num_classes=k, exclude=eval_index if same else None)
