"""Attack objectives computed from what a black box returns (scores): the paper's margin loss and CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "ascent_objective", "cross_entropy_loss", "margin_loss"]

# The objectives a score attack can ascend (its ``loss`` setting): the paper's margin, or the cross-entropy.
LOSSES: tuple[str, ...] = ("margin", "ce")


def margin_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's eq. (3): ``f_y(x) - max_{i != y} f_i(x)``, shape (N,) from scores (N, K) and labels (N,).

    Positive while the true class wins; the attacker minimises it and has succeeded once it is negative."""
    true = scores.gather(1, y[:, None]).squeeze(1)
    other = scores.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def cross_entropy_loss(scores: torch.Tensor, y: torch.Tensor, *, probabilities: bool = False) -> torch.Tensor:
    """Per-sample cross-entropy (N,) of logits (or probabilities, with ``probabilities=True``) against y."""
    if probabilities:
        return F.nll_loss(scores.clamp_min(1e-12).log(), y, reduction="none")
    return F.cross_entropy(scores, y, reduction="none")


def ascent_objective(scores: torch.Tensor, y: torch.Tensor, loss: str, *,
                     probabilities: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, margin), both (N,), from scores (N, K) and labels (N,): the objective a score attack *ascends*
    (``J = -margin`` for ``loss="margin"``, the cross-entropy for ``"ce"``; ``probabilities`` says the scores are
    softmax outputs) and the margin that decides whether the query looks adversarial (negative)."""
    m = margin_loss(scores, y)
    if loss == "margin":
        return -m, m
    if loss == "ce":
        return cross_entropy_loss(scores, y, probabilities=probabilities), m
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
