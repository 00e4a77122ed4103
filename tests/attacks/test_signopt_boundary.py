"""Sign-OPT and the Boundary attack (decision-based): known answers on linear models, the proposal geometry, and
config validation. Their invariants and exact query accounting on a tiny CNN and their determinism are the
``CASES`` table of test_decision.py; their per-sample trajectories independent of the batch are the ``DECISION``
table of test_paired_decision.py."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest
import torch
from torch import nn

from rfd.attacks.boundary import Boundary, BoundaryConfig, SuccessWindow, boundary_proposals
from rfd.attacks.signopt import SignOPT, SignOPTConfig, unit
from rfd.blackbox.local import LocalBlackBox
from rfd.blackbox.threat import BALL_TOL
from tests.helpers.attack_cases import distance, linear_distance, linear_images

IDS = ["signopt-linf", "signopt-l2", "boundary-l2", "boundary-linf"]


class Linear(nn.Module):
    """logits = W x.flatten() (no bias): a 2-class linear model with the given weights W (2, d)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(w.shape[1], 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


# -- known answers on linear models ------------------------------------------------------------------------------
# linear_images(**INSIDE): class-0 images of the linear fixture with pixels in [0.1, 0.4], whose closest boundary
# points (linear_distance) lie inside [0, 1] in either norm
INSIDE = {"low": 0.1, "high": 0.4}


@pytest.mark.parametrize("norm,budget,tol,mean_tol", [("l2", 2000, 1.01, 1.01), ("linf", 16000, 1.8, 1.5)])
def test_signopt_approaches_the_linear_boundary(linear_model, norm, budget, tol, mean_tol) -> None:  # type: ignore[no-untyped-def]
    x, y = linear_images(**INSIDE)
    r_true = linear_distance(linear_model, x, norm)
    short = SignOPT(norm=norm, eps=1e-4, budget=300).run(LocalBlackBox(linear_model, access="labels", budget=300),
                                                         x, y)
    r = SignOPT(norm=norm, eps=1e-4, budget=budget).run(LocalBlackBox(linear_model, access="labels", budget=budget),
                                                        x, y)
    radius = r.extras["radius"]
    assert not r.success.any()
    assert torch.allclose(distance(r), radius, atol=1e-6)
    # never below the truth (a deterministic boundary), falling with the budget, and within tol of the truth.
    # l_inf converges slowly: on the l_inf sphere the sign of g(theta + beta u) - g(theta) mostly reflects u's
    # entry at theta's largest coordinate, and the optimum is a vertex of the cube (all coordinates at 1), where g is
    # not smooth: from about 3x the truth after the start it gets to ~1.1-1.6x in 16000 queries
    assert (radius >= r_true * (1 - 1e-5)).all()
    assert (radius < short.extras["radius"]).all()
    assert (radius <= r_true * tol).all(), (radius / r_true)
    assert float((radius / r_true).mean()) <= mean_tol, (radius / r_true)


@pytest.mark.parametrize("norm,budget,tol", [("l2", 3000, 1.01), ("linf", 4000, 1.1)])
def test_boundary_approaches_the_linear_boundary(linear_model, norm, budget, tol) -> None:  # type: ignore[no-untyped-def]
    """The walk is l_2; on this model (all weights equal) the l_2-closest boundary point moves every pixel by the
    same amount, which is also the l_inf-closest one, so the l_inf radius of the l_2 walk approaches the l_inf
    distance too (more slowly: the walk's orthogonal residue counts fully in l_inf)."""
    x, y = linear_images(**INSIDE)
    r_true = linear_distance(linear_model, x, norm)
    r = Boundary(norm=norm, eps=1e-4, budget=budget).run(LocalBlackBox(linear_model, access="labels", budget=budget),
                                                         x, y)
    radius = r.extras["radius"]
    assert not r.success.any()
    assert torch.allclose(distance(r), radius, atol=1e-6)
    assert (radius >= r_true * (1 - 1e-5)).all()
    assert (radius <= r_true * tol).all(), (radius / r_true)


def test_l2_attacks_find_the_distance_of_a_linear_model_with_unequal_weights() -> None:
    """Random weights: the l_2 distance |margin| / ||w||_2 differs from the l_inf one, and its direction from the
    all-equal shift."""
    model = Linear(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)) / 16).eval()
    fc = model.fc
    x = 0.4 + 0.2 * torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
        # move each image close to the boundary along w: distances of order 0.1, closest points inside [0, 1]
        w = fc.weight[1] - fc.weight[0]
        m = x.flatten(1) @ w
        x = (x.flatten(1) - ((m - 0.1 * w.norm() * torch.sign(m)) / w.dot(w))[:, None] * w).view_as(x)
        assert torch.equal(model(x).argmax(1), y)
    r_true = linear_distance(model, x, "l2")
    assert not torch.allclose(r_true, linear_distance(model, x, "linf"))
    for attack, tol in ((SignOPT(norm="l2", eps=1e-4, budget=2000), 1.02), (Boundary(norm="l2", eps=1e-4, budget=3000), 1.05)):
        r = attack.run(LocalBlackBox(model, access="labels", budget=attack.config.budget, num_classes=2), x, y)
        radius = r.extras["radius"]
        assert (radius >= r_true * (1 - 1e-5)).all()
        assert (radius <= r_true * tol).all(), (attack.name, radius / r_true)


# (class, norm, budget, eps / largest true distance): the l_inf versions approach the boundary more slowly
ABOVE = [(SignOPT, "linf", 4000, 2.5), (SignOPT, "l2", 1000, 1.6), (Boundary, "l2", 1000, 1.6),
         (Boundary, "linf", 3000, 1.6)]


@pytest.mark.parametrize("cls,norm,budget,factor", ABOVE, ids=IDS)
def test_linear_model_success_iff_eps_above_true_distance(linear_model, cls, norm, budget, factor) -> None:  # type: ignore[no-untyped-def]
    x, y = linear_images(**INSIDE)
    r_true = linear_distance(linear_model, x, norm)
    eps = float(r_true.max()) * factor
    above = cls(norm=norm, eps=eps, budget=budget).run(LocalBlackBox(linear_model, access="labels", budget=budget), x, y)
    assert above.success.all() and (above.queries < budget).all()
    assert (distance(above) <= eps * (1 + BALL_TOL) + BALL_TOL).all()
    below = cls(norm=norm, eps=float(r_true.min()) * 0.9, budget=1000).run(
        LocalBlackBox(linear_model, access="labels", budget=1000), x, y)
    assert not below.success.any()


# -- pieces ------------------------------------------------------------------------------------------------------
def test_boundary_proposals_follow_the_sphere_then_step_towards_the_source() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = 0.3 + 0.4 * torch.rand(3, 1, 4, 4, generator=g)
    x = x0 + 0.05 * torch.randn(3, 1, 4, 4, generator=g)
    eta = torch.randn(3, 1, 4, 4, generator=g)
    spherical, source = torch.tensor([0.01, 0.05, 0.1]), torch.tensor([0.01, 0.02, 0.0])
    cand, sph = boundary_proposals(x0, x, eta, spherical, source)
    d = (x - x0).flatten(1).norm(dim=1)
    # nothing clips here: the spherical candidate keeps the distance, at angle atan(spherical) from x - x0
    assert torch.allclose((sph - x0).flatten(1).norm(dim=1), d, rtol=1e-5)
    cos = nn.functional.cosine_similarity((sph - x0).flatten(1), (x - x0).flatten(1))
    assert torch.allclose(cos, 1 / torch.sqrt(1 + spherical**2), rtol=1e-5)
    # the candidate is the spherical one moved source * d straight towards x0
    assert torch.allclose((cand - x0).flatten(1).norm(dim=1), (1 - source) * d, rtol=1e-5)
    assert torch.allclose(nn.functional.cosine_similarity((cand - x0).flatten(1), (sph - x0).flatten(1)),
                          torch.ones(3), atol=1e-6)


def test_success_window_rates_fill_and_clear() -> None:
    w = SuccessWindow(2, 3, torch.device("cpu"))
    for outcome in ([True, False], [False, False], [True, True]):
        assert not w.full(torch.arange(2)).any()
        w.append(torch.arange(2), torch.tensor(outcome))
    assert w.full(torch.arange(2)).all()
    assert torch.allclose(w.rate(torch.arange(2)), torch.tensor([2 / 3, 1 / 3]))
    w.append(torch.tensor([1]), torch.tensor([True]))  # overwrites sample 1's oldest entry
    assert torch.allclose(w.rate(torch.tensor([1])), torch.tensor([2 / 3]))
    w.clear(torch.tensor([0]))
    assert w.full(torch.arange(2)).tolist() == [False, True]


def test_unit_normalises_per_row() -> None:
    v = torch.tensor([[3.0, -4.0], [0.0, 0.0]]).view(2, 1, 1, 2)
    assert torch.allclose(unit(v, "l2").flatten(1), torch.tensor([[0.6, -0.8], [0.0, 0.0]]))
    assert torch.allclose(unit(v, "linf").flatten(1), torch.tensor([[0.75, -1.0], [0.0, 0.0]]))


@pytest.mark.parametrize("cls,setting,value", [
    (SignOPT, "init_directions", 0), (SignOPT, "k", 0), (SignOPT, "alpha", 0.0), (SignOPT, "beta", -1.0),
    (SignOPT, "init_tol", 0.0), (SignOPT, "report_at", "middle"),
    (Boundary, "init_tries", 0), (Boundary, "init_search_steps", -1), (Boundary, "spherical_step", 0.0),
    (Boundary, "source_step", -0.01), (Boundary, "step_adaptation", 1.0), (Boundary, "stats_every", 0),
    (Boundary, "spherical_window", 0), (Boundary, "step_window", 0), (Boundary, "report_at", "middle"),
])
def test_configs_reject_bad_settings(cls, setting, value) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=setting):
        cls(**{setting: value})


def test_classes_configs_and_access() -> None:
    assert SignOPT.name == "signopt" and Boundary.name == "boundary"
    assert SignOPT.access == "labels" and Boundary.access == "labels"
    assert SignOPT.blackbox_access() == "labels"
    assert SignOPT.norms == ("linf", "l2") and Boundary.norms == ("l2", "linf")
    cfg = SignOPT().config
    assert isinstance(cfg, SignOPTConfig) and (cfg.k, cfg.alpha, cfg.beta, cfg.init_directions) == (200, 0.2, 1e-3, 100)
    bcfg = Boundary().config
    assert isinstance(bcfg, BoundaryConfig) and (bcfg.spherical_step, bcfg.source_step) == (0.01, 0.01)
    with pytest.raises(ValueError, match="did you mean"):
        SignOPT(alpah=0.1)
    with pytest.raises(FrozenInstanceError):
        bcfg.source_step = 0.1  # type: ignore[misc]
    other = Boundary(source_step=0.02).config
    assert isinstance(other, BoundaryConfig) and math.isclose(other.source_step, 0.02)
