"""Resolve layer names (as in ``model.named_modules()``) to modules, with helpful errors.

``"penultimate"`` is the input of the final classifier layer: ``model.head`` (the name an
:class:`rfd.models.ImageClassifier` records), else a timm ``get_classifier()``, else the last ``nn.Linear``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from rfd.defenses.families import PENULTIMATE

__all__ = ["LayerTarget", "classifier_name", "resolve_layers"]


@dataclass(frozen=True)
class LayerTarget:
    """Where noise goes: on the output of ``module`` (``pre=False``) or on its input (``pre=True``)."""

    name: str  # the name the user asked for ("penultimate" or a module name)
    module_name: str  # the module in model.named_modules() carrying the hook
    module: nn.Module
    pre: bool  # True: forward pre-hook, noise on the module's (first) input


def classifier_name(model: nn.Module) -> str:
    """Name (in ``model.named_modules()``) of the final classifier layer, whose input is the penultimate feature."""
    modules = dict(model.named_modules())
    head = getattr(model, "head", None)
    if isinstance(head, str) and head in modules:
        return head
    candidates: list[nn.Module] = []
    for m in [model] + [m for _, m in model.named_modules()]:
        get = getattr(m, "get_classifier", None)
        if callable(get):  # timm models: the classifier they would reset
            try:
                c = get()
            except Exception:  # noqa: BLE001, S112 - a foreign get_classifier may need arguments; fall back
                continue
            if isinstance(c, nn.Module) and not isinstance(c, nn.Identity):
                candidates.append(c)
                break
    for c in candidates:
        for n, m in model.named_modules():
            if m is c and n:
                return n
    last = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = n
    if last is None:
        raise ValueError(
            "cannot find the final classifier layer for 'penultimate': the model has no `head` name, no timm "
            "get_classifier() and no nn.Linear; name the layer explicitly (see model.named_modules())"
        )
    return last


def resolve_layers(model: nn.Module, names: tuple[str, ...]) -> list[LayerTarget]:
    """Map each name to a :class:`LayerTarget`; unknown names fail listing the closest valid names."""
    if not names:
        raise ValueError("feature noise needs at least one layer name (e.g. 'penultimate')")
    modules = dict(model.named_modules())
    valid = [n for n in modules if n]
    targets: list[LayerTarget] = []
    for name in names:
        if name == PENULTIMATE:
            heads = getattr(model, "heads", None)  # a model set: every member's classifier input
            if isinstance(heads, tuple) and heads:
                targets.extend(LayerTarget(h, h, modules[h], pre=True) for h in heads)
                continue
            mname = classifier_name(model)
            targets.append(LayerTarget(name, mname, modules[mname], pre=True))
            continue
        if name not in modules or not name:
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
            hint = f"closest: {', '.join(close)}" if close else f"valid names include: {', '.join(valid[:12])}"
            raise ValueError(f"unknown layer {name!r} (not in model.named_modules()); {hint}; or 'penultimate'")
        targets.append(LayerTarget(name, name, modules[name], pre=False))
    return targets
