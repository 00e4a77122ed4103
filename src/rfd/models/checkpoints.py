"""Saving and loading weights safely: safetensors files with a small JSON metadata header."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["load_checkpoint", "read_checkpoint_meta", "save_checkpoint"]


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` to ``path`` (safetensors) with ``meta`` stored as JSON in the header."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(p), metadata={"rfd": json.dumps(meta or {})})
    return p


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata dict stored by :func:`save_checkpoint` (empty if none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        md = fh.metadata() or {}
    return json.loads(md.get("rfd", "{}"))


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load weights into ``model`` from a safetensors file, or a torch file with ``weights_only=True``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a readable checkpoint or its tensors do not fit ``model``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{p}: expected a dict of tensors, got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise ValueError(f"{p}: weights do not fit {type(model).__name__}: {exc}") from exc
    return model
