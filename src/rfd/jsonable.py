"""Plain JSON values from rfd's objects; shared by every layer that writes JSON (analysis outputs, the CLI)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

__all__ = ["jsonable"]


def jsonable(obj: Any) -> Any:
    """Convert tensors, dataclasses, paths, tuples and numpy scalars into plain JSON values; non-finite floats
    become None (JSON has no NaN)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return jsonable(obj.item())
    return obj
