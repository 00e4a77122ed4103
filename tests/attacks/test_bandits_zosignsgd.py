"""Bandits-TD and ZO-signSGD: known answers on the linear model, the building blocks (exponentiated gradient, tile
prior, gradient estimates, the ascent objective they share), configs. Their invariants (eps-ball, [0, 1], exact
query accounting, budget, verified success only, EOT, determinism) are the ``ATTACKS`` table of test_score.py;
their per-image trajectories independent of the batch are the ``CASES`` table of test_paired.py."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from rfd.attacks.bandits import Bandits, BanditsConfig, bandits_gradient, eg_step, tile_upsample
from rfd.attacks.zosignsgd import ZOSignSGD, ZOSignSGDConfig, zo_gradient
from rfd.blackbox.losses import LOSSES, ascent_objective
from tests.helpers.attack_cases import near_boundary, run_attack

# fewer directions than the default 30 so that a small budget holds several ZO-signSGD iterations
SMALL: dict[str, dict[str, Any]] = {"bandits": {}, "zosignsgd": {"q": 10}}


# -- known answers on the linear model ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg,max_queries", [
    ("bandits", {"tile": 1}, 3 * 50),  # full-resolution prior: 16 coordinates to learn
    ("bandits", {}, 3 * 6),  # tile 4 on 4x4 images: one prior value, the exact direction of w
    ("zosignsgd", {}, 1 + 31 * 15),
], ids=["bandits-tile1", "bandits-tile4", "zosignsgd"])
def test_linf_attacks_find_the_adversarial_corner(name: str, cfg: dict[str, Any], max_queries: int,
                                                  linear_model: nn.Module) -> None:
    # class 0 against class 1 with w_0 - w_1 = -1/16 per pixel: only (near) the corner x0 + eps, every pixel moved
    # towards -sign(w_y - w_other) = +1, is adversarial (the mean must rise by more than 0.95 eps)
    eps = 0.05
    x = near_boundary(0.95 * eps)
    y = torch.zeros(6, dtype=torch.long)
    res, _, _ = run_attack(name, linear_model, x, y, norm="linf", eps=eps, budget=2000, seed=0, **cfg)
    assert bool(res.success.all())
    assert int(res.queries.max()) <= max_queries
    shift = (res.x_adv - x).flatten(1)
    assert bool((shift.mean(1) > 0.95 * eps).all()) and float(shift.abs().max()) <= eps + 1e-6
    assert bool((shift > 0).all())  # every pixel moved up


@pytest.mark.parametrize("name,cfg,max_queries", [
    ("bandits", {"tile": 1}, 3 * 40),
    ("zosignsgd", {}, 1 + 31 * 5),
], ids=["bandits", "zosignsgd"])
def test_l2_attacks_find_the_linear_direction(name: str, cfg: dict[str, Any], max_queries: int,
                                              linear_model: nn.Module) -> None:
    # the best l_2 move is along w (uniform, eps/4 per pixel raises the mean by eps/4): success at gap 0.8 eps/4
    # needs a perturbation of (near) full length whose cosine with w is above 0.8
    eps = 0.5
    x = near_boundary(0.8 * eps / 4)
    y = torch.zeros(6, dtype=torch.long)
    res, _, _ = run_attack(name, linear_model, x, y, norm="l2", eps=eps, budget=1000, seed=0, **cfg)
    assert bool(res.success.all())
    assert int(res.queries.max()) <= max_queries
    d = (res.x_adv - x).flatten(1)
    cos = nn.functional.cosine_similarity(d, torch.ones_like(d))
    assert bool((cos > 0.8).all()) and bool((d.norm(dim=1) <= eps + 1e-5).all())


@pytest.mark.parametrize("name", list(SMALL))
def test_cross_entropy_on_probabilities_also_breaks_the_linear_model(name: str, linear_model: nn.Module) -> None:
    x = near_boundary(0.5 * 0.05)
    y = torch.zeros(6, dtype=torch.long)
    res, _, _ = run_attack(name, linear_model, x, y, norm="linf", eps=0.05, budget=1000, seed=0, output="probs",
                           loss="ce", **SMALL[name])
    assert bool(res.success.all())


# -- building blocks ------------------------------------------------------------------------------------------------
def test_eg_step_is_the_authors_exponentiated_gradient_without_overflow() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.rand(50, generator=g) * 1.8 - 0.9
    grad = torch.randn(50, generator=g)
    lr = 0.7
    p = (v + 1) / 2
    pos, neg = p * torch.exp(lr * grad), (1 - p) * torch.exp(-lr * grad)
    assert torch.allclose(eg_step(v, grad, lr), pos / (pos + neg) * 2 - 1, atol=1e-5)
    # huge steps saturate without NaN, and a saturated coordinate can still come back
    big = eg_step(v, 1e6 * grad.sign(), 100.0)
    assert bool(torch.isfinite(big).all()) and bool((big.abs() <= 1).all())
    back = eg_step(torch.ones(3), -torch.ones(3), 10.0)  # atanh(1 - 1e-6) is about 7.2
    assert bool((back < 0).all())


def test_tile_upsample_repeats_each_prior_value_over_its_tile() -> None:
    v = torch.arange(2 * 7 * 7, dtype=torch.float32).view(1, 2, 7, 7)
    up = tile_upsample(v, (28, 28))
    assert up.shape == (1, 2, 28, 28)
    assert torch.equal(up, v.repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert tile_upsample(v, (7, 7)) is v


def test_gradient_estimates_align_with_a_linear_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 1, 4, 4, generator=g)
    x = torch.rand(2, 1, 4, 4, generator=g)
    f = lambda z: (z * w).flatten(-3).sum(-1)
    # ZO-signSGD forward differences with 400 Gaussian directions
    u = torch.randn(400, 2, 1, 4, 4, generator=g)
    est = zo_gradient(u, f(x + 0.01 * u), f(x), 0.01)
    assert bool((nn.functional.cosine_similarity(est.flatten(1), w.flatten(1)) > 0.95).all())
    # Bandits' two-query estimate is unbiased up to scale: averaged over many draws it points along w
    noise = torch.randn(4000, 2, 1, 4, 4, generator=g) / 4.0
    j_plus, j_minus = f(x + 0.01 * noise), f(x - 0.01 * noise)
    avg = bandits_gradient(noise.flatten(0, 1), j_plus.flatten(), j_minus.flatten(), 0.01, 1.0).view(4000, 2, -1)
    assert bool((nn.functional.cosine_similarity(avg.mean(0), w.flatten(1)) > 0.95).all())


def test_ascent_objective() -> None:
    # the objective the score attacks ascend (through AttackState.objective), and the margin that decides a claim
    s = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 0])
    j, m = ascent_objective(s, y, "margin")
    assert torch.allclose(m, torch.tensor([1.0, -3.0])) and torch.allclose(j, -m)
    j, m2 = ascent_objective(s, y, "ce")
    assert torch.allclose(j, nn.functional.cross_entropy(s, y, reduction="none")) and torch.equal(m2, m)
    j, _ = ascent_objective(s.softmax(1), y, "ce", probabilities=True)
    assert torch.allclose(j, nn.functional.cross_entropy(s, y, reduction="none"), atol=1e-6)
    assert LOSSES == ("margin", "ce")
    with pytest.raises(ValueError, match="loss"):
        ascent_objective(s, y, "hinge")


# -- configs ----------------------------------------------------------------------------------------------------------
def test_defaults_per_norm() -> None:
    p = BanditsConfig(norm="linf").params
    assert (p.fd_eta, p.image_lr, p.online_lr, p.exploration) == (0.1, 0.01, 100.0, 1.0)
    p = BanditsConfig(norm="l2", eps=1.0).params
    assert (p.fd_eta, p.image_lr, p.online_lr, p.exploration) == (0.01, 0.5, 0.1, 0.01)
    assert BanditsConfig(norm="l2", eps=1.0, image_lr=0.2).params.image_lr == 0.2
    assert BanditsConfig().tile == 4 and BanditsConfig().loss == "margin" and BanditsConfig(eot=3).iteration_cost == 9
    z = ZOSignSGDConfig()
    assert (z.q, z.fd_eta, z.step, z.iteration_cost) == (30, 0.01, 0.01, 31)
    assert ZOSignSGDConfig(norm="l2", eps=1.0).step == 0.5
    assert Bandits.name == "bandits" and ZOSignSGD.name == "zosignsgd"
    assert isinstance(Bandits(norm="l2", eps=1.0, tile=2).config, BanditsConfig)


@pytest.mark.parametrize("cls,field,value", [
    (BanditsConfig, "fd_eta", 0.0),
    (BanditsConfig, "image_lr", -0.1),
    (BanditsConfig, "online_lr", math.inf),
    (BanditsConfig, "exploration", math.nan),
    (BanditsConfig, "tile", 0),
    (BanditsConfig, "tile", 2.5),
    (BanditsConfig, "loss", "hinge"),
    (ZOSignSGDConfig, "q", 0),
    (ZOSignSGDConfig, "q", True),
    (ZOSignSGDConfig, "fd_eta", -1.0),
    (ZOSignSGDConfig, "lr", 0.0),
    (ZOSignSGDConfig, "loss", "hinge"),
])
def test_config_validation_names_the_field(cls: type, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown setting 'samples'"):
        ZOSignSGD(samples=10)
    with pytest.raises(ValueError, match="eot"):
        Bandits(eot=0)
