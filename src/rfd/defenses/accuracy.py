"""Clean accuracy of a randomized model, three ways (the paper's Table 8 and Appendix C.1).

* expected: the mean over ``draws`` independent noise draws of the accuracy (the paper's eq. 11);
* majority: an image counts as correct unless most of ``k`` draws misclassify it (the same rule the black
  box uses to call an input adversarial, so the two agree);
* extreme: an image is wrong if ANY of ``pairs`` antithetic pairs (noise ``+delta`` and ``-delta``) misleads it,
  i.e. ``2 * pairs`` forwards must all be right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from rfd.data.checks import check_images_labels
from rfd.defenses.defended import DefendedModel
from rfd.defenses.scales import device_of

__all__ = ["RandomizedAccuracy", "clean_accuracy", "correct_counts", "expected_accuracy_se", "randomized_accuracy"]


@dataclass(frozen=True, kw_only=True)
class RandomizedAccuracy:
    """Clean accuracy of one defended model on ``n`` images (fractions in [0, 1])."""

    accuracy: float  # expected accuracy: mean over `draws` noise draws
    accuracy_se: float  # Monte Carlo standard error of `accuracy` over the noise (images fixed); nan if draws < 2
    accuracy_majority: float  # correct unless the majority of `majority_k` draws misclassify
    accuracy_extreme: float  # correct only if all 2 * `pairs` antithetic forwards are right
    base_accuracy: float | None  # the undefended model on the same images (None if not measured)
    draws: int
    majority_k: int
    pairs: int
    n: int  # images
    forwards: int  # image forwards spent (images x passes), undefended pass included


def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 500) -> float:
    """Accuracy of ``model`` (one forward per image) on ``images`` (N, C, H, W) in [0, 1] with ``labels`` (N,)."""
    check_images_labels(images, labels)
    return float(_predictions(model, images, batch_size).eq(labels.to(device_of(model))).float().mean())


@torch.no_grad()
def _predictions(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    dev = device_of(model)
    return torch.cat([model(images[i:i + batch_size].to(dev)).argmax(1) for i in range(0, images.shape[0], batch_size)])


@torch.no_grad()
def correct_counts(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, draws: int, batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """int64 (draws, N): 1 where draw r of the (randomized) ``model`` classifies image i correctly.

    Draws run batch by batch (all draws of a batch, then the next batch), so the noise sequence is fixed by the
    model's seed, ``draws`` and ``batch_size``."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    dev = device_of(model)
    y = labels.to(dev)
    out = torch.empty(draws, images.shape[0], dtype=torch.int64, device=dev)
    starts = range(0, images.shape[0], batch_size)
    for s in tqdm(starts, disable=not progress, desc="accuracy", leave=False):
        xb, yb = images[s:s + batch_size].to(dev), y[s:s + batch_size]
        for r in range(draws):
            out[r, s:s + xb.shape[0]] = model(xb).argmax(1).eq(yb).long()
    return out


def expected_accuracy_se(correct: torch.Tensor) -> float:
    """Monte Carlo standard error of the mean of ``correct`` (draws, N) as an estimate of expected accuracy.

    Noise is independent per image, so the variance of the mean is ``sum_i var_i / (N^2 R)`` with ``var_i`` the
    unbiased per-image variance over the R draws (needs R >= 2; else nan)."""
    r, n = correct.shape
    if r < 2:
        return math.nan
    var_i = correct.double().var(dim=0, unbiased=True)
    return float((var_i.sum() / (n * n * r)).sqrt())


@torch.no_grad()
def randomized_accuracy(
    model: DefendedModel | nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    draws: int = 10,
    majority_k: int = 9,
    pairs: int = 20,
    batch_size: int = 500,
    base_model: nn.Module | None = None,
    progress: bool = False,
) -> RandomizedAccuracy:
    """Expected, majority and extreme clean accuracy of ``model`` on ``images`` (N, C, H, W) in [0, 1].

    Args:
        model: a defended model (antithetic pairs need :meth:`DefendedModel.antithetic_pair`); a plain
            deterministic module is accepted too (then all three numbers equal its accuracy).
        draws: noise draws for the expected accuracy (R).
        majority_k: draws voting per image for the majority accuracy (the first k of the same draws when
            k <= R, so no extra forwards are spent).
        pairs: antithetic pairs for the extreme accuracy (paper: 20, i.e. 40 forwards per image).
        base_model: the undefended model, to report ``base_accuracy`` (default: ``model.model`` of a
            defended model).
    Deterministic for a given model seed (the model's noise stream is restarted with ``manual_seed``).
    """
    check_images_labels(images, labels)
    for name, v in (("draws", draws), ("majority_k", majority_k), ("pairs", pairs)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n = images.shape[0]
    defended = model if isinstance(model, DefendedModel) else None
    if base_model is None and defended is not None:
        base_model = defended.model
    base = clean_accuracy(base_model, images, labels, batch_size=batch_size) if base_model is not None else None
    forwards = n if base_model is not None else 0
    if defended is None or defended.spec.is_identity or not defended.spec.is_noise:
        c = correct_counts(model, images, labels, draws=1, batch_size=batch_size, progress=progress)
        acc = float(c.float().mean())
        return RandomizedAccuracy(accuracy=acc, accuracy_se=0.0, accuracy_majority=acc, accuracy_extreme=acc,
                                  base_accuracy=base, draws=draws, majority_k=majority_k, pairs=pairs, n=n,
                                  forwards=forwards + n)
    defended.manual_seed()
    total = max(draws, majority_k)
    c = correct_counts(model, images, labels, draws=total, batch_size=batch_size, progress=progress)
    forwards += total * n
    expected = c[:draws].double().mean()
    se = expected_accuracy_se(c[:draws])
    wrong_votes = (1 - c[:majority_k]).sum(0)
    majority = (wrong_votes * 2 <= majority_k).double().mean()
    dev = device_of(model)
    y = labels.to(dev)
    all_right = torch.ones(n, dtype=torch.bool, device=dev)
    for s in tqdm(range(0, n, batch_size), disable=not progress, desc="extreme", leave=False):
        xb, yb = images[s:s + batch_size].to(dev), y[s:s + batch_size]
        ok = torch.ones(xb.shape[0], dtype=torch.bool, device=dev)
        for _ in range(pairs):
            plus, minus = defended.antithetic_pair(xb)
            ok &= plus.argmax(1).eq(yb) & minus.argmax(1).eq(yb)
        all_right[s:s + xb.shape[0]] = ok
    forwards += 2 * pairs * n
    return RandomizedAccuracy(
        accuracy=float(expected), accuracy_se=se, accuracy_majority=float(majority),
        accuracy_extreme=float(all_right.double().mean()), base_accuracy=base, draws=draws, majority_k=majority_k,
        pairs=pairs, n=n, forwards=forwards,
    )
