"""AAA: never changes a prediction, deterministic, moves the margin toward its target, keeps confidence."""

from __future__ import annotations

import pytest
import torch

from rfd.defenses import AAAConfig, DefenseSpec, aaa_logits, defend
from rfd.defenses.aaa import _adam_on_logits, aaa_targets
from rfd.models import create_model


def _margin(z: torch.Tensor) -> torch.Tensor:
    v = z.topk(2, dim=1).values
    return v[:, 0] - v[:, 1]


def _reference_aaa(z0: torch.Tensor, cfg: AAAConfig) -> torch.Tensor:
    """The same loss minimised with autograd and torch.optim.Adam (the way the authors run it)."""
    top = z0.argmax(1)
    rows = torch.arange(z0.shape[0])
    runner_up = z0.scatter(1, top[:, None], float("-inf")).amax(1)
    p0 = torch.softmax(z0 / cfg.temperature, 1)[rows, top]
    _, t = aaa_targets(z0[rows, top] - runner_up, cfg)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr)
    for _ in range(cfg.steps):
        p = torch.softmax(z / cfg.temperature, 1)[rows, top]
        loss = (_margin(z) - t).abs().sum() + cfg.calibration_weight * (p - p0).abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = z.detach()
    return torch.where((out.argmax(1) != top)[:, None], z0, out)


@pytest.mark.parametrize("scale", [0.01, 1.0, 5.0, 50.0])
def test_never_changes_a_prediction_on_random_logits(scale: float) -> None:
    g = torch.Generator().manual_seed(int(scale * 100))
    z = torch.randn(2000, 10, generator=g) * scale
    out = aaa_logits(z)
    assert torch.equal(out.argmax(1), z.argmax(1))


def test_never_changes_a_prediction_with_ties_and_near_ties() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(500, 5, generator=g)
    z[:100, 1] = z[:100, 0]  # exact ties
    z[100:300, 2] = z[100:300].max(1).values - 1e-4  # near ties: the optimiser could easily swap them
    z[300:, :] = 3.0  # all equal
    out = aaa_logits(z, AAAConfig(lr=1.0))  # a large step makes swaps likely; the guard must catch them
    assert torch.equal(out.argmax(1), z.argmax(1))


def test_guard_restores_exactly_the_rows_whose_label_the_optimiser_changed() -> None:
    # lr=1 overshoots: the raw optimiser swaps the top class of some rows; AAA must return those rows unchanged
    cfg = AAAConfig(lr=1.0)
    z = torch.randn(200, 10, generator=torch.Generator().manual_seed(0)) * 3
    top = z.argmax(1)
    rows = torch.arange(200)
    runner_up = z.scatter(1, top[:, None], float("-inf")).amax(1)
    p0 = torch.softmax(z, 1)[rows, top]
    _, t = aaa_targets(z[rows, top] - runner_up, cfg)
    raw = _adam_on_logits(z, top, p0, t, cfg)
    flipped = raw.argmax(1) != top
    assert flipped.sum().item() >= 3  # the case the guard exists for really happens
    out = aaa_logits(z, cfg)
    assert torch.equal(out[flipped], z[flipped])
    assert torch.equal(out[~flipped], raw[~flipped])
    assert torch.equal(out.argmax(1), top)


def test_matches_autograd_adam_on_the_same_loss() -> None:
    cfg = AAAConfig()
    z = torch.randn(300, 10, generator=torch.Generator().manual_seed(0)) * 5
    ours, ref = aaa_logits(z, cfg), _reference_aaa(z, cfg)
    row_err = (ours - ref).abs().amax(1)
    # |.| has kinks, so a rounding difference can switch a sign in a few rows late in the run; most agree.
    assert row_err.median().item() < 1e-4
    assert (row_err < 1e-3).float().mean().item() > 0.9


def test_margin_moves_to_the_reversed_attractor_target_and_confidence_stays() -> None:
    cfg = AAAConfig()
    z = torch.randn(1000, 10, generator=torch.Generator().manual_seed(2)) * 4
    out = aaa_logits(z, cfg)
    _, target = aaa_targets(_margin(z), cfg)
    before = (_margin(z) - target).abs()
    after = (_margin(out) - target).abs()
    assert after.median().item() < 0.1 < before.median().item()
    top = z.argmax(1)
    p0 = torch.softmax(z, 1).gather(1, top[:, None])
    p1 = torch.softmax(out, 1).gather(1, top[:, None])
    assert (p1 - p0).abs().median().item() < 0.05


def test_attractor_grid() -> None:
    cfg = AAAConfig(interval=6.0, reverse_step=1.0, dev=0.5)
    a, t = aaa_targets(torch.tensor([2.0, 4.0, 8.0, 10.0]), cfg)
    # attractors sit at odd multiples of 3 (= (k - 0.5) * 6); the target mirrors the margin around them
    torch.testing.assert_close(a, torch.tensor([3.0, 3.0, 9.0, 9.0]))
    torch.testing.assert_close(t, torch.tensor([4.0, 2.0, 10.0, 8.0]))


def test_deterministic_and_batch_independent() -> None:
    z = torch.randn(64, 10, generator=torch.Generator().manual_seed(3)) * 3
    a = aaa_logits(z)
    assert torch.equal(a, aaa_logits(z))
    torch.testing.assert_close(aaa_logits(z[:5]), a[:5], rtol=0, atol=1e-5)


def test_works_under_inference_mode_and_keeps_dtype() -> None:
    z = torch.randn(8, 10, dtype=torch.float64)
    with torch.inference_mode():
        out = aaa_logits(z)
    assert out.dtype == torch.float64 and torch.equal(out.argmax(1), z.argmax(1))


def test_bad_logits() -> None:
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        aaa_logits(torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        aaa_logits(torch.zeros(3, 1))


def test_aaa_on_a_model_keeps_every_prediction_and_is_deterministic() -> None:
    torch.manual_seed(0)
    m = create_model("fmnist-vgg", pretrained=False)
    x = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), defend(m, DefenseSpec(family="aaa")) as d:
        clean = m(x)
        out = d(x)
        assert torch.equal(out.argmax(1), clean.argmax(1))
        assert torch.equal(out, d(x))
        assert not torch.equal(out, clean)


def test_aaa_passes_the_undefended_gradient_straight_through() -> None:
    torch.manual_seed(0)
    m = create_model("fmnist-vgg", pretrained=False)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with defend(m, DefenseSpec(family="aaa")) as d:
        xa = x.clone().requires_grad_(True)
        out = d(xa)
        with torch.no_grad():
            assert torch.equal(out.detach(), d(x))  # same values with and without the gradient path
        out[:, 0].sum().backward()
    xb = x.clone().requires_grad_(True)
    m(xb)[:, 0].sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["signflip", "rays"])
def test_label_only_attacks_see_exactly_the_undefended_model_through_aaa(attack: str, bundled_eval) -> None:
    # AAA never changes a label, so with the same seed a decision-based attack makes the same queries and ends
    # the same way on both. (Study cells differ only because each cell derives its own attack seed.)
    from rfd.attacks import make_attack
    from rfd.blackbox import LocalBlackBox

    m = create_model("fmnist-vgg").eval()  # the shipped checkpoint: real decisions, some images break
    idx = torch.arange(0, 1000, 125)  # 8 images spread over the class-sorted split (8 of the 10 classes)
    x, y = bundled_eval.images[idx], bundled_eval.labels[idx]
    runs = []
    for model in (m, defend(m, DefenseSpec(family="aaa"))):
        a = make_attack(attack, norm="linf", eps=0.05, budget=300, seed=3)
        runs.append(a.run(LocalBlackBox(model, access="labels", budget=300), x, y))
    base, aaa = runs
    assert 0 < int(base.success.sum()) < 8, base.summary()  # the attack did something, and not everything
    assert torch.equal(base.success, aaa.success) and torch.equal(base.queries, aaa.queries)
    assert torch.equal(base.x_adv, aaa.x_adv)
