"""Query-based attacks (score- and decision-based), white-box attacks, and their shared base.

Attacks talk to models only through :mod:`rfd.blackbox` (white-box attacks take the model for gradients but
still report through the same result and majority-vote success check)."""

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.projections import project, project_l2, project_linf
from rfd.attacks.registry import get_attack_class, list_attacks, make_attack
from rfd.attacks.result import AttackResult

__all__ = [
    "Attack", "AttackConfig", "AttackState", "AttackResult", "project", "project_l2", "project_linf",
    "get_attack_class", "list_attacks", "make_attack",
]
