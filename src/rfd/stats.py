"""Uncertainty of accuracies measured on N images: Wilson intervals, a seeded bootstrap, paired differences and
the exact McNemar test. Plain functions on numpy arrays (no torch: tables and reports call them).

Why these: a robust accuracy is a proportion over images, so its 95% interval is Wilson's score interval, which
keeps its coverage near 0 and 1 where the normal approximation does not. The ``expected`` reading averages
per-image probabilities, so its interval is a percentile bootstrap over images. Two methods evaluated on the
*same* images are compared by the per-image difference (a paired bootstrap over images) and, for 0/1 outcomes,
McNemar's exact test on the discordant images. Whether a prediction orders a handful of items (layers) as a
measurement does is Spearman's rank correlation, with the exact permutation p-value (a few items: the normal
approximation does not hold)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["Estimate", "PairedDifference", "average_ranks", "bootstrap_mean", "mcnemar_exact", "paired_difference",
           "spearman", "spearman_exact_p", "wilson"]

_BOOT = 2000  # bootstrap resamples: the percentile error is well below the 0.1-point rounding of the tables


@dataclass(frozen=True)
class Estimate:
    """A fraction in [0, 1] with a ``level`` interval [low, high] and the number of images it rests on."""

    value: float
    low: float
    high: float
    n: int
    method: str = "wilson"  # "wilson" or "bootstrap"
    level: float = 0.95

    def to_dict(self) -> dict[str, float | int | str]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "interval": self.method,
                "level": self.level}

    def percent(self, digits: int = 1) -> str:
        """``"62.0 [55.1, 68.4]"`` (percent); ``"–"`` when there is nothing to estimate."""
        if self.n == 0 or math.isnan(self.value):
            return "–"
        return f"{100 * self.value:.{digits}f} [{100 * self.low:.{digits}f}, {100 * self.high:.{digits}f}]"


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, n: int, level: float = 0.95) -> Estimate:
    """Wilson score interval of ``successes`` out of ``n`` (NaNs when n = 0)."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "wilson", level)
    z = _z(level)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # the exact ends at 0 and n: rounding must not leave the true value outside
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Estimate(p, low, high, n, "wilson", level)


def bootstrap_mean(values: np.ndarray, *, level: float = 0.95, seed: int = 0, resamples: int = _BOOT) -> Estimate:
    """Mean of ``values`` (one per image, in [0, 1]) with a percentile-bootstrap interval over images (seeded:
    the same values give the same interval)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be one per image (1-D), got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("values hold NaN: every image needs a value")
    n = v.shape[0]
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "bootstrap", level)
    means = _resampled_means(v, seed, resamples)
    a = (1 - level) / 2
    low, high = np.quantile(means, [a, 1 - a])
    return Estimate(float(v.mean()), float(low), float(high), n, "bootstrap", level)


def _resampled_means(v: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.shape[0], size=(resamples, v.shape[0]))
    return v[idx].mean(1)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (images where only the first / only
    the second method is right): twice the binomial(b + c, 1/2) tail at min(b, c), capped at 1."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` of two methods' per-image outcomes on the same images, with a paired-bootstrap interval; for
    0/1 outcomes, the discordant counts and McNemar's exact p-value (NaN for fractional outcomes)."""

    difference: float
    low: float
    high: float
    n: int
    a_only: int  # images robust under a, broken under b (0/1 outcomes)
    b_only: int
    p_value: float
    level: float = 0.95

    def to_dict(self) -> dict[str, float | int]:
        return {"difference": self.difference, "low": self.low, "high": self.high, "n": self.n,
                "a_only": self.a_only, "b_only": self.b_only, "mcnemar_p": self.p_value, "level": self.level}


def paired_difference(a: np.ndarray, b: np.ndarray, *, level: float = 0.95, seed: int = 0,
                      resamples: int = _BOOT) -> PairedDifference:
    """Compare per-image outcomes ``a`` and ``b`` (same images, same order; values in [0, 1])."""
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape or va.ndim != 1:
        raise ValueError(f"paired outcomes need the same images: shapes {va.shape} and {vb.shape}")
    if np.isnan(va).any() or np.isnan(vb).any():
        raise ValueError("paired outcomes hold NaN: every image needs a value in both methods")
    n = va.shape[0]
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, 0, 0, math.nan, level)
    d = va - vb
    means = _resampled_means(d, seed, resamples)
    q = (1 - level) / 2
    low, high = np.quantile(means, [q, 1 - q])
    binary = bool(np.isin(va, (0.0, 1.0)).all() and np.isin(vb, (0.0, 1.0)).all())
    a_only = int(((va == 1) & (vb == 0)).sum()) if binary else 0
    b_only = int(((va == 0) & (vb == 1)).sum()) if binary else 0
    p = mcnemar_exact(a_only, b_only) if binary else math.nan
    return PairedDifference(float(d.mean()), float(low), float(high), n, a_only, b_only, p, level)


_EXACT_ITEMS = 8  # up to 8! = 40320 orderings the permutation p-value is enumerated; beyond, sampled


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties sharing their average rank (``[3, 1, 3] -> [2.5, 1, 2.5]``)."""
    v = np.asarray(values, dtype=np.float64)
    less = (v[..., None, :] < v[..., :, None]).sum(-1)
    equal = (v[..., None, :] == v[..., :, None]).sum(-1)
    return less + (equal + 1) / 2


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of ``x`` and ``y`` along the last axis (broadcast; NaN where either side is
    constant)."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = np.broadcast_arrays(rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True))
    den = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1), np.nan)


def spearman_exact_p(x: np.ndarray, y: np.ndarray, *, seed: int = 0, resamples: int = 20000) -> float:
    """Two-sided permutation p-value of Spearman's rho for 1-D ``x``, ``y``: the fraction of orderings of ``y``
    whose |rho| reaches the observed one (all orderings up to 8 items, else ``resamples`` seeded ones)."""
    from itertools import permutations

    xv, yv = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xv.ndim != 1 or xv.shape != yv.shape:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {xv.shape} and {yv.shape}")
    n = xv.shape[0]
    if n < 3:
        raise ValueError(f"a rank correlation needs at least 3 items, got {n}")
    obs = float(spearman(xv, yv))
    if math.isnan(obs):
        return math.nan
    if n <= _EXACT_ITEMS:
        orders = np.array(list(permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        orders = np.argsort(rng.random((resamples, n)), axis=1)
    rhos = spearman(xv[None, :], yv[orders])
    return float(np.mean(np.abs(rhos) >= abs(obs) - 1e-12))
