"""The defense families: one entry per defense, the only list of them.

A family says what a defense is called (in the API, YAML studies, CLI flags, the store), how tables label it,
whether it has a noise level (a fixed ``sigma`` or a target ``drop`` to calibrate), in which units, whether it
takes layers, and how its forward pass runs. Adding a defense means adding one :class:`Family` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rfd.defenses.aaa import aaa_logits

if TYPE_CHECKING:  # the forward functions run a DefendedModel; importing it here would be circular
    from rfd.defenses.defended import DefendedModel

__all__ = ["FAMILIES", "NOISE_FAMILIES", "PENULTIMATE", "Family", "family"]

# Special layer name: the input of the model's final classifier layer (the paper's default layer).
PENULTIMATE = "penultimate"


@dataclass(frozen=True, kw_only=True)
class Family:
    """One defense family."""

    name: str  # the name everywhere: DefenseSpec(family=...), YAML `family:`, `--defense`, the store
    label: str  # table label (the "Method" column)
    noise: bool  # has a noise level: a fixed sigma, or a target clean-accuracy drop that calibration turns into one
    layers: bool  # takes layers (module names noised together)
    units: str  # units of sigma (help texts and docs); "" without a level
    help: str  # one line for `--help`
    forward: Callable[[DefendedModel, torch.Tensor], torch.Tensor]  # logits (N, K) of [0, 1] images (N, C, H, W)


def _forward_none(d: DefendedModel, x: torch.Tensor) -> torch.Tensor:
    return d.model(x)


def _forward_input(d: DefendedModel, x: torch.Tensor) -> torch.Tensor:
    # RND/SND: pixel-unit noise on the [0, 1] image, not clipped (as in the RND paper): the noisy image may leave
    # [0, 1]; normalization inside the model handles any real values.
    d.injections["input"] += 1
    return d.model(d.gaussian(x).add_(x))


def _forward_feature(d: DefendedModel, x: torch.Tensor) -> torch.Tensor:
    with d.hooks_active():  # the hooks add noise at the layers only inside this block
        return d.model(x)


def _forward_logits(d: DefendedModel, x: torch.Tensor) -> torch.Tensor:
    logits = d.model(x)
    d.injections["logits"] += 1
    return d.gaussian(logits).add_(logits)


def _forward_aaa(d: DefendedModel, x: torch.Tensor) -> torch.Tensor:
    logits = d.model(x)
    post = aaa_logits(logits, d.spec.aaa)
    if logits.requires_grad:
        # Straight-through gradient (BPDA): the value is exactly AAA's (adding an exact zero), the gradient is the
        # undefended model's, so white-box and adaptive attacks can run against AAA instead of crashing.
        return post + (logits - logits.detach())
    return post


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(name="none", label="Base", noise=False, layers=False, units="", help="the model as is",
           forward=_forward_none),
    Family(name="input", label="Input", noise=True, layers=False, units="pixels of the [0, 1] image",
           help="Gaussian noise on the image (RND/SND)", forward=_forward_input),
    Family(name="feature", label="Feature", noise=True, layers=True,
           units="feature units, or feature stds with scaled", help="Gaussian noise on hidden features (the paper)",
           forward=_forward_feature),
    Family(name="logits", label="Logits", noise=True, layers=False, units="logits",
           help="Gaussian noise on the logits", forward=_forward_logits),
    Family(name="aaa", label="AAA", noise=False, layers=False, units="",
           help="AAA logit post-processing (Chen et al. 2022)", forward=_forward_aaa),
)}
NOISE_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.noise)


def family(name: str) -> Family:
    """The family called ``name``; unknown names fail with the list of known ones."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown defense family {name!r}; known: {', '.join(FAMILIES)}") from None
