"""Per-sample outcome of an attack, and robust accuracy at any budget derived from it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rfd.attacks.readings import READINGS, robust_estimate, robust_values
from rfd.stats import Estimate

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
        verification_forwards: forwards spent on uncounted success checks (the clean check included).
        config: the attack's settings as a dict.
        extras: optional per-sample (N,) outputs particular to an attack, by name (e.g. ``"radius"``, the
            decision-based attacks' best boundary distance); empty for attacks that have none.
        checks, check_forwards: int64 (N,), success checks of the sample's claims and the forwards they used
            (charged as queries too when ``check == "charged"``).
        claims: per sample, the query count at each claim offered to the check, in order.
        p_wrong: float64 (N,), fraction of ``reevaluate`` fresh uncounted forwards that misclassify ``x_adv``
            of a successful sample (NaN for the others); the ``strict`` and ``expected`` readings use it.
        clean_p_wrong: float64 (N,), the same fraction on the clean images (expected clean accuracy).
        verify, check, reevaluate: the check's votes, whether they were charged, and R.
        reevaluation_forwards: forwards of the final re-evaluation (uncounted).
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
    checks: torch.Tensor | None = None
    check_forwards: torch.Tensor | None = None
    claims: list[list[int]] = field(default_factory=list)
    p_wrong: torch.Tensor | None = None
    clean_p_wrong: torch.Tensor | None = None
    verify: int = 9
    check: str = "free"
    reevaluate: int = 0
    reevaluation_forwards: int = 0

    @property
    def n(self) -> int:
        return int(self.success.shape[0])

    def _budget(self, budget: int | None) -> int:
        b = self.budget if budget is None else int(budget)
        if b > self.budget:
            raise ValueError(f"budget {b} exceeds the run's budget {self.budget}; robust accuracy is unknown there")
        return b

    def robust_values(self, budget: int | None = None, reading: str = "paper") -> np.ndarray:
        """float64 (N,): per image, robust at ``budget`` queries under ``reading`` (see
        :mod:`rfd.attacks.readings`): 0/1 for ``paper``/``strict``, a probability for ``expected``."""
        p = self.p_wrong if self.p_wrong is not None else torch.full((self.n,), float("nan"))
        return robust_values(self.clean_correct.numpy(), self.success.numpy(), self.queries.numpy(),
                             p.double().numpy(), self._budget(budget), reading)

    def robust_at(self, budget: int | None = None, reading: str = "paper") -> torch.Tensor:
        """bool (N,): correct on the clean image and not broken within ``budget`` queries (default: all), under
        the 0/1 reading ``paper`` or ``strict``."""
        if reading == "expected":
            raise ValueError("the 'expected' reading is a probability per image: use robust_values")
        return torch.from_numpy(self.robust_values(budget, reading) == 1.0)

    def robust_accuracy(self, budget: int | None = None, reading: str = "paper") -> float:
        """Robust accuracy at ``budget`` queries under ``reading`` (misclassified clean images count as not
        robust)."""
        return float(self.robust_values(budget, reading).mean())

    def robust_estimate(self, budget: int | None = None, reading: str = "paper") -> Estimate:
        """Robust accuracy with its 95% interval (Wilson; bootstrap over images for ``expected``)."""
        return robust_estimate(self.robust_values(budget, reading), reading)

    def robust_curve(self, budgets: Iterable[int], reading: str = "paper") -> dict[int, float]:
        """{budget: robust accuracy} for each budget <= the run's budget."""
        return {int(b): self.robust_accuracy(int(b), reading) for b in budgets}

    @property
    def clean_accuracy(self) -> float:
        """Majority-vote clean accuracy (the paper's Acc)."""
        return float(self.clean_correct.double().mean())

    @property
    def expected_clean_accuracy(self) -> float:
        """Mean over images of the chance one forward classifies the clean image correctly (NaN if not
        re-evaluated)."""
        if self.clean_p_wrong is None:
            return float("nan")
        return float(1 - self.clean_p_wrong.double().mean())

    @property
    def lucky(self) -> int:
        """Successful samples whose final image is misclassified in at most half of the re-evaluation forwards:
        they passed the check by luck (count in ``paper``, not in ``strict``)."""
        if self.p_wrong is None:
            return 0
        return int((self.success & ~(self.p_wrong > 0.5)).sum())

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
        """Headline numbers as a JSON-ready dict: ``robust_accuracy`` is the ``paper`` reading (as before);
        ``readings`` holds all three at every checkpoint, each with its 95% interval."""
        cps = sorted({*[int(c) for c in checkpoints if int(c) <= self.budget], self.budget})
        checks = int(self.checks.sum()) if self.checks is not None else 0
        check_fw = int(self.check_forwards.sum()) if self.check_forwards is not None else 0
        return {
            "attack": self.attack, "norm": self.norm, "eps": self.eps, "budget": self.budget, "n": self.n,
            "clean_accuracy": self.clean_accuracy, "expected_clean_accuracy": self.expected_clean_accuracy,
            "robust_accuracy": self.robust_curve(cps),
            "readings": {r: {b: self.robust_estimate(b, r).to_dict() for b in cps} for r in READINGS},
            "success_rate": self.success_rate, **self.query_stats(),
            "lucky": self.lucky, "verify": self.verify, "check": self.check, "reevaluate": self.reevaluate,
            "checks": checks, "check_forwards": check_fw, "reevaluation_forwards": self.reevaluation_forwards,
        }

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per sample for stores and CSV: index, clean_correct, success, queries, linf, l2,
        checks, check_forwards, claims (query counts), p_wrong and clean_p_wrong (None when not measured)."""
        n = self.n
        checks = self.checks.tolist() if self.checks is not None else [0] * n
        cfw = self.check_forwards.tolist() if self.check_forwards is not None else [0] * n
        claims = self.claims or [[] for _ in range(n)]
        pw = _optional(self.p_wrong, n)
        cpw = _optional(self.clean_p_wrong, n)
        return [
            {"index": i, "clean_correct": bool(c), "success": bool(s), "queries": int(q), "linf": float(a),
             "l2": float(b), "checks": int(k), "check_forwards": int(f), "claims": list(cl), "p_wrong": p,
             "clean_p_wrong": cp}
            for i, (c, s, q, a, b, k, f, cl, p, cp) in enumerate(zip(
                self.clean_correct.tolist(), self.success.tolist(), self.queries.tolist(), self.linf.tolist(),
                self.l2.tolist(), checks, cfw, claims, pw, cpw))
        ]


def _optional(v: torch.Tensor | None, n: int) -> list[float | None]:
    """Per-sample floats with None where a value was not measured (NaN or no tensor)."""
    if v is None:
        return [None] * n
    return [None if math.isnan(x) else float(x) for x in v.double().tolist()]
