"""Taps: temporarily replace the value flowing through named layers, at exactly the place the defense adds noise.

Layer names follow the defense contract (:func:`rfd.defenses.layers.resolve_layers`): a module name from
``model.named_modules()`` means that module's *output*, ``"penultimate"`` means the *input* of the final
classifier layer, and ``"input"`` (handled by the callers, not here) means the [0, 1] image itself.

A tap is a function ``fn(layer, call, value) -> new_value`` applied to the tensor at the layer on every call of
that module in a forward pass (``call`` counts from 0 within one forward; a module used twice in one forward, such
as a ReLU shared inside a block, is tapped twice). Analysis uses taps to add a zero "probe" whose gradient is the
gradient with respect to the feature, and to add a known perturbation for the first-order error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rfd.defenses.layers import resolve_layers

__all__ = ["INPUT", "PENULTIMATE", "TapFn", "check_layer_names", "tap_layers"]

INPUT = "input"  # the [0, 1] image: the place of the input-noise defense (RND)
PENULTIMATE = "penultimate"  # the input of the final classifier layer

TapFn = Callable[[str, int, torch.Tensor], torch.Tensor]


def check_layer_names(model: nn.Module, layers: Sequence[str]) -> tuple[str, ...]:
    """Validate ``layers`` (``"input"``, ``"penultimate"`` or module names) and return them as a tuple.

    Raises:
        ValueError: for an empty list, a repeated name, or a name the model does not have (with close matches).
    """
    names = tuple(layers)
    if not names:
        raise ValueError("no layers given; pass at least one of 'input', 'penultimate' or a module name")
    if len(set(names)) != len(names):
        raise ValueError(f"layers lists a name twice: {list(names)}")
    hidden = tuple(n for n in names if n != INPUT)
    if hidden:
        resolve_layers(model, hidden)  # raises with the closest valid names
    return names


@contextmanager
def tap_layers(model: nn.Module, layers: Sequence[str], fn: TapFn) -> Iterator[dict[str, int]]:
    """Install hooks that pass each tapped tensor through ``fn`` while the context is open.

    Args:
        model: the classifier.
        layers: hidden layer names (not ``"input"``).
        fn: ``fn(layer, call, value) -> replacement`` with the same shape as ``value``.

    Yields:
        ``calls``: a dict layer -> number of calls seen so far; callers reset it (``calls.clear()``) between
        forward passes when they need per-forward call indices.

    Hooks are always removed on exit, also when the body raises.
    """
    if INPUT in layers:
        raise ValueError("'input' is not a module; callers handle the input layer themselves")
    targets = resolve_layers(model, tuple(layers))
    calls: dict[str, int] = {}
    handles = []

    def _apply(name: str, value: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"layer {name!r} carries a {type(value).__name__}, not a tensor; pick a module whose output is "
                "a single tensor (e.g. a block, an activation or a linear layer)"
            )
        k = calls.get(name, 0)
        calls[name] = k + 1
        out = fn(name, k, value)
        if out.shape != value.shape:
            raise ValueError(f"tap at {name!r} changed the shape {tuple(value.shape)} -> {tuple(out.shape)}")
        return out

    try:
        for t in targets:
            if t.pre:
                def pre_hook(_m: nn.Module, args: tuple[Any, ...], _name: str = t.name) -> tuple[Any, ...]:
                    if not args:
                        raise ValueError(f"layer {_name!r}: the classifier layer was called without inputs")
                    return (_apply(_name, args[0]),) + tuple(args[1:])

                handles.append(t.module.register_forward_pre_hook(pre_hook))
            else:
                def hook(_m: nn.Module, _args: Any, out: Any, _name: str = t.name) -> torch.Tensor:
                    return _apply(_name, out)

                handles.append(t.module.register_forward_hook(hook))
        yield calls
    finally:
        for h in handles:
            h.remove()
