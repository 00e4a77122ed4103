"""The only door between an attack and a model: query accounting, budgets, majority-vote success check (free or charged), final re-evaluation; the output
settings (logits, probs, topk:K, top1, rounded:D, labels) every black box and the server share."""

from rfd.blackbox.base import Access, BlackBox, BudgetExceeded, CheckMode, GradientsUnavailable, votes_needed
from rfd.blackbox.local import LocalBlackBox
from rfd.blackbox.losses import cross_entropy_loss, margin_loss, visible_margin
from rfd.blackbox.outputs import OUTPUT_KINDS, OutputSpec, parse_output
from rfd.blackbox.remote import RemoteBlackBox, RemoteError
from rfd.blackbox.threat import ThreatModel, distances

__all__ = [
    "OUTPUT_KINDS",
    "Access",
    "BlackBox",
    "BudgetExceeded",
    "CheckMode",
    "GradientsUnavailable",
    "LocalBlackBox",
    "OutputSpec",
    "RemoteBlackBox",
    "RemoteError",
    "ThreatModel",
    "cross_entropy_loss",
    "distances",
    "margin_loss",
    "parse_output",
    "visible_margin",
    "votes_needed",
]
