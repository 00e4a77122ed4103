"""Query-based attacks (score- and decision-based), white-box attacks, and their shared base.

Attacks talk to models only through :mod:`rfd.blackbox`: score-based attacks (:class:`Square`, :class:`NES`,
:class:`SignHunt`) ask for scores, decision-based ones (:class:`RayS`, :class:`SignFlip`, :class:`HopSkipJump`)
for labels, and white-box attacks (:class:`PGD`, :class:`CarliniWagner`) for differentiable logits from a black
box that ``supports_gradients``; all report through the same result and majority-vote success check.
Attacks by name: :data:`ATTACKS`, :func:`get_attack_class`, :func:`make_attack`, :func:`list_attacks`."""

from rfd.attacks.base import Attack, AttackAccess, AttackConfig, AttackState
from rfd.attacks.cw import CarliniWagner, CarliniWagnerConfig
from rfd.attacks.hsja import HopSkipJump, HopSkipJumpConfig
from rfd.attacks.nes import NES, NESConfig
from rfd.attacks.pgd import PGD, PGDConfig
from rfd.attacks.projections import project, project_l2, project_linf
from rfd.attacks.rays import RayS, RaySConfig
from rfd.attacks.registry import ATTACKS, get_attack_class, list_attacks, make_attack
from rfd.attacks.result import AttackResult
from rfd.attacks.signflip import SignFlip, SignFlipConfig
from rfd.attacks.signhunt import SignHunt, SignHuntConfig
from rfd.attacks.square import Square, SquareConfig
from rfd.attacks.whitebox import WhiteBoxAttack

__all__ = [
    "ATTACKS",
    "NES",
    "PGD",
    "Attack",
    "AttackAccess",
    "AttackConfig",
    "AttackResult",
    "AttackState",
    "CarliniWagner",
    "CarliniWagnerConfig",
    "HopSkipJump",
    "HopSkipJumpConfig",
    "NESConfig",
    "PGDConfig",
    "RayS",
    "RaySConfig",
    "SignFlip",
    "SignFlipConfig",
    "SignHunt",
    "SignHuntConfig",
    "Square",
    "SquareConfig",
    "WhiteBoxAttack",
    "get_attack_class",
    "list_attacks",
    "make_attack",
    "project",
    "project_l2",
    "project_linf",
]
