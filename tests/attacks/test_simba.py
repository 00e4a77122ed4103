"""SimBA (pixel and DCT bases): the DCT basis alone, the strided coordinate order, per-image trajectories
independent of the batch, known answers on a linear model, config checks. Its invariants on tiny models
(eps-ball, [0, 1], exact query accounting, budget, misclassified images, verified success only, EOT, determinism)
are the ``ATTACKS`` table of test_score.py (entries simba-pixel and simba-dct)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from rfd.attacks.result import AttackResult
from rfd.attacks.rng import SampleStreams
from rfd.attacks.simba import (
    SimBA,
    SimBAConfig,
    basis_directions,
    coordinate_order,
    dct_2d,
    dct_matrix,
    frequency_bands,
    idct_2d,
)
from rfd.blackbox import LocalBlackBox
from tests.helpers.attack_cases import assert_independent_of_batch, near_boundary, run_attack
from tests.helpers.models import Counting

BASES = ["pixel", "dct"]
NORMS = ["linf", "l2"]
EPS = {"linf": 0.05, "l2": 0.5}


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, verify: int = 3, bb_class: type = LocalBlackBox,
         **cfg: Any) -> tuple[AttackResult, LocalBlackBox, Counting]:
    return run_attack("simba", model, x, y, verify=verify, bb_class=bb_class, **cfg)


# -- the DCT basis ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 7, 28])
def test_dct_matrix_is_orthonormal_and_the_dct_ii(n: int) -> None:
    d = dct_matrix(n, dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d.T @ d, torch.eye(n, dtype=torch.float64), atol=1e-12)
    # the orthonormal DCT-II from its definition (scipy's norm="ortho"): row 0 constant, cosines after
    v = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    i = torch.arange(n, dtype=torch.float64)
    ref = torch.stack([(v * torch.cos(math.pi * (2 * i + 1) * k / (2 * n))).sum() for k in range(n)])
    ref = ref * math.sqrt(2.0 / n)
    ref[0] /= math.sqrt(2.0)
    assert torch.allclose(d @ v, ref, atol=1e-12)
    assert torch.allclose(d[0], torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64))


def test_dct_2d_is_an_orthonormal_transform_with_its_inverse() -> None:
    x = torch.rand(3, 2, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = dct_2d(x)
    assert c.shape == x.shape
    assert torch.allclose(idct_2d(c), x, atol=1e-12) and torch.allclose(dct_2d(idct_2d(x)), x, atol=1e-12)
    assert torch.allclose(c.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-12)  # Parseval
    # a constant image has only the DC coefficient: mean * sqrt(H W)
    const = torch.full((1, 1, 5, 7), 0.3, dtype=torch.float64)
    cc = dct_2d(const)
    assert abs(float(cc[0, 0, 0, 0]) - 0.3 * math.sqrt(35)) < 1e-12
    assert float(cc.flatten()[1:].abs().max()) < 1e-12
    assert dct_2d(x.float()).dtype == torch.float32


@pytest.mark.parametrize("basis", BASES)
def test_basis_directions_are_an_orthonormal_basis(basis: str) -> None:
    shape = (2, 4, 5)
    dim = 2 * 4 * 5
    dh, dw = dct_matrix(4), dct_matrix(5)
    dirs = basis_directions(torch.arange(dim), shape, basis, dh, dw)
    assert dirs.shape == (dim, *shape)
    g = dirs.flatten(1).double()
    assert torch.allclose(g @ g.T, torch.eye(dim, dtype=torch.float64), atol=1e-6)
    if basis == "dct":  # direction j is the inverse DCT of the one-hot coefficient j
        assert torch.allclose(dirs, idct_2d(torch.eye(dim).view(dim, *shape)), atol=1e-6)
        # the first coefficient of each channel is the constant image of that channel
        assert torch.allclose(dirs[0, 0], torch.full((4, 5), 1 / math.sqrt(20)), atol=1e-7)
        assert float(dirs[0, 1].abs().max()) == 0.0
    else:
        assert torch.equal(dirs.flatten(1), torch.eye(dim))


def test_basis_directions_reject_an_unknown_basis_or_missing_matrices() -> None:
    with pytest.raises(ValueError, match="basis"):
        basis_directions(torch.arange(3), (1, 2, 2), "haar")
    with pytest.raises(ValueError, match="DCT matrices"):
        basis_directions(torch.arange(3), (1, 2, 2), "dct")


# -- the strided block order ----------------------------------------------------------------------------------------
def test_frequency_bands_follow_the_strided_block_order() -> None:
    # 6 x 6, first square 2, stride 2: the original's block_order(6, c, initial_size=2, stride=2) bands
    expected = torch.tensor([
        [0, 0, 1, 1, 2, 2],
        [0, 0, 1, 1, 2, 2],
        [1, 1, 1, 1, 2, 2],
        [1, 1, 1, 1, 2, 2],
        [2, 2, 2, 2, 2, 2],
        [2, 2, 2, 2, 2, 2],
    ])
    assert torch.equal(frequency_bands(6, 6, 2, 2), expected)
    assert int(frequency_bands(28, 28, 14, 7).max()) == 2  # 14 x 14, then bands 14-20 and 21-27
    assert int(frequency_bands(4, 4, 14, 7).max()) == 0  # a first square larger than the image: one band
    assert torch.equal(frequency_bands(3, 5, 1, 1)[0], torch.arange(5))  # non-square images


def test_coordinate_order_is_a_permutation_band_by_band_and_per_row() -> None:
    shape = (2, 6, 6)
    dim = 72
    bands = frequency_bands(6, 6, 2, 2)
    order = coordinate_order(SampleStreams(5, 1).rows(torch.arange(5)), shape, bands)
    assert order.shape == (5, dim) and order.dtype == torch.int64
    assert all(torch.equal(r.sort().values, torch.arange(dim)) for r in order)
    band_of = bands.expand(2, 6, 6).flatten()
    assert bool((band_of[order].diff(dim=1) >= 0).all())  # lower bands first
    assert int((band_of == 0).sum()) == 8 and set(order[:, :8].flatten().tolist()) == set(
        torch.nonzero(band_of == 0).flatten().tolist())  # both channels of the first square come first
    assert len({tuple(r.tolist()) for r in order}) == 5  # each row its own order
    # a row's order depends on its own stream only, not on the other rows drawn with it
    part = coordinate_order(SampleStreams(5, 1).rows(torch.tensor([3, 0])), shape, bands)
    assert torch.equal(part, order[[3, 0]])
    # no bands (the pixel basis): a uniform permutation of everything
    flat = coordinate_order(SampleStreams(200, 2).rows(torch.arange(200)), (1, 2, 2))
    first = torch.bincount(flat[:, 0], minlength=4)
    assert all(torch.equal(r.sort().values, torch.arange(4)) for r in flat) and int(first.min()) > 25


# -- an image that cannot move ----------------------------------------------------------------------------------
def test_an_image_that_cannot_move_stops(linear_model: nn.Module) -> None:
    # a ball so small that no candidate differs from the clean image: only the clean loss is paid, then it stops
    x = near_boundary(0.01, n=2)
    res, _, _ = _run(linear_model, x, torch.zeros(2, dtype=torch.long), basis="pixel", norm="linf", eps=1e-9,
                     budget=1000)
    assert res.queries.tolist() == [1, 1] and not bool(res.success.any())


# -- an image's trajectory does not depend on the batch --------------------------------------------------------------
class RowwiseWeighted(nn.Module):
    """2 classes on 1 x 4 x 4 images: logits ``[0.5, <w, x>]`` with fixed positive weights summing to 1, summed
    pixel by pixel with elementwise ops, so a row's logits are bit-identical whatever the batch. Unequal weights
    make the order of the coordinates matter."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        w = 0.2 + torch.rand(16, generator=torch.Generator().manual_seed(0))
        self.w = (w / w.sum()).tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        acc = f[:, 0] * self.w[0]
        for k in range(1, f.shape[1]):
            acc = acc + f[:, k] * self.w[k]
        return torch.stack([torch.full_like(acc, 0.5), acc], 1)


def _weighted_images(gaps: list[float], seed: int) -> torch.Tensor:
    """1x4x4 images with <w, x> = 0.5 - gap (class 0 for gap > 0, class 1 for gap < 0)."""
    x = 0.5 + 0.1 * (torch.rand(len(gaps), 1, 4, 4, generator=torch.Generator().manual_seed(seed)) - 0.5)
    with torch.no_grad():
        s = RowwiseWeighted()(x)[:, 1]
    return x - s.view(-1, 1, 1, 1) + (0.5 - torch.tensor(gaps).view(-1, 1, 1, 1))


@pytest.mark.parametrize("basis,norm,gap", [("pixel", "linf", 0.6 * 0.05), ("dct", "linf", 0.3 * 0.05),
                                             ("pixel", "l2", 0.15 * 0.5), ("dct", "l2", 0.1 * 0.5)])
def test_an_images_attack_does_not_depend_on_the_other_images(basis: str, norm: str, gap: float) -> None:
    cfg: dict[str, Any] = {"basis": basis, "norm": norm, "eps": EPS[norm], "budget": 300, "seed": 5,
                           "step": 0.05, "freq_dims": 2, "stride": 1}

    def attack(x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        return SimBA(**cfg).run(LocalBlackBox(RowwiseWeighted(), budget=300, verify=3), x, y)

    # the batch, then images 1 (misclassified), 3 and 6 (easy) replaced, then the batch cut after image 5
    ref = assert_independent_of_batch(attack, _weighted_images, gap, easy_gap=1e-4)
    assert bool(ref.success[[0, 2, 4, 5, 7]].all())  # every common image broken, at different query counts


# -- known answers on the linear model ------------------------------------------------------------------------------
class MarginSpy(LocalBlackBox):
    """Records, per sample, the margin (class 0 true) of every charged query, in order."""

    def start(self, n: int) -> None:
        super().start(n)
        self.margins: list[list[float]] = [[] for _ in range(n)]

    def scores(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        out = super().scores(x, idx, repeats=repeats)
        for i, m in zip(idx.tolist(), (out[:, 0] - out[:, 1]).tolist()):
            self.margins[i].append(m)
        return out


def test_pixel_linf_walks_to_the_adversarial_corner(linear_model: nn.Module) -> None:
    # Only the corner x0 + eps is adversarial (the mean must rise by more than 15/16 eps). With step > eps each
    # pixel's minus candidate raises the margin (rejected), its plus candidate lands on x0 + eps and lowers the
    # margin by exactly eps / 16 (kept): 1 + 2 * 16 queries, success at the 16th pixel.
    eps = 0.05
    x = near_boundary(0.95 * eps)
    y = torch.zeros(6, dtype=torch.long)
    res, bb, _ = _run(linear_model, x, y, bb_class=MarginSpy, basis="pixel", norm="linf", eps=eps, budget=1000,
                      step=0.2)
    assert bool(res.success.all()) and res.queries.tolist() == [33] * 6
    assert torch.allclose(res.x_adv, x + eps, atol=1e-6)
    assert isinstance(bb, MarginSpy)
    for m in bb.margins:
        assert len(m) == 33 and abs(m[0] - 0.95 * eps) < 1e-6  # the clean margin 0.5 - mean
        best = m[0]
        for minus, plus in zip(m[1::2], m[2::2]):
            assert minus > best  # the rejected minus step
            assert plus < best and abs((best - plus) - eps / 16) < 1e-6  # every kept step lowers the margin
            best = plus
        assert best < 0


def test_dct_l2_takes_the_dc_direction_first(linear_model: nn.Module) -> None:
    # The best l_2 move on the linear model is the constant image, the DCT's first (DC) coefficient: with
    # freq_dims 1 it is the first direction tried. minus (rejected), plus with step eps (every pixel + eps/4).
    eps = 0.5
    x = near_boundary(0.99 * eps / 4)
    y = torch.zeros(6, dtype=torch.long)
    res, _, _ = _run(linear_model, x, y, basis="dct", norm="l2", eps=eps, budget=100, step=eps, freq_dims=1)
    assert bool(res.success.all()) and res.queries.tolist() == [3] * 6
    assert torch.allclose(res.x_adv, x + eps / 4, atol=1e-6)


@pytest.mark.parametrize("basis", BASES)
def test_l2_growth_is_held_by_the_ball(basis: str, linear_model: nn.Module) -> None:
    # Far from the boundary every plus step is kept; the original's l_2 norm would grow as step * sqrt(steps)
    # (0.2 * 4 = 0.8 after one pass), here it stays on the sphere of radius eps
    x = torch.full((2, 1, 4, 4), 0.2)
    res, _, _ = _run(linear_model, x, torch.zeros(2, dtype=torch.long), basis=basis, norm="l2", eps=0.3,
                     budget=200)
    assert not bool(res.success.any())
    assert bool((res.l2 <= 0.3 * (1 + 1e-5)).all()) and bool((res.l2 > 0.29).all())


# -- config ---------------------------------------------------------------------------------------------------------
def test_defaults_and_registry_name() -> None:
    cfg = SimBAConfig()
    assert (cfg.basis, cfg.step, cfg.freq_dims, cfg.stride) == ("dct", 0.2, 28, 7)
    assert SimBA.name == "simba" and SimBA.access == "scores" and SimBA.norms == ("linf", "l2")
    cfg2 = SimBA(basis="pixel").config
    assert "freq_dims" in SimBA.settings() and isinstance(cfg2, SimBAConfig) and cfg2.basis == "pixel"


@pytest.mark.parametrize("kwargs,field", [
    ({"basis": "haar"}, "basis"),
    ({"step": 0.0}, "step"),
    ({"step": -0.1}, "step"),
    ({"step": float("nan")}, "step"),
    ({"step": float("inf")}, "step"),
    ({"step": True}, "step"),
    ({"freq_dims": 0}, "freq_dims"),
    ({"freq_dims": 2.5}, "freq_dims"),
    ({"freq_dims": True}, "freq_dims"),
    ({"stride": 0}, "stride"),
    ({"budget": 0}, "budget"),
    ({"eot": 0}, "eot"),
    ({"norm": "l1"}, "norm"),
])
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SimBAConfig(**kwargs)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="freq_dims"):
        SimBA(freq_dim=7)
