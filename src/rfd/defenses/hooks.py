"""The forward hook that adds a defended module's feature noise at one layer."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # the hook calls back into its owner; importing it at run time would be circular
    from rfd.defenses.defended import DefendedModel

__all__ = ["NoiseHook"]


class NoiseHook:
    """Adds the owner's noise to one layer's output (forward hook) or first input (pre-hook).

    Holds only a weak reference to its owner: a forgotten defended module never keeps noise on the model."""

    def __init__(self, owner: DefendedModel, index: int) -> None:
        self.owner = weakref.ref(owner)
        self.index = index

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any = None) -> Any:
        owner = self.owner()
        if owner is None or not owner.noise_active:
            return None
        t = owner.targets[self.index]
        if t.pre:
            if not args or not isinstance(args[0], torch.Tensor):
                raise ValueError(f"layer {t.name!r} ({t.module_name}) got no positional tensor input to add noise to")
            return (owner.add_feature_noise(self.index, args[0]),) + tuple(args[1:])
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"layer {t.name!r} returns {type(output).__name__}, not a tensor; choose a module whose output is "
                "a tensor (e.g. a block or a conv/linear layer)"
            )
        return owner.add_feature_noise(self.index, output)
