"""The only door between an attack and a model: query accounting, budgets, majority-vote success check."""

from rfd.blackbox.base import Access, BlackBox, BudgetExceeded
from rfd.blackbox.local import LocalBlackBox
from rfd.blackbox.losses import cross_entropy_loss, margin_loss
from rfd.blackbox.remote import RemoteBlackBox, RemoteError
from rfd.blackbox.threat import ThreatModel, distances

__all__ = [
    "Access", "BlackBox", "BudgetExceeded", "LocalBlackBox", "ThreatModel", "distances", "margin_loss",
    "cross_entropy_loss", "RemoteBlackBox", "RemoteError",
]
