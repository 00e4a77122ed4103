"""The threat model: an l_inf or l_2 ball of radius eps around the clean image, intersected with [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["BALL_TOL", "Norm", "ThreatModel", "distances"]

Norm = Literal["linf", "l2"]
# Float32 slack for "inside the ball": projections are exact up to rounding, never more than this.
BALL_TOL = 1e-5


def distances(x: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (l_inf, l_2) distances between batches x and x0 of shape (N, ...); each (N,)."""
    d = (x - x0).flatten(1)
    return d.abs().amax(1), d.norm(dim=1)


@dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """Where an adversarial image may lie: ``||x - x0||_norm <= eps`` and ``x`` in [0, 1]. eps in pixel units."""

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if not (self.eps > 0):
            raise ValueError(f"eps must be positive, got {self.eps}")

    def distance(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Distance (N,) in this threat model's norm."""
        linf, l2 = distances(x, x0)
        return linf if self.norm == "linf" else l2

    def contains(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """bool (N,): inside the eps-ball (up to float rounding) and inside [0, 1]."""
        in_ball = self.distance(x, x0) <= self.eps * (1 + BALL_TOL) + BALL_TOL
        in_box = (x.flatten(1).amin(1) >= 0) & (x.flatten(1).amax(1) <= 1)
        return in_ball & in_box
