"""The only door between an attack and a model: query accounting, budgets, majority-vote success check (free or charged), final re-evaluation."""

from rfd.blackbox.base import Access, BlackBox, BudgetExceeded, CheckMode, GradientsUnavailable, votes_needed
from rfd.blackbox.local import LocalBlackBox
from rfd.blackbox.losses import cross_entropy_loss, margin_loss
from rfd.blackbox.remote import RemoteBlackBox, RemoteError
from rfd.blackbox.threat import ThreatModel, distances

__all__ = [
    "Access",
    "BlackBox",
    "BudgetExceeded",
    "CheckMode",
    "GradientsUnavailable",
    "LocalBlackBox",
    "RemoteBlackBox",
    "RemoteError",
    "ThreatModel",
    "cross_entropy_loss",
    "distances",
    "margin_loss",
    "votes_needed",
]
