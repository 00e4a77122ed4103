"""The three readings of robust accuracy of a (possibly randomized) model, defined once (``DESIGN.md``,
"Robust accuracy") and used by :class:`~rfd.attacks.result.AttackResult`, the results store's tables, reports
and comparisons.

Per image the inputs are: ``clean_correct`` (majority vote on the clean image), ``success`` and ``queries``
(the attack's verified claim and the query count when it was verified) and ``p_wrong``, the fraction of R
fresh uncounted forwards that misclassify the attack's final image (NaN where it was not measured).

* ``paper``: broken within B queries if the claim passed the check by then (the paper's 9-vote protocol);
* ``strict``: broken only if, moreover, the final image is misclassified in more than half of the R
  forwards (p > 1/2): a lucky pass of the check does not count;
* ``expected``: the chance that the model is right on the attacker's final image: 1 for a robust image,
  1 - p for a broken one, 0 for an image misclassified clean.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from rfd.stats import Estimate, bootstrap_mean, wilson

__all__ = ["READINGS", "Reading", "check_reading", "robust_estimate", "robust_values"]

Reading = Literal["paper", "strict", "expected"]
READINGS: tuple[Reading, ...] = ("paper", "strict", "expected")


def check_reading(reading: str) -> Reading:
    """``reading`` if it is one of :data:`READINGS`, else a ValueError naming them."""
    if reading not in READINGS:
        raise ValueError(f"unknown reading {reading!r} of robust accuracy (allowed: {', '.join(READINGS)})")
    return reading  # type: ignore[return-value]


def robust_values(clean_correct: np.ndarray, success: np.ndarray, queries: np.ndarray, p_wrong: np.ndarray,
                  budget: int, reading: str = "paper") -> np.ndarray:
    """float64 (N,): per image, how robust it is at ``budget`` queries under ``reading`` (0/1 for ``paper``
    and ``strict``, a probability for ``expected``). NaN for images whose reading needs a ``p_wrong`` that was
    not measured (a store from before re-evaluation)."""
    r = check_reading(reading)
    cc = np.asarray(clean_correct, dtype=bool)
    claimed = np.asarray(success, dtype=bool) & (np.asarray(queries) <= budget) & cc
    if r == "paper":
        return (cc & ~claimed).astype(np.float64)
    p = np.asarray(p_wrong, dtype=np.float64)
    out = cc.astype(np.float64)
    if r == "strict":
        out[claimed] = np.where(np.isnan(p[claimed]), np.nan, (p[claimed] <= 0.5).astype(np.float64))
    else:
        out[claimed] = 1.0 - p[claimed]
    return out


def robust_estimate(values: np.ndarray, reading: str, *, level: float = 0.95, seed: int = 0) -> Estimate:
    """Robust accuracy with its interval from :func:`robust_values`: Wilson for the 0/1 readings, a seeded
    bootstrap over images for ``expected``; NaN when any image's value is unknown."""
    v = np.asarray(values, dtype=np.float64)
    if v.size and np.isnan(v).any():
        return Estimate(float("nan"), float("nan"), float("nan"), int(v.size),
                        "bootstrap" if reading == "expected" else "wilson", level)
    if check_reading(reading) == "expected":
        return bootstrap_mean(v, level=level, seed=seed)
    return wilson(int(v.sum()), int(v.size), level)
