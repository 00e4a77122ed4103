"""Seeded class-balanced selection: exact per-class counts, determinism, exclusion, clear failures."""

from __future__ import annotations

import pytest
import torch

from rfd.data import balanced_indices


def _labels(k: int = 10, per: int = 20) -> torch.Tensor:
    # Shuffled so that positions do not reveal classes.
    y = torch.arange(k).repeat_interleave(per)
    return y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(123))]


def test_exact_counts_when_divisible() -> None:
    y = _labels()
    idx = balanced_indices(y, 50, seed=0)
    assert idx.dtype == torch.int64 and idx.numel() == 50 and idx.unique().numel() == 50
    assert torch.bincount(y[idx], minlength=10).tolist() == [5] * 10


def test_remainder_spread_one_per_class() -> None:
    y = _labels()
    idx = balanced_indices(y, 53, seed=4)
    counts = torch.bincount(y[idx], minlength=10)
    assert sorted(counts.tolist()) == [5] * 7 + [6] * 3


def test_sorted_by_class() -> None:
    y = _labels()
    got = y[balanced_indices(y, 30, seed=2)]
    assert torch.equal(got, got.sort().values)


def test_same_seed_same_indices_other_seed_other() -> None:
    y = _labels()
    a, b = balanced_indices(y, 40, seed=7), balanced_indices(y, 40, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, balanced_indices(y, 40, seed=8))


def test_exclusion_gives_disjoint_sets() -> None:
    y = _labels()
    first = balanced_indices(y, 100, seed=0)
    second = balanced_indices(y, 100, seed=1, exclude=first)
    assert set(first.tolist()).isdisjoint(second.tolist())
    assert torch.bincount(y[second], minlength=10).tolist() == [10] * 10
    with pytest.raises(ValueError, match="0 available images, 1 needed"):
        balanced_indices(y, 10, seed=2, exclude=torch.cat([first, second]))


def test_too_few_images_and_bad_arguments() -> None:
    y = torch.tensor([0, 0, 0, 1])
    with pytest.raises(ValueError, match="class 1 has 1 available images, 2 needed for n=4"):
        balanced_indices(y, 4)
    with pytest.raises(ValueError, match="class 2 has 0 available images"):
        balanced_indices(y, 3, num_classes=3)
    with pytest.raises(ValueError, match="n must be >= 1"):
        balanced_indices(y, 0)
    with pytest.raises(ValueError, match="int64"):
        balanced_indices(y.int(), 2)
