"""What a study needs besides its settings: models (built and identified by their weights) and images
(selected and identified by their content). Identities go into run keys, so the same run gets the same key
on every machine, whatever the file paths."""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfd.data.selection import balanced_indices
from rfd.eval.study import DataSpec, ModelSpec, _thaw

__all__ = ["EvalData", "build_model", "file_digest", "load_eval_data", "model_identity", "tensor_digest"]


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 (first 20 hex characters) of the tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


@lru_cache(maxsize=32)
def _cached_file_digest(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(path)


def _weights_path(spec: ModelSpec) -> Path | None:
    if spec.checkpoint is not None:
        return Path(spec.checkpoint)
    if spec.factory is None and not spec.name.startswith("timm:"):
        from rfd.models.registry import get_entry

        return get_entry(spec.name).checkpoint_path()
    return None


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What identifies a model's outputs: its name/factory, options and the sha256 of its weights file.

    Raises FileNotFoundError when the weights file is missing (registry models: the shipped checkpoint)."""
    path = _weights_path(spec)
    weights = None
    if path is not None:
        if not path.is_file():
            if spec.checkpoint is None:
                raise FileNotFoundError(
                    f"model {spec.name!r}: the reference checkpoint {path} is not installed; train it with "
                    f"`rfd train {spec.name} --out PATH` and give checkpoint: PATH in the study")
            raise FileNotFoundError(f"model {spec.name!r}: checkpoint not found: {path}")
        st = path.stat()
        weights = _cached_file_digest(str(path.resolve()), st.st_mtime_ns, st.st_size)
    return {"name": spec.name, "factory": spec.factory, "options": _thaw(spec.options), "weights_sha256": weights}


def build_model(spec: ModelSpec, device: str | torch.device = "cpu") -> nn.Module:
    """Build ``spec`` in eval mode on ``device`` (registry or timm via ``rfd.models.loading.load_model``, or the
    spec's factory, then its checkpoint).

    On CPU the weights are put in channels-last layout: PyTorch's CPU max-pooling is several times slower on
    NCHW tensors, and the reference CNNs run 1.3-1.5x faster end to end (same results up to float rounding;
    every run of a study uses the same layout, so stored results stay reproducible)."""
    model = _build(spec, device)
    if torch.device(device).type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def _build(spec: ModelSpec, device: str | torch.device) -> nn.Module:
    options = _thaw(spec.options)
    if spec.factory is not None:
        module_name, _, fn_name = spec.factory.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"model {spec.name!r}: cannot import factory {spec.factory!r} ({exc})") from exc
        model = fn(**options)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {spec.name!r}: factory {spec.factory!r} returned {type(model).__name__}, "
                             "not a torch.nn.Module")
        if spec.checkpoint is not None:
            from rfd.models.checkpoints import load_checkpoint

            load_checkpoint(model, spec.checkpoint)
        return model.eval().to(device)
    from rfd.models.loading import load_model

    return load_model(spec.name, spec.checkpoint, device, **options).eval()


@dataclass(frozen=True)
class EvalData:
    """The images of a study: ``n`` selected evaluation images and the calibration images.

    Attributes:
        images: float32 (n, C, H, W) in [0, 1], in sample order; labels: int64 (n,).
        dataset_index: int64 (n,), each sample's index in the evaluation split.
        calib_images, calib_labels: the calibration images (never among the evaluation images).
        identity: dataset, splits and content digests (goes into run and calibration keys).
    """

    images: torch.Tensor
    labels: torch.Tensor
    dataset_index: torch.Tensor
    calib_images: torch.Tensor
    calib_labels: torch.Tensor
    identity: dict[str, Any]
    calib_identity: dict[str, Any]


_DATA_CACHE: dict[tuple[Any, ...], EvalData] = {}


def load_eval_data(data: DataSpec, n: int, seed: int) -> EvalData:
    """Load and select the study's images (cached per process).

    Evaluation: ``n`` class-balanced images of ``data.eval_split`` drawn with ``seed``. Calibration:
    ``data.calib_images`` class-balanced images of ``data.calib_split`` drawn with ``seed + 1``, excluding the
    evaluation images when both come from the same split."""
    key = (data, n, seed)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    from rfd.data.registry import load_dataset

    options = _thaw(data.options)
    ev = load_dataset(data.dataset, data.eval_split, data.path, **options)
    k = len(ev.classes)
    if n > len(ev):
        raise ValueError(f"study asks for n={n} images but {data.dataset}/{data.eval_split} has {len(ev)}")
    idx = balanced_indices(ev.labels, n, seed=seed, num_classes=k)
    same = data.calib_split == data.eval_split
    cal = ev if same else load_dataset(data.dataset, data.calib_split, data.path, **options)
    m = min(data.calib_images, len(cal) - (n if same else 0))
    if m < k:
        raise ValueError(f"only {m} calibration images available in {data.dataset}/{data.calib_split}")
    cidx = balanced_indices(cal.labels, m, seed=seed + 1, num_classes=k, exclude=idx if same else None)
    images, labels = ev.images[idx].contiguous(), ev.labels[idx].contiguous()
    cimages, clabels = cal.images[cidx].contiguous(), cal.labels[cidx].contiguous()
    base = {"dataset": data.dataset, "options": options}
    out = EvalData(
        images=images, labels=labels, dataset_index=idx, calib_images=cimages, calib_labels=clabels,
        identity={**base, "split": data.eval_split, "digest": tensor_digest(images, labels, idx)},
        calib_identity={**base, "split": data.calib_split, "digest": tensor_digest(cimages, clabels)},
    )
    _DATA_CACHE[key] = out
    return out
