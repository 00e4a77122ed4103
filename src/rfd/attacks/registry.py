"""Attacks by name: the registry, and the one place an attack name (or ``package.module:Class`` path) is resolved."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from rfd.attacks.bandits import Bandits
from rfd.attacks.base import Attack
from rfd.attacks.boundary import Boundary
from rfd.attacks.cw import CarliniWagner
from rfd.attacks.geoda import GeoDA
from rfd.attacks.hsja import HopSkipJump
from rfd.attacks.nes import NES
from rfd.attacks.nes_pi import NESPartialInfo
from rfd.attacks.pgd import PGD
from rfd.attacks.prgf import PRGF
from rfd.attacks.rays import RayS
from rfd.attacks.signflip import SignFlip
from rfd.attacks.signhunt import SignHunt
from rfd.attacks.signopt import SignOPT
from rfd.attacks.simba import SimBA
from rfd.attacks.square import Square
from rfd.attacks.transfer import Transfer
from rfd.attacks.zosignsgd import ZOSignSGD

__all__ = ["ATTACKS", "get_attack_class", "list_attacks", "make_attack"]

# registry name (the class's ``name``) -> attack class; the only registry of attacks. Order: score-based,
# decision-based, surrogate-based (transfer, transfer prior), white-box.
ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (
        Square, NES, NESPartialInfo, SignHunt, Bandits, SimBA, ZOSignSGD,
        RayS, SignFlip, HopSkipJump, SignOPT, GeoDA, Boundary,
        Transfer, PRGF,
        PGD, CarliniWagner,
    )
}


def list_attacks() -> list[str]:
    """Registry names of the built-in attacks, in registry order."""
    return list(ATTACKS)


def get_attack_class(name: str) -> type[Attack]:
    """The attack class for a registry name (``"square"``) or a ``"package.module:Class"`` path to any
    :class:`~rfd.attacks.base.Attack` subclass (your own attack).

    Raises ValueError: unknown name (the message lists the known ones), a path that cannot be imported (with
    the reason), or an object that is not a concrete Attack subclass."""
    if ":" not in name:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)} "
                             "(or 'package.module:Class' for your own Attack subclass)")
        return ATTACKS[name]
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"attack path {name!r} must look like 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import attack {name!r}: module {module_name!r} failed to import ({exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(f"cannot import attack {name!r}: {module_name!r} has no attribute {attr!r}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Attack)):
        # ValueError, not TypeError: a wrong name in a study or on the command line is a bad value
        raise ValueError(f"attack {name!r} is {obj!r}, not a subclass of rfd.attacks.Attack")
    if inspect.isabstract(obj):
        raise ValueError(f"attack {name!r} is abstract (it does not implement _run)")
    return obj


def make_attack(name: str, **config: Any) -> Attack:
    """Build attack ``name`` (a registry name or ``package.module:Class``, see :func:`get_attack_class`) with
    keyword settings of its config dataclass (e.g. norm, eps, budget, seed, eot). A setting the attack does not
    have raises ValueError naming it and listing the valid ones."""
    return get_attack_class(name)(**config)
