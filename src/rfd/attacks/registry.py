"""Attacks by name, imported lazily (one attack per module)."""

from __future__ import annotations

import importlib
from typing import Any

from rfd.attacks.base import Attack

__all__ = ["ATTACKS", "get_attack_class", "make_attack", "list_attacks"]

# name -> "module:Class" under rfd.attacks
ATTACKS: dict[str, str] = {
    "square": "square:SquareAttack",
    "nes": "nes:NESAttack",
    "signhunt": "signhunt:SignHunt",
    "rays": "rays:RayS",
    "signflip": "signflip:SignFlip",
    "hsja": "hsja:HopSkipJump",
    "pgd": "pgd:PGD",
    "cw": "cw:CarliniWagner",
}


def list_attacks() -> list[str]:
    return list(ATTACKS)


def get_attack_class(name: str) -> type[Attack]:
    """The attack class registered as ``name``; unknown names fail with the list of known ones."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    module, cls = ATTACKS[name].split(":")
    return getattr(importlib.import_module(f"rfd.attacks.{module}"), cls)


def make_attack(name: str, **config: Any) -> Attack:
    """Build attack ``name`` with keyword settings of its config dataclass (e.g. norm, eps, budget, seed)."""
    return get_attack_class(name)(**config)
