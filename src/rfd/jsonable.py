"""Plain JSON values from rfd's objects (analysis outputs, the CLI), and frozen (hashable) forms of JSON mappings
for frozen dataclasses (specs holding options)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["Frozen", "freeze", "jsonable", "thaw"]

# A JSON mapping as a sorted tuple of (key, value) items, nested mappings and lists frozen likewise.
Frozen = tuple[tuple[str, Any], ...]


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


def freeze(d: Mapping[str, Any]) -> Frozen:
    """A mapping as a sorted tuple of items (hashable, so frozen dataclasses holding it stay hashable);
    ``thaw(freeze(d)) == d`` for JSON mappings."""
    return tuple(sorted((str(k), _freeze_value(v)) for k, v in d.items()))


def _freeze_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return freeze(v)
    if isinstance(v, list):
        return tuple(_freeze_value(x) for x in v)
    return v


def thaw(items: Frozen) -> dict[str, Any]:
    """The mapping of :func:`freeze`'s items."""
    return {k: _thaw_value(v) for k, v in items}


def _thaw_value(v: Any) -> Any:
    if isinstance(v, tuple) and v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
        return thaw(v)
    if isinstance(v, tuple):
        return [_thaw_value(x) for x in v]
    return v
