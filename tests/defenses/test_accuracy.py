"""Clean accuracy of a randomized model three ways, against closed-form answers on a linear model."""

from __future__ import annotations

import math

import pytest
import torch

from rfd.defenses import DefenseSpec, defend, randomized_accuracy


def _phi(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


@pytest.fixture
def flat_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Constant 1x4x4 images with mean pixel m; the linear fixture says class 1 iff m > 0.5."""
    m = torch.linspace(0.3, 0.7, 400)
    m = m[(m - 0.5).abs() > 1e-3]
    x = m.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    y = (m > 0.5).long()
    return x, y, m


def test_known_answers_for_input_noise(linear_model, flat_images) -> None:  # type: ignore[no-untyped-def]
    x, y, m = flat_images
    sigma = 0.2
    # logit difference = mean(x + noise) - 0.5; the mean of 16 pixels' noise has std sigma / 4
    c = (m - 0.5).abs() / (sigma / 4)
    p = _phi(c)  # per-image probability of a correct answer
    expected = p.mean().item()
    k = 9
    majority = sum(math.comb(k, j) * p ** j * (1 - p) ** (k - j) for j in range(5, k + 1)).mean().item()
    extreme = ((2 * p - 1) ** 20).mean().item()  # a pair (+d, -d) is right iff |d-mean| < |m - 0.5|
    with defend(linear_model, DefenseSpec(family="input", sigma=sigma), seed=0) as d:
        r = randomized_accuracy(d, x, y, draws=40, majority_k=k, pairs=20, batch_size=128)
    assert r.base_accuracy == 1.0
    assert abs(r.accuracy - expected) < 4 * r.accuracy_se + 1e-3
    assert r.accuracy_majority == pytest.approx(majority, abs=0.04)
    assert r.accuracy_extreme == pytest.approx(extreme, abs=0.04)
    assert r.accuracy_extreme < r.accuracy < r.accuracy_majority < 1.0
    n = x.shape[0]
    assert r.forwards == n + 40 * n + 2 * 20 * n and r.n == n


def test_deterministic_models_give_one_number(linear_model, flat_images) -> None:  # type: ignore[no-untyped-def]
    x, y, _ = flat_images
    for spec in (DefenseSpec(), DefenseSpec(family="input", sigma=0.0), DefenseSpec(family="aaa")):
        with defend(linear_model, spec) as d:
            r = randomized_accuracy(d, x, y)
        assert r.accuracy == r.accuracy_majority == r.accuracy_extreme == r.base_accuracy == 1.0
        assert r.accuracy_se == 0.0 and r.forwards == 2 * x.shape[0]


def test_seeded_and_repeatable(linear_model, flat_images) -> None:  # type: ignore[no-untyped-def]
    x, y, _ = flat_images
    with defend(linear_model, DefenseSpec(family="feature", sigma=0.3), seed=3) as d:
        a = randomized_accuracy(d, x, y, draws=5, pairs=5)
        b = randomized_accuracy(d, x, y, draws=5, pairs=5)
    with defend(linear_model, DefenseSpec(family="feature", sigma=0.3), seed=4) as d:
        c = randomized_accuracy(d, x, y, draws=5, pairs=5)
    assert a == b and a != c


def test_majority_reuses_the_expected_draws_and_bad_counts_fail(linear_model, flat_images) -> None:  # type: ignore[no-untyped-def]
    x, y, _ = flat_images
    with defend(linear_model, DefenseSpec(family="input", sigma=0.2)) as d:
        r = randomized_accuracy(d, x, y, draws=12, majority_k=3, pairs=1)
        assert r.forwards == x.shape[0] * (1 + 12 + 2)
        with pytest.raises(ValueError, match="pairs"):
            randomized_accuracy(d, x, y, pairs=0)
        with pytest.raises(ValueError, match="labels"):
            randomized_accuracy(d, x, y[:3])
