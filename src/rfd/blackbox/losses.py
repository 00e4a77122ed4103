"""Attack objectives computed from what a black box returns (scores): the paper's margin loss and CE, and the
margin of a partial answer (top-k, top-1: hidden classes NaN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "ascent_objective", "cross_entropy_loss", "margin_loss", "visible_margin"]

# The objectives a score attack can ascend (its ``loss`` setting): the paper's margin, or the cross-entropy.
LOSSES: tuple[str, ...] = ("margin", "ce")


def margin_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's eq. (3): ``f_y(x) - max_{i != y} f_i(x)``, shape (N,) from scores (N, K) and labels (N,).

    Positive while the true class wins; the attacker minimises it and has succeeded once it is negative."""
    true = scores.gather(1, y[:, None]).squeeze(1)
    other = scores.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def visible_margin(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The margin (N,) computable from a partial answer: probabilities (N, K) with hidden classes NaN (output
    settings topk:K and top1). ``p_y - max`` over the *visible* other classes, with two documented fallbacks:

    * the true class is hidden: another class is on top, so the image already looks adversarial; its probability
      is taken as 0 (the margin is minus the best visible probability: negative, as it must be);
    * no other class is visible (top1 answering the true class): the best other is bounded by the remaining mass
      ``1 - p_y``, which is used (margin ``2 p_y - 1``, an upper bound of the true margin).

    Without NaN it equals :func:`margin_loss` of the probabilities."""
    seen = ~torch.isnan(probs)
    true = probs.gather(1, y[:, None]).squeeze(1)
    true_seen = seen.gather(1, y[:, None]).squeeze(1)
    other = probs.masked_fill(~seen, float("-inf")).scatter(1, y[:, None], float("-inf")).amax(1)
    true = torch.where(true_seen, true, torch.zeros_like(true))
    other = torch.where(torch.isinf(other), 1 - true, other)
    return true - other


def cross_entropy_loss(scores: torch.Tensor, y: torch.Tensor, *, probabilities: bool = False) -> torch.Tensor:
    """Per-sample cross-entropy (N,) of logits (or probabilities, with ``probabilities=True``) against y."""
    if probabilities:
        return F.nll_loss(scores.clamp_min(1e-12).log(), y, reduction="none")
    return F.cross_entropy(scores, y, reduction="none")


def ascent_objective(scores: torch.Tensor, y: torch.Tensor, loss: str, *,
                     probabilities: bool = False, partial: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, margin), both (N,), from scores (N, K) and labels (N,): the objective a score attack *ascends*
    (``J = -margin`` for ``loss="margin"``, the cross-entropy for ``"ce"``; ``probabilities`` says the scores are
    softmax outputs; ``partial`` that hidden classes are NaN, see :func:`visible_margin`) and the margin that
    decides whether the query looks adversarial (negative)."""
    m = visible_margin(scores, y) if partial else margin_loss(scores, y)
    if loss == "margin":
        return -m, m
    if loss == "ce":
        if partial:
            raise ValueError("the cross-entropy needs the true class's probability, which a partial answer "
                             "(topk, top1) hides; use loss='margin'")
        return cross_entropy_loss(scores, y, probabilities=probabilities), m
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
