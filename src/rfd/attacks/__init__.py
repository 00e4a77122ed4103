"""Query-based attacks (score- and decision-based), white-box attacks, and their shared base.

Attacks talk to models only through :mod:`rfd.blackbox`: score-based attacks (:class:`Square`, :class:`NES`,
:class:`SignHunt`, :class:`Bandits`, :class:`SimBA`, :class:`ZOSignSGD`) ask for scores, decision-based ones
(:class:`RayS`, :class:`SignFlip`, :class:`HopSkipJump`, :class:`SignOPT`, :class:`GeoDA`, :class:`Boundary`) for
labels; the surrogate-based ones craft on a model the attacker owns (:class:`Transfer`: no query at all;
:class:`PRGF`: scores, with the surrogate's gradient as a prior), and white-box attacks (:class:`PGD`, :class:`CarliniWagner`) for differentiable logits from a black
box that ``supports_gradients``; all report through the same result and majority-vote success check.
Attacks by name: :data:`ATTACKS`, :func:`get_attack_class`, :func:`make_attack`, :func:`list_attacks`."""

from rfd.attacks.bandits import Bandits, BanditsConfig
from rfd.attacks.base import Attack, AttackAccess, AttackConfig, AttackState
from rfd.attacks.boundary import Boundary, BoundaryConfig
from rfd.attacks.cw import CarliniWagner, CarliniWagnerConfig
from rfd.attacks.geoda import GeoDA, GeoDAConfig
from rfd.attacks.hsja import HopSkipJump, HopSkipJumpConfig
from rfd.attacks.nes import NES, NESConfig
from rfd.attacks.nes_pi import NESPartialInfo, NESPartialInfoConfig
from rfd.attacks.pgd import PGD, PGDConfig
from rfd.attacks.prgf import PRGF, PRGFConfig
from rfd.attacks.projections import project, project_l2, project_linf
from rfd.attacks.rays import RayS, RaySConfig
from rfd.attacks.registry import ATTACKS, get_attack_class, list_attacks, make_attack
from rfd.attacks.result import AttackResult
from rfd.attacks.signflip import SignFlip, SignFlipConfig
from rfd.attacks.signhunt import SignHunt, SignHuntConfig
from rfd.attacks.signopt import SignOPT, SignOPTConfig
from rfd.attacks.simba import SimBA, SimBAConfig
from rfd.attacks.square import Square, SquareConfig
from rfd.attacks.transfer import Transfer, TransferConfig
from rfd.attacks.whitebox import WhiteBoxAttack
from rfd.attacks.zosignsgd import ZOSignSGD, ZOSignSGDConfig

__all__ = [
    "ATTACKS",
    "NES",
    "PGD",
    "PRGF",
    "Attack",
    "AttackAccess",
    "AttackConfig",
    "AttackResult",
    "AttackState",
    "Bandits",
    "BanditsConfig",
    "Boundary",
    "BoundaryConfig",
    "CarliniWagner",
    "CarliniWagnerConfig",
    "GeoDA",
    "GeoDAConfig",
    "HopSkipJump",
    "HopSkipJumpConfig",
    "NESConfig",
    "NESPartialInfo",
    "NESPartialInfoConfig",
    "PGDConfig",
    "PRGFConfig",
    "RayS",
    "RaySConfig",
    "SignFlip",
    "SignFlipConfig",
    "SignHunt",
    "SignHuntConfig",
    "SignOPT",
    "SignOPTConfig",
    "SimBA",
    "SimBAConfig",
    "Square",
    "SquareConfig",
    "Transfer",
    "TransferConfig",
    "WhiteBoxAttack",
    "ZOSignSGD",
    "ZOSignSGDConfig",
    "get_attack_class",
    "list_attacks",
    "make_attack",
    "project",
    "project_l2",
    "project_linf",
]
