"""Per-sample outcome of an attack, and robust accuracy at any budget derived from it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["AttackResult"]


@dataclass
class AttackResult:
    """What an attack found, per sample (N = number of attacked images).

    Attributes:
        attack, norm, eps, budget: what was run (eps in pixel units; budget in queries per sample).
        clean_correct: bool (N,), the clean image is classified correctly by majority vote (not charged).
        success: bool (N,), a verified adversarial image inside the eps-ball was found.
        queries: int64 (N,), queries charged when success was first verified; all queries spent otherwise
            (0 for images misclassified clean: they are not attacked).
        x_adv: float32 (N, C, H, W), the final image (the adversarial one on success; on failure the attack's
            last iterate, or x itself).
        linf, l2: float (N,), distances of ``x_adv`` from the clean image.
        verification_forwards: forwards spent on uncounted success checks.
        config: the attack's settings as a dict.
        extras: optional per-sample (N,) outputs particular to an attack, by name (e.g. ``"radius"``, the
            decision-based attacks' best boundary distance); empty for attacks that have none.
    """

    attack: str
    norm: str
    eps: float
    budget: int
    clean_correct: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor
    x_adv: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    verification_forwards: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.success.shape[0])

    def robust_at(self, budget: int | None = None) -> torch.Tensor:
        """bool (N,): correct on the clean image and not broken within ``budget`` queries (default: all)."""
        b = self.budget if budget is None else budget
        if b > self.budget:
            raise ValueError(f"budget {b} exceeds the run's budget {self.budget}; robust accuracy is unknown there")
        broken = self.success & (self.queries <= b)
        return self.clean_correct & ~broken

    def robust_accuracy(self, budget: int | None = None) -> float:
        """Fraction of the N images that are robust at ``budget`` queries (misclassified clean images count
        as not robust)."""
        return float(self.robust_at(budget).double().mean())

    def robust_curve(self, budgets: Iterable[int]) -> dict[int, float]:
        """{budget: robust accuracy} for each budget <= the run's budget."""
        return {int(b): self.robust_accuracy(int(b)) for b in budgets}

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.double().mean())

    @property
    def success_rate(self) -> float:
        """Fraction of the clean-correct images that the attack broke (nan if none were correct)."""
        c = self.clean_correct
        return float(self.success[c].double().mean()) if bool(c.any()) else float("nan")

    def query_stats(self) -> dict[str, float]:
        """Mean and median queries of the successful samples (nan when none succeeded)."""
        q = self.queries[self.success].double()
        if q.numel() == 0:
            return {"queries_mean": float("nan"), "queries_median": float("nan")}
        return {"queries_mean": float(q.mean()), "queries_median": float(q.median())}

    def summary(self, checkpoints: Iterable[int] = ()) -> dict[str, Any]:
        """Headline numbers as a JSON-ready dict."""
        cps = sorted({*[int(c) for c in checkpoints if int(c) <= self.budget], self.budget})
        return {
            "attack": self.attack, "norm": self.norm, "eps": self.eps, "budget": self.budget, "n": self.n,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_curve(cps),
            "success_rate": self.success_rate, **self.query_stats(),
        }

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per sample (index, clean_correct, success, queries, linf, l2) for stores and CSV."""
        return [
            {"index": i, "clean_correct": bool(c), "success": bool(s), "queries": int(q), "linf": float(a), "l2": float(b)}
            for i, (c, s, q, a, b) in enumerate(zip(
                self.clean_correct.tolist(), self.success.tolist(), self.queries.tolist(), self.linf.tolist(),
                self.l2.tolist()))
        ]
