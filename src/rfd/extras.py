"""Optional extras: which pip extra provides a missing third-party module, and a clear error naming it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtra", "missing_extra", "require"]

# top-level module -> the rfd extra that installs it (pyproject's [project.optional-dependencies])
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "httpx": "serve", "starlette": "serve", "timm": "timm",
          "torchvision": "timm", "ray": "ray"}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` saying that ``purpose`` needs its extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, purpose) from exc


def missing_extra(exc: ModuleNotFoundError, purpose: str = "this") -> ImportError:
    """The error to raise for ``exc``: a :class:`MissingExtra` naming the extra when the module belongs to one,
    else ``exc`` itself (a missing module rfd does not know is a broken install, not a missing extra)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return exc
    return MissingExtra(f"{purpose} needs {top}, from the {extra} extra: pip install 'rfd[{extra}]'")
