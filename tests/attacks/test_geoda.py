"""GeoDA: the DCT subspace and the query schedule alone, budgets too small for an estimate, paired draws across
memory blocks, and known answers on the linear model (closed-form boundary distances). Its invariants and exact
query accounting on a tiny CNN, determinism and verified success are the ``CASES`` table of test_decision.py; its
per-sample trajectories independent of the batch are the ``DECISION`` table of test_paired_decision.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from rfd.attacks import geoda as geoda_module
from rfd.attacks.geoda import (
    GeoDA,
    GeoDAConfig,
    dct_matrix,
    low_frequency_basis,
    low_frequency_noise,
    query_schedule,
    subspace_side,
)
from rfd.attacks.result import AttackResult
from rfd.blackbox.local import LocalBlackBox
from rfd.blackbox.threat import BALL_TOL
from tests.helpers.attack_cases import (
    assert_same_rows,
    cnn_case,
    counted_rows_match,
    distance,
    linear_distance,
    linear_images,
    other_batch,
)
from tests.helpers.attack_cases import cnn_data as build_cnn_data
from tests.helpers.models import Counting

NORMS = [("linf", 0.05), ("l2", 0.5)]  # eps that the tiny CNN partly resists


# -- the low-frequency subspace, alone ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 8, 28])
def test_dct_matrix_is_orthogonal_and_the_dct_ii(n: int) -> None:
    d = dct_matrix(n).double()
    eye = torch.eye(n, dtype=torch.float64)
    assert torch.allclose(d @ d.T, eye, atol=1e-6) and torch.allclose(d.T @ d, eye, atol=1e-6)
    # frequency 0 is the constant image; row u changes sign u times (frequency u)
    assert torch.allclose(d[0], torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64))
    for u in range(n):
        assert int((d[u, 1:].sign() != d[u, :-1].sign()).sum()) == u
    if n == 4:  # a hand-computed entry: sqrt(2/4) cos(pi * 3 * 1 / 8)
        assert d[1, 1].item() == pytest.approx(math.sqrt(0.5) * math.cos(3 * math.pi / 8), abs=1e-7)
    assert torch.equal(dct_matrix(n, max(1, n // 2)), dct_matrix(n)[: max(1, n // 2)])
    with pytest.raises(ValueError, match="k must lie"):
        dct_matrix(n, n + 1)


@pytest.mark.parametrize("h,w,kh,kw", [(28, 28, 9, 9), (8, 6, 3, 2), (4, 4, 4, 4)])
def test_low_frequency_basis_is_orthonormal_and_matches_the_separable_noise(h: int, w: int, kh: int, kw: int) -> None:
    basis = low_frequency_basis(h, w, kh, kw).double()
    assert basis.shape == (kh * kw, h * w)
    assert torch.allclose(basis @ basis.T, torch.eye(kh * kw, dtype=torch.float64), atol=1e-6)
    coeffs = torch.randn(5, 2, kh, kw, generator=torch.Generator().manual_seed(0))
    z = low_frequency_noise(coeffs, dct_matrix(h, kh), dct_matrix(w, kw))
    assert z.shape == (5, 2, h, w)
    dense = (coeffs.flatten(-2).double() @ basis).view(5, 2, h, w)
    assert torch.allclose(z.double(), dense, atol=1e-5)
    # the noise lies in the subspace (its projection is itself) and its analysis gives back the coefficients
    flat = z.flatten(-2).double()
    assert torch.allclose(flat @ basis.T @ basis, flat, atol=1e-5)
    assert torch.allclose((flat @ basis.T).view_as(coeffs), coeffs.double(), atol=1e-5)
    # low frequencies: neighbouring pixels of a 9 x 9-of-28 x 28 noise image are strongly correlated
    if h == 28:
        big = low_frequency_noise(torch.randn(200, kh, kw, generator=torch.Generator().manual_seed(1)),
                                  dct_matrix(h, kh), dct_matrix(w, kw))
        a, b = big[:, :, :-1].flatten(), big[:, :, 1:].flatten()
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8  # white noise: 0


def test_full_basis_is_an_orthogonal_change_of_basis() -> None:
    basis = low_frequency_basis(4, 4, 4, 4).double()
    assert torch.allclose(basis.T @ basis, torch.eye(16, dtype=torch.float64), atol=1e-6)
    # the constant image is frequency (0, 0) alone
    const = torch.full((16,), 0.25, dtype=torch.float64)
    expected = torch.zeros(16, dtype=torch.float64)
    expected[0] = 1.0
    assert torch.allclose(basis @ const, expected, atol=1e-7)


def test_subspace_side_keeps_the_papers_fraction() -> None:
    assert [subspace_side(s) for s in (224, 32, 28, 8, 4, 1)] == [75, 11, 9, 3, 1, 1]
    assert subspace_side(28, 5) == 5 and subspace_side(28, 28) == 28
    with pytest.raises(ValueError, match="sub_dim"):
        subspace_side(28, 29)


# -- the query schedule, alone ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.6, 0.3, 1.0])
def test_query_schedule_is_the_geometric_allocation(lam: float) -> None:
    queries = torch.tensor([300, 1480, 9980, 60, 10, 1])
    plan = query_schedule(queries, lam, 50, 25)
    for q, row in zip(queries.tolist(), plan):
        n = row[row > 0].double()
        t = n.numel()
        assert t >= 1 and (row[t:] == 0).all()
        if q - 25 * t >= 50 * t:
            # N_t ~ lambda^(-2t/3) (up to rounding), the first estimate gets >= first_evals probes
            assert n[0] >= 50
            if t > 1:
                assert torch.allclose(n[1:] / n[:-1], torch.full((t - 1,), lam ** (-2 / 3), dtype=torch.float64),
                                      rtol=0.03)
            # all of Q = q - 25 T is spent (up to rounding), and T is the most iterations with N_0 >= 50
            assert abs(float(n.sum()) - (q - 25 * t)) <= t
            coef = [lam ** (-2 * i / 3) for i in range(t + 1)]
            assert round((q - 25 * (t + 1)) / sum(coef)) < 50
        else:  # budgets too small for one full estimate: one iteration, what is left after the reserve, >= 1
            assert t == 1 and int(n[0]) == max(1, q - 25)
    if lam == 0.6:
        assert plan[1, :7].tolist() == [54, 76, 106, 149, 210, 295, 415]
        assert int((plan[2] > 0).sum()) == 12


# -- budgets too small for one full estimate -------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """12 images in [0,1] labelled by the tiny CNN, the first two deliberately wrong (never attacked)."""
    return build_cnn_data()


@pytest.mark.parametrize("budget", [1, 2, 7, 40, 90])
@pytest.mark.parametrize("norm,eps", NORMS)
def test_never_over_small_budgets(cnn_data, norm, eps, budget) -> None:  # type: ignore[no-untyped-def]
    model, x, y = cnn_data
    counted = Counting(model)
    bb = LocalBlackBox(counted, access="labels", budget=budget)
    r = GeoDA(norm=norm, eps=eps, budget=budget, eot=1 if budget < 40 else 2).run(bb, x, y)
    assert int(r.queries.max()) <= budget and counted_rows_match(counted, bb)
    assert (r.queries[r.clean_correct & ~r.success] > budget - r.config["eot"]).all()


# -- paired: a sample's trajectory does not depend on the memory blocks ----------------------------------------------
@pytest.mark.parametrize("norm,eps", NORMS)
def test_paired_across_memory_blocks(monkeypatch, norm, eps) -> None:  # type: ignore[no-untyped-def]
    """With few probes per draw (several draws per estimate) and one sample per memory block too, the images end
    bit-identically, and the common images of another batch still do (the plain batch comparison is the paired
    table of test_paired_decision.py)."""
    model, x, y, spare = cnn_case(10, spare=2)
    attack = GeoDA(norm=norm, eps=eps, budget=300, seed=2)

    def run(xx: torch.Tensor, yy: torch.Tensor) -> AttackResult:
        return attack.run(LocalBlackBox(model, access="labels", budget=300), xx, yy)

    x2, y2, common = other_batch(x, y, spare, "replaced", 10)
    monkeypatch.setattr(geoda_module, "_DRAW_ELEMENTS", 7 * 9)  # 7 probes of 3 x 3 coefficients per draw
    small = run(x, y)
    assert small.success.any() and not small.success.all()  # some break early, others run to the end
    monkeypatch.setattr(geoda_module, "_PROBE_ELEMENTS", 1)  # one sample per block
    assert_same_rows(small, run(x, y), list(range(10)))
    assert_same_rows(small, run(x2, y2), common)


# -- known answers on the linear model (class 1 iff mean pixel > 0.5) ----------------------------------------------
@pytest.mark.parametrize("sub_dim", [2, 4])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_radius_approaches_the_closed_form_distance_of_a_linear_model(linear_model, norm, sub_dim) -> None:  # type: ignore[no-untyped-def]
    """The normal of the linear model (all pixels alike) lies in every low-frequency subspace; with the 2 x 2 or the
    full 4 x 4 subspace it is estimated among 3 or 15 other directions. l_2: within 3% of the distance (the
    estimate's angle error); l_inf: every sign right, so within the binary search's resolution. Never below it
    (the boundary points are adversarial)."""
    x, y = linear_images()
    r_true = linear_distance(linear_model, x, norm)
    bb = LocalBlackBox(linear_model, access="labels", budget=1500)
    r = GeoDA(norm=norm, eps=1e-3, budget=1500, sub_dim=sub_dim).run(bb, x, y)
    radius = r.extras["radius"]
    assert not r.success.any() and (r.queries == 1500).all()
    assert (radius >= r_true * (1 - 1e-5)).all()
    rtol = 0.03 if norm == "l2" else 1e-3
    assert (radius <= r_true * (1 + rtol)).all(), (radius / r_true)
    assert torch.allclose(distance(r), radius, atol=1e-6)


def test_the_estimate_converges_with_the_budget(linear_model) -> None:  # type: ignore[no-untyped-def]
    """More queries, a better normal: the l_2 excess over the closed form shrinks with the budget."""
    x, y = linear_images()
    r_true = linear_distance(linear_model, x, "l2")

    def excess(budget: int) -> float:
        r = GeoDA(norm="l2", eps=1e-3, budget=budget, sub_dim=4).run(
            LocalBlackBox(linear_model, access="labels", budget=budget), x, y)
        return float((r.extras["radius"] / r_true - 1).mean())

    short, long = excess(200), excess(3000)
    assert long < short and long < 0.02, (short, long)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_model_success_iff_eps_above_the_distance(linear_model, norm) -> None:  # type: ignore[no-untyped-def]
    x, y = linear_images()
    r_true = linear_distance(linear_model, x, norm)
    budget = 1000
    above = GeoDA(norm=norm, eps=float(r_true.max()) * 1.3, budget=budget, sub_dim=4).run(
        LocalBlackBox(linear_model, access="labels", budget=budget), x, y)
    assert above.success.all() and (above.queries < budget).all()
    assert (distance(above) <= float(r_true.max()) * 1.3 * (1 + BALL_TOL) + BALL_TOL).all()
    below = GeoDA(norm=norm, eps=float(r_true.min()) * 0.95, budget=budget, sub_dim=4).run(
        LocalBlackBox(linear_model, access="labels", budget=budget), x, y)
    assert not below.success.any()


def test_report_at_eps_or_boundary(linear_model) -> None:  # type: ignore[no-untyped-def]
    x, y = linear_images()
    eps = float(linear_distance(linear_model, x, "l2").max()) * 1.6
    at_eps = GeoDA(norm="l2", eps=eps, budget=1000).run(LocalBlackBox(linear_model, access="labels", budget=1000), x, y)
    at_bd = GeoDA(norm="l2", eps=eps, budget=1000, report_at="boundary").run(
        LocalBlackBox(linear_model, access="labels", budget=1000), x, y)
    assert at_eps.success.all() and at_bd.success.all()
    assert (distance(at_eps) > at_eps.extras["radius"] + 1e-3).all()
    assert (distance(at_eps) <= eps * (1 + BALL_TOL) + BALL_TOL).all()
    assert torch.allclose(distance(at_bd), at_bd.extras["radius"], atol=1e-6)


# -- settings ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("init_tries", 0), ("first_evals", 0), ("search_reserve", -1), ("max_doublings", -1), ("sub_dim", 0),
    ("sigma", 0.0), ("tol", -1e-4), ("lambda_param", 0.0), ("lambda_param", 1.5), ("report_at", "middle"),
    ("budget", 0), ("eot", 0),
])
def test_config_rejects_bad_settings(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        GeoDAConfig(**{field: value})  # type: ignore[arg-type]


def test_config_and_class() -> None:
    cfg = GeoDAConfig()
    assert (cfg.norm, cfg.sub_dim, cfg.sigma, cfg.tol, cfg.lambda_param, cfg.first_evals, cfg.search_reserve) == \
        ("linf", None, 2e-4, 1e-4, 0.6, 50, 25)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sigma = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        GeoDAConfig(0.05)  # type: ignore[misc]  # keyword-only
    with pytest.raises(ValueError, match="sub_dimm"):
        GeoDA(sub_dimm=3)
    assert GeoDA.name == "geoda" and GeoDA.access == "labels" and GeoDA.blackbox_access() == "labels"
    assert GeoDA.norms == ("l2", "linf")
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2'"):
        GeoDA(norm="l1")
    assert isinstance(GeoDA(norm="l2", eps=1.0).config, GeoDAConfig)


def test_sub_dim_larger_than_the_image_is_refused(linear_model) -> None:  # type: ignore[no-untyped-def]
    x, y = linear_images(2)
    with pytest.raises(ValueError, match="sub_dim"):
        GeoDA(sub_dim=5, budget=10).run(LocalBlackBox(linear_model, access="labels", budget=10), x, y)
