"""Calibrate the noise level: find sigma so that expected clean accuracy drops by a chosen amount.

Expected accuracy falls (in practice monotonically) as sigma grows. The search works on a log scale: it
brackets the target by multiplying or dividing sigma by 4, then shrinks the bracket (regula falsi in log sigma,
Illinois variant, safeguarded towards bisection) until the accuracy is within the tolerance. Every
sigma is evaluated with the same noise draws (the defended module is re-seeded each time, and its noise is
``sigma * z`` with the same ``z``), so accuracy is a deterministic, step-wise function of sigma and the search
is reproducible for a seed (common random numbers).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rfd.data.checks import check_images_labels
from rfd.defenses.accuracy import clean_accuracy, correct_counts, expected_accuracy_se
from rfd.defenses.defended import DefendedModel
from rfd.defenses.families import NOISE_FAMILIES
from rfd.defenses.layers import resolve_layers
from rfd.defenses.scales import feature_std
from rfd.defenses.spec import DefenseSpec
from rfd.models.fast import FastModel, FastSpec, accelerate

__all__ = ["DEFAULT_SIGMA0", "CalibrationResult", "calibrate"]

log = logging.getLogger(__name__)

# Starting points of the search (the bracket grows from here): pixels for input noise, logits for logits noise,
# feature stds for scaled feature noise. Unscaled feature noise starts at half the layer's typical feature std.
DEFAULT_SIGMA0 = {"input": 0.05, "logits": 1.0, "feature_scaled": 0.5}
_GROW = 4.0  # bracket growth factor per step
_MAX_BRACKET = 24  # 4^24 ~ 3e14: no accuracy curve needs more


@dataclass(frozen=True, kw_only=True)
class CalibrationResult:
    """Outcome of :func:`calibrate`. Accuracies are fractions in [0, 1] on the calibration images."""

    spec: DefenseSpec  # the input spec with the calibrated sigma (and its target drop)
    sigma: float  # calibrated noise std (units of the family: pixels, feature units or feature stds, logits)
    accuracy: float  # expected accuracy at sigma (mean over `draws` noise draws)
    accuracy_se: float  # Monte Carlo standard error of `accuracy` (noise draws; images fixed)
    base_accuracy: float  # undefended accuracy on the same images
    drop: float  # base_accuracy - accuracy (achieved)
    target_drop: float  # requested drop
    tol: float  # requested tolerance on |drop - target_drop|
    converged: bool  # |drop - target_drop| <= tol
    forwards: int  # image forwards spent (images x passes), base and std measurement included
    iterations: int  # sigma values evaluated
    draws: int  # noise draws per evaluated sigma
    n: int  # calibration images
    seed: int  # seed of the calibration noise draws
    history: tuple[tuple[float, float], ...] = field(default=())  # (sigma, expected accuracy), in search order

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (spec as its own dict)."""
        return {
            "sigma": self.sigma, "accuracy": self.accuracy, "accuracy_se": self.accuracy_se,
            "base_accuracy": self.base_accuracy, "drop": self.drop, "target_drop": self.target_drop,
            "tol": self.tol, "converged": self.converged, "forwards": self.forwards, "iterations": self.iterations,
            "draws": self.draws, "n": self.n, "seed": self.seed, "spec": self.spec.to_dict(),
            "history": [list(h) for h in self.history],
        }


def _acc_at(history: list[tuple[float, float]], sigma: float) -> float:
    return next(a for s, a in reversed(history) if s == sigma)


def calibrate(
    model: nn.Module,
    spec: DefenseSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    draws: int = 10,
    tol: float = 0.001,
    seed: int = 0,
    sigma0: float | None = None,
    max_iter: int = 40,
    batch_size: int = 500,
    progress: bool = False,
    fast: str | FastSpec | None = None,
) -> CalibrationResult:
    """Find sigma with expected clean accuracy ``base - spec.drop`` on the calibration images.

    Args:
        model: the UNDEFENDED classifier ([0, 1] images -> logits).
        spec: a noise defense ("input", "feature" or "logits", its layers and ``scaled``) with its target
            ``drop``, the absolute accuracy drop to reach (e.g. 0.02 for two points); a sigma on it is ignored (it
            is what we search).
        images, labels: the CALIBRATION split (float32 (N, C, H, W) in [0, 1], int64 (N,)); never the images
            you evaluate on. Scaled noise measures its per-feature std on these same images.
        draws: noise draws per evaluated sigma (expected accuracy = their mean).
        tol: stop when |achieved drop - spec.drop| <= tol.
        seed: seed of the calibration noise (same seed, same result).
        sigma0: first sigma tried (default: see ``DEFAULT_SIGMA0``).
        max_iter: most sigma values to evaluate.
        batch_size: images per forward. Which noise lands on which image depends on it, so results are
            reproducible for a given (seed, draws, batch_size).
        fast: forward speed-ups of the noisy forwards (:func:`rfd.models.accelerate`; same draws, so the same
            accuracies up to float tolerance); None = plain eager.

    Returns:
        :class:`CalibrationResult`; the evaluated sigma whose accuracy is closest to the target (``converged``
        says whether it is within ``tol``).
    """
    if isinstance(model, DefendedModel):
        raise ValueError("calibrate() needs the undefended model; pass defended.model, not the defended module")
    if not isinstance(spec, DefenseSpec):
        raise ValueError(f"spec must be a DefenseSpec, got {type(spec).__name__}")
    if not spec.is_noise:
        raise ValueError(f"only noise defenses ({', '.join(NOISE_FAMILIES)}) have a sigma to calibrate, not "
                         f"{spec.family!r}")
    if spec.drop is None:
        raise ValueError(f"calibrate() needs the target drop on the spec: DefenseSpec(family={spec.family!r}, "
                         "drop=0.02, ...)")
    target_drop = spec.drop
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if sigma0 is not None and not (math.isfinite(sigma0) and sigma0 > 0):
        raise ValueError(f"sigma0 must be a positive finite number, got {sigma0!r}")
    check_images_labels(images, labels)
    n = images.shape[0]

    base = clean_accuracy(model, images, labels, batch_size=batch_size)
    forwards = n
    target = base - target_drop
    if target <= 0:
        raise ValueError(f"target_drop {target_drop} is not below the base accuracy {base:.4f} on these images")

    if sigma0 is None:
        if spec.info.layers and not spec.scaled:
            stds = feature_std(model, resolve_layers(model, spec.layers), images, batch_size=batch_size)
            forwards += n
            rms = float(torch.stack([s.double().pow(2).mean() for s in stds]).mean().sqrt())
            sigma0 = 0.5 * rms if rms > 0 else 1.0
        else:
            sigma0 = DEFAULT_SIGMA0["feature_scaled" if spec.info.layers else spec.family]

    defended = DefendedModel(model, spec.replace(sigma=float(sigma0)), seed=int(seed), calib_images=images,
                             batch_size=batch_size)
    if spec.scaled:
        forwards += n
    noisy = accelerate(defended, fast)  # what forwards; ``core`` is the defended module whose sigma and seed it uses
    core = noisy.inner if isinstance(noisy, FastModel) else defended
    assert isinstance(core, DefendedModel)
    history: list[tuple[float, float]] = []
    best: dict[str, Any] = {}
    bar = tqdm(total=max_iter, disable=not progress, desc="calibrate", leave=False)

    def evaluate(sigma: float) -> float:
        nonlocal forwards
        core.set_sigma(sigma).manual_seed(seed)  # same draws z for every sigma: noise = sigma * z
        with torch.no_grad():
            c = correct_counts(noisy, images, labels, draws=draws, batch_size=batch_size)
        forwards += draws * n
        acc = float(c.double().mean())
        history.append((sigma, acc))
        bar.update(1)
        bar.set_postfix(sigma=f"{sigma:.4g}", acc=f"{acc:.4f}")
        log.debug("calibrate: sigma %.6g -> expected accuracy %.4f (target %.4f)", sigma, acc, target)
        if not best or abs(acc - target) < abs(best["acc"] - target):
            best.update(sigma=sigma, acc=acc, counts=c)
        return acc

    try:
        lo, hi = None, None  # lo: accuracy >= target (too little noise); hi: accuracy < target
        sigma = float(sigma0)
        acc = evaluate(sigma)
        for _ in range(_MAX_BRACKET):
            if abs(acc - target) <= tol or len(history) >= max_iter:
                break
            if acc >= target:
                lo = sigma
                if hi is not None:
                    break
                sigma *= _GROW
            else:
                hi = sigma
                if lo is not None:
                    break
                sigma /= _GROW
            acc = evaluate(sigma)
        else:
            raise ValueError(f"could not bracket the target accuracy {target:.4f}: last sigma {sigma:.3g} gave "
                             f"{acc:.4f}; the accuracy does not respond to this noise")
        if lo is not None and hi is not None:
            # Bracketed search in log(sigma) on f = accuracy - target (f(lo) >= 0 > f(hi)): regula falsi with the
            # Illinois modification (halve the stale end's f so the bracket keeps shrinking from both sides),
            # safeguarded to stay inside the middle 80% of the bracket; plain bisection when f is flat.
            f_lo, f_hi = _acc_at(history, lo) - target, _acc_at(history, hi) - target
            side = 0
            while abs(best["acc"] - target) > tol and len(history) < max_iter and hi / lo > 1 + 1e-6:
                a, b = math.log(lo), math.log(hi)
                t = a + (b - a) * f_lo / (f_lo - f_hi) if f_lo > f_hi else 0.5 * (a + b)
                t = min(max(t, a + 0.1 * (b - a)), b - 0.1 * (b - a))
                sigma = math.exp(t)
                acc = evaluate(sigma)
                if acc >= target:
                    lo, f_lo = sigma, acc - target
                    if side == -1:
                        f_hi *= 0.5
                    side = -1
                else:
                    hi, f_hi = sigma, acc - target
                    if side == 1:
                        f_lo *= 0.5
                    side = 1
    finally:
        bar.close()
        defended.remove()

    acc = best["acc"]
    result = CalibrationResult(
        spec=spec.replace(sigma=float(best["sigma"])), sigma=float(best["sigma"]), accuracy=acc,
        accuracy_se=expected_accuracy_se(best["counts"]), base_accuracy=base, drop=base - acc,
        target_drop=float(target_drop), tol=float(tol), converged=abs(acc - target) <= tol, forwards=forwards,
        iterations=len(history), draws=draws, n=n, seed=int(seed), history=tuple(history),
    )
    if not result.converged:
        log.warning("calibration stopped %.4f from its target drop after %d evaluations (tol %.4f)",
                    abs(result.drop - target_drop), result.iterations, tol)
    return result
