"""The black box: the only door between an attack and a model.

It counts queries per sample, enforces per-sample budgets, and decides success by majority vote
(uncounted, as in the paper's evaluation, Appendix D.4)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch

from rfd.blackbox.threat import ThreatModel

__all__ = ["BlackBox", "BudgetExceeded", "Access"]

Access = Literal["scores", "labels"]


class BudgetExceeded(RuntimeError):
    """Raised when a query would take a sample past its budget (an attack bug: attacks must check first)."""


class BlackBox(ABC):
    """Query access to a (possibly randomized) classifier.

    Subclasses implement :meth:`_forward` (one forward of a batch, returning scores (B, K)). Everything an
    attacker pays for goes through :meth:`scores` or :meth:`labels`, which add to the per-sample counts.

    Args:
        access: ``"scores"`` (logits or probabilities) or ``"labels"`` (hard labels only).
        budget: per-sample query budget, or None for unlimited.
        verify: forwards per success check; majority decides (paper: 9; 1 = the "lucky" mode of Table 15).

    Call :meth:`start` with the number of samples before an attack; sample ``i`` is row ``i`` of the attack's
    batch and ``idx`` arguments are int64 (B,) tensors of such row numbers.
    """

    def __init__(self, *, access: Access = "scores", budget: int | None = None, verify: int = 9) -> None:
        if access not in ("scores", "labels"):
            raise ValueError(f"access must be 'scores' or 'labels', got {access!r}")
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be >= 1 or None, got {budget}")
        if verify < 1:
            raise ValueError(f"verify must be >= 1 forwards, got {verify}")
        self.access: Access = access
        self.budget = budget
        self.verify = verify
        self._queries = torch.zeros(0, dtype=torch.int64)
        self.verification_forwards = 0  # forwards spent on success checks (not charged to the attacker)

    # -- to implement -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where tensors given to and returned by this black box live."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """K, the number of classes."""

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """One forward of images (B, C, H, W) in [0, 1]: scores (B, K), fresh randomness per call."""

    def _forward_labels(self, x: torch.Tensor) -> torch.Tensor:
        """One forward returning labels (B,); override when the backend only gives labels."""
        return self._forward(x).argmax(1)

    # -- accounting ---------------------------------------------------------------------------------
    def start(self, n: int) -> None:
        """Begin a new attack on ``n`` samples: all counts to zero."""
        if n < 1:
            raise ValueError(f"need at least one sample, got n={n}")
        self._queries = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.verification_forwards = 0

    @property
    def queries(self) -> torch.Tensor:
        """int64 (n,): queries charged to each sample since :meth:`start` (a copy)."""
        return self._queries.clone()

    def remaining(self, idx: torch.Tensor) -> torch.Tensor:
        """int64 (B,): queries left for samples ``idx`` (a large number when unlimited)."""
        if self.budget is None:
            return torch.full_like(idx, 2**62)
        return self.budget - self._queries[idx]

    def _charge(self, idx: torch.Tensor, x: torch.Tensor, cost: int) -> None:
        if idx.dtype != torch.int64 or idx.dim() != 1 or idx.shape[0] != x.shape[0]:
            raise ValueError(
                f"idx must be int64 of shape ({x.shape[0]},) matching the batch, got {idx.dtype} {tuple(idx.shape)}"
            )
        if self._queries.numel() == 0:
            raise RuntimeError("call start(n) before querying the black box")
        # Sum the charge per sample first: a batch may hold several rows of one sample (NES probes).
        add = torch.zeros_like(self._queries).index_add_(0, idx, torch.full_like(idx, cost))
        if self.budget is not None:
            over = self._queries + add > self.budget
            if bool(over.any()):
                first = int(torch.nonzero(over)[0])
                raise BudgetExceeded(
                    f"sample {first} would use {int(self._queries[first] + add[first])} queries, "
                    f"budget is {self.budget}"
                )
        self._queries += add

    # -- queries ------------------------------------------------------------------------------------
    def scores(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """Scores (B, K) of images ``x`` (B, C, H, W) for samples ``idx`` (B,); each row costs ``repeats``.

        With ``repeats = M > 1`` (EOT) the answer is the mean of M forwards, and M queries are charged."""
        if self.access != "scores":
            raise PermissionError("this black box answers labels only; score-based attacks cannot use it")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self._charge(idx, x, repeats)
        out = self._forward(x)
        for _ in range(repeats - 1):
            out = out + self._forward(x)
        return out / repeats if repeats > 1 else out

    def labels(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """Labels (B,) of images ``x`` for samples ``idx``; each row costs ``repeats`` (majority of them)."""
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self._charge(idx, x, repeats)
        if repeats == 1:
            return self._forward_labels(x)
        votes = torch.stack([self._forward_labels(x) for _ in range(repeats)], 1)
        return torch.mode(votes, 1).values

    # -- success check (not charged) ----------------------------------------------------------------
    def misclassified_votes(self, x: torch.Tensor, y: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """int64 (B,): how many of ``k`` (default ``verify``) forwards do not predict ``y``. Not charged."""
        k = self.verify if k is None else k
        wrong = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for _ in range(k):
            wrong += (self._forward_labels(x) != y).long()
        self.verification_forwards += k * x.shape[0]
        return wrong

    def is_adversarial(
        self, x: torch.Tensor, y: torch.Tensor, *, x0: torch.Tensor | None = None, threat: ThreatModel | None = None
    ) -> torch.Tensor:
        """bool (B,): the majority of ``verify`` forwards misclassify ``x`` (not charged as queries), and, when
        ``x0`` and ``threat`` are given, ``x`` lies in the eps-ball around ``x0`` and in [0, 1]."""
        ok = self.misclassified_votes(x, y) * 2 > self.verify
        if threat is not None:
            if x0 is None:
                raise ValueError("is_adversarial: threat given without the clean images x0")
            ok = ok & threat.contains(x, x0)
        return ok
