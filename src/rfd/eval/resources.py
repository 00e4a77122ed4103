"""Models of a study: built from their specs and identified by their weights. Identities go into run keys, so the
same run gets the same key on every machine, whatever the file paths (images: :func:`rfd.data.select_data`)."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rfd.eval.specs import ModelSpec
from rfd.importing import import_object

if TYPE_CHECKING:
    from rfd.models.registry import ModelEntry
from rfd.jsonable import thaw

__all__ = ["build_model", "file_digest", "model_identity"]


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=32)
def _cached_file_digest(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(path)


def _registry_entry(spec: ModelSpec) -> ModelEntry | None:
    """The registry entry a spec names when the registry alone defines it (no own checkpoint, factory or timm)."""
    if spec.checkpoint is None and spec.factory is None and not spec.name.startswith("timm:"):
        from rfd.models.registry import get_entry

        return get_entry(spec.name)
    return None


def _weights_path(spec: ModelSpec) -> Path | None:
    if spec.checkpoint is not None:
        return Path(spec.checkpoint)
    entry = _registry_entry(spec)
    return entry.checkpoint_path() if entry is not None else None


def _weights_digest(spec: ModelSpec) -> str | None:
    entry = _registry_entry(spec)
    if entry is not None and entry.members:  # a model set: its members' weights identify it
        return ",".join(str(_weights_digest(ModelSpec(name=m))) for m in entry.members)
    path = _weights_path(spec)
    if path is None:
        return None
    if not path.is_file():
        if spec.checkpoint is None:
            raise FileNotFoundError(
                f"model {spec.name!r}: the reference checkpoint {path} is not installed; train it with "
                f"`rfd train {spec.name} --out PATH` and give checkpoint: PATH in the study")
        raise FileNotFoundError(f"model {spec.name!r}: checkpoint not found: {path}")
    st = path.stat()
    return _cached_file_digest(str(path.resolve()), st.st_mtime_ns, st.st_size)


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What identifies a model's outputs: its name/factory, options and the sha256 of its weights file (of each
    member's, comma-joined, for a model set).

    Raises FileNotFoundError when the weights file is missing (registry models: the shipped checkpoint)."""
    return {"name": spec.name, "factory": spec.factory, "options": thaw(spec.options),
            "weights_sha256": _weights_digest(spec)}


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
    options = thaw(spec.options)
    if spec.factory is not None:
        fn = import_object(spec.factory, f"model {spec.name!r}: factory")
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
