"""Projections onto the threat model (eps-ball intersected with [0, 1]), tested alone."""

from __future__ import annotations

import pytest
import torch

from rfd.attacks.projections import l2_normalize, project, project_l2, project_linf
from rfd.blackbox.threat import ThreatModel


def _batch(seed: int, n: int = 16, shape: tuple[int, ...] = (3, 5, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, *shape, generator=g)
    x = x0 + 0.5 * torch.randn(n, *shape, generator=g)  # far outside the ball and often outside [0, 1]
    return x, x0


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("linf", 0.3), ("l2", 0.5), ("l2", 3.0)])
def test_projection_lands_in_ball_and_box(norm: str, eps: float) -> None:
    x, x0 = _batch(0)
    p = project(x, x0, norm, eps)
    assert p.shape == x.shape and p.dtype == x.dtype
    assert bool(ThreatModel(norm=norm, eps=eps).contains(p, x0).all())
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_idempotent_and_keeps_inside_points(norm: str) -> None:
    x, x0 = _batch(1)
    p = project(x, x0, norm, 0.2)
    assert torch.allclose(project(p, x0, norm, 0.2), p, atol=1e-6)
    inside = x0 + 0.01 * (torch.rand_like(x0) - 0.5)
    inside = inside.clamp(0, 1)
    assert torch.equal(project(inside, x0, norm, 0.2), inside)


def test_linf_projection_is_the_nearest_point() -> None:
    # The box {|x - x0|_inf <= eps} ∩ [0,1] is a product of intervals: the nearest point clips each coordinate.
    x, x0 = _batch(2)
    eps = 0.1
    p = project_linf(x, x0, eps)
    lo, hi = (x0 - eps).clamp_min(0), (x0 + eps).clamp_max(1)
    assert torch.equal(p, torch.minimum(torch.maximum(x, lo), hi))
    # no random point of the set is closer to x than p
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        q = lo + (hi - lo) * torch.rand(x.shape, generator=g)
        assert bool(((q - x).flatten(1).norm(dim=1) >= (p - x).flatten(1).norm(dim=1) - 1e-6).all())


def test_l2_projection_scales_along_the_perturbation() -> None:
    x0 = torch.full((2, 1, 2, 2), 0.5)
    d = torch.tensor([0.3, 0.4, 0.0, 0.0]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)  # norm 0.5
    p = project_l2(x0 + d, x0, 0.25)
    assert torch.allclose(p - x0, d * 0.5, atol=1e-7)  # halved: same direction, norm 0.25
    assert torch.equal(project_l2(x0 + d, x0, 1.0), x0 + d)  # inside: untouched


def test_per_sample_eps() -> None:
    x, x0 = _batch(4, n=3)
    eps = torch.tensor([0.01, 0.1, 0.5])
    for norm in ("linf", "l2"):
        p = project(x, x0, norm, eps)
        dist = ThreatModel(norm=norm, eps=1.0).distance(p, x0)
        assert bool((dist <= eps * (1 + 1e-5) + 1e-6).all())
        assert float(dist[0]) < float(dist[2])


def test_l2_normalize_unit_rows_and_zero_rows() -> None:
    v = torch.zeros(3, 1, 2, 2)
    v[0, 0, 0, 0] = 3.0
    v[1] = 2.0
    u = l2_normalize(v)
    assert torch.allclose(u.flatten(1).norm(dim=1), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.equal(u[2], v[2])


def test_unknown_norm_is_rejected() -> None:
    x, x0 = _batch(5, n=1)
    with pytest.raises(ValueError, match="norm"):
        project(x, x0, "l1", 0.1)
