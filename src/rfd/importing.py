"""User code named by a ``"package.module:name"`` path (model factories, attack classes): one resolver for all."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_object"]


def import_object(path: str, what: str) -> Any:
    """The object ``name`` of module ``package.module`` for a ``"package.module:name"`` path.

    ``what`` says what the path is for (e.g. ``"attack"``, ``"model factory"``) in the ValueError raised when the
    path is malformed, the module cannot be imported or has no such name."""
    module_name, sep, name = path.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{what} {path!r}: expected 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {what} {path!r}: module {module_name!r} failed to import ({exc})") from exc
    for part in name.split("."):  # a nested name, e.g. "module:Outer.Inner"
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"cannot import {what} {path!r}: {module_name!r} has no attribute {name!r}") from None
    return obj
