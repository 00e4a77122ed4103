"""White-box attacks (PGD, C&W): gradients through the defense hooks, EOT, the threat model, query accounting,
known answers on the linear fixture, and (slow) the effects on the reference models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rfd.attacks import make_attack
from rfd.attacks.cw import CarliniWagner, adam_step, from_tanh_space, to_tanh_space
from rfd.attacks.pgd import PGD, PGDConfig
from rfd.attacks.rng import SampleStreams
from rfd.attacks.whitebox import ascent_step, cw_margin, random_start
from rfd.blackbox import BlackBox, GradientsUnavailable, LocalBlackBox
from rfd.blackbox.threat import BALL_TOL


class Obfuscated(nn.Module):
    """A randomized 2-class model on 1x4x4 images whose single-draw gradients are useless but whose expected
    gradient is informative (Athalye et al.'s case for EOT).

    u = x + N(0, s^2); z_1 = mean(u) + a * mean(sin(k u)); z_0 = 0.5. With k s = 5 the sine term averages
    out over the noise, while one draw's gradient is dominated by a k cos(k u) of random sign."""

    def __init__(self, a: float = 0.05, k: float = 200.0, s: float = 0.025, seed: int = 0) -> None:
        super().__init__()
        self.a, self.k, self.s = a, k, s
        self.gen = torch.Generator().manual_seed(seed)
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the black box a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x + self.s * torch.randn(x.shape, generator=self.gen)
        z1 = u.flatten(1).mean(1) + self.a * torch.sin(self.k * u).flatten(1).mean(1)
        return torch.stack([torch.full_like(z1, 0.5), z1], 1)


def _linear_inputs(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images of class 0 for the linear fixture (class 1 iff mean pixel > 0.5), pixels in [0.1, 0.4] so the
    box never binds: the l_inf distance to the boundary is 0.5 - mean, the l_2 distance 4 (0.5 - mean)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.3 * torch.rand(n, 1, 4, 4, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    return x, y, 0.5 - x.flatten(1).mean(1)


def _small_cnn(seed: int = 0) -> nn.Module:
    from rfd.models.registry import create_model

    torch.manual_seed(seed)
    return create_model("fmnist-vgg", pretrained=False)


# -- plain functions ---------------------------------------------------------------------------------------

def test_cw_margin_clamps_at_minus_kappa() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 4.0, 1.0]])
    y = torch.tensor([0, 0])
    assert torch.equal(cw_margin(z, y, 0.0), torch.tensor([2.0, 0.0]))
    assert torch.equal(cw_margin(z, y, 2.5), torch.tensor([2.0, -2.5]))
    assert torch.equal(cw_margin(z, y, math.inf), torch.tensor([2.0, -4.0]))


def test_ascent_step_lengths() -> None:
    g = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.zeros_like(g)
    linf = ascent_step(x, g, "linf", 0.1)
    assert torch.allclose(linf.abs(), torch.full_like(g, 0.1))
    assert torch.equal(linf.sign(), g.sign())
    l2 = ascent_step(x, g, "l2", 0.5)
    assert torch.allclose(l2.flatten(1).norm(dim=1), torch.full((3,), 0.5))
    assert (l2.flatten(1) * g.flatten(1)).sum(1).gt(0).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_in_ball_box_and_seeded(norm: str) -> None:
    x0 = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(16)
    a = random_start(x0, norm, 0.3, SampleStreams(16, 5).rows(rows))
    b = random_start(x0, norm, 0.3, SampleStreams(16, 5).rows(rows))
    assert torch.equal(a, b)
    d = (a - x0).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (dist <= 0.3 * (1 + 1e-6)).all() and (dist > 0).all()
    assert a.min() >= 0 and a.max() <= 1


def test_tanh_space_round_trip_and_adam_known_steps() -> None:
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(from_tanh_space(to_tanh_space(x)), x, atol=1e-5)
    assert torch.isfinite(to_tanh_space(torch.tensor([0.0, 1.0]))).all()
    # with a constant gradient the bias-corrected moments are g and g^2: every step moves lr * sign(g)
    g = torch.tensor([[2.0, -0.5, 1e-3]])
    w, m, v = torch.zeros_like(g), torch.zeros_like(g), torch.zeros_like(g)
    for t in range(1, 4):
        w, m, v = adam_step(w, g, m, v, t, 0.1)
        assert torch.allclose(w, -0.1 * t * g.sign(), atol=1e-5)
    # a flipped gradient after one step: m_hat = (0.09 g - 0.1 g) / 0.19, v_hat = g^2 (same magnitude)
    w2, _, _ = adam_step(w, -g, m, v, 4, 0.1)
    m4 = 0.9 * m - 0.1 * g
    expected = w - 0.1 * (m4 / (1 - 0.9 ** 4)) / ((0.999 * v + 0.001 * g * g) / (1 - 0.999 ** 4)).sqrt()
    assert torch.allclose(w2, expected, atol=1e-6)


# -- gradients through the defense ----------------------------------------------------------------------

@pytest.mark.parametrize("layer", ["penultimate", "net.features.3"])
def test_gradients_flow_through_feature_defense_hooks(layer: str, bundled_eval) -> None:
    from rfd.defenses import DefenseSpec, defend

    model = _small_cnn()
    defended = defend(model, DefenseSpec(family="feature", sigma=0.5, layers=(layer,)), seed=0)
    x, y = bundled_eval.images[:6], bundled_eval.labels[:6]
    bb = LocalBlackBox(defended)
    bb.start(6)
    idx = torch.arange(6)

    def grad() -> torch.Tensor:
        xi = x.clone().requires_grad_(True)
        z = bb.logits_with_grad(xi, idx)[0]
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(z, y), xi)
        return g

    before = sum(defended.injections.values())
    g1, g2 = grad(), grad()
    assert sum(defended.injections.values()) == before + 2  # the hooks ran in both gradient passes
    assert g1.abs().sum() > 0 and g2.abs().sum() > 0
    assert not torch.allclose(g1, g2)  # a fresh noise draw per pass changes the gradient
    xi = x.clone().requires_grad_(True)
    (g_clean,) = torch.autograd.grad(nn.functional.cross_entropy(model(xi), y), xi)
    assert not torch.allclose(g1, g_clean)
    assert torch.equal(bb.queries, torch.full((6,), 2))  # each gradient pass is one query per sample


def test_logits_with_grad_eot_batch_and_charge(linear_model) -> None:
    bb = LocalBlackBox(linear_model, budget=5)
    bb.start(3)
    x = torch.rand(2, 1, 4, 4)
    z = bb.logits_with_grad(x, torch.tensor([0, 2]), repeats=4)
    assert z.shape == (4, 2, 2) and z.requires_grad
    assert torch.equal(bb.queries, torch.tensor([4, 0, 4]))
    from rfd.blackbox import BudgetExceeded

    with pytest.raises(BudgetExceeded):
        bb.logits_with_grad(x, torch.tensor([0, 2]), repeats=2)


# -- PGD ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.8)])
def test_pgd_stays_in_ball_and_box_and_counts_queries(norm: str, eps: float, bundled_eval) -> None:
    from rfd.defenses import DefenseSpec, defend

    model = defend(_small_cnn(), DefenseSpec(family="feature", sigma=0.3), seed=0)
    x, y = bundled_eval.images[:12], bundled_eval.labels[:12]
    attack = PGD(norm=norm, eps=eps, steps=5, eot=2, restarts=2, budget=100, seed=0)
    res = attack.run(LocalBlackBox(model), x, y)
    d = (res.x_adv - x).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (dist <= eps * (1 + BALL_TOL) + BALL_TOL).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(res.queries[~res.clean_correct], torch.zeros_like(res.queries[~res.clean_correct]))
    failed = res.clean_correct & ~res.success
    assert (res.queries[failed] == 5 * 2 * 2).all()  # all steps of both restarts, 2 forwards each
    assert (res.queries[res.success] <= 20).all() and (res.queries[res.success] % 2 == 0).all()


def test_pgd_linf_known_answer_on_linear_model(linear_model) -> None:
    x, y, gap = _linear_inputs()
    bb = LocalBlackBox(linear_model, verify=1)
    # signed steps move every pixel by +eps at the end: success iff eps > the l_inf gap
    hit = PGD(norm="linf", eps=float(gap.max()) + 0.01, steps=10).run(bb, x, y)
    assert hit.success.all()
    assert (hit.linf <= float(gap.max()) + 0.01 + 1e-6).all()
    miss = PGD(norm="linf", eps=float(gap.min()) - 0.01, steps=10).run(bb, x, y)
    assert not miss.success.any()
    assert torch.equal(miss.queries, torch.full((8,), 10))


def test_pgd_l2_known_answer_on_linear_model(linear_model) -> None:
    x, y, gap = _linear_inputs()
    dist = 4 * gap  # l_2 distance to the boundary (the gradient is the constant all-ones direction)
    bb = LocalBlackBox(linear_model, verify=1)
    hit = PGD(norm="l2", eps=float(dist.max()) * 1.02, steps=20, random_start=False).run(bb, x, y)
    assert hit.success.all()
    assert (hit.l2 >= dist * (1 - 1e-4)).all()  # no adversarial exists closer than the closed form
    miss = PGD(norm="l2", eps=float(dist.min()) * 0.98, steps=20).run(bb, x, y)
    assert not miss.success.any()


def test_pgd_budget_caps_steps(linear_model) -> None:
    x, y, gap = _linear_inputs()
    attack = PGD(norm="linf", eps=float(gap.min()) - 0.01, steps=50, eot=3, budget=20)
    res = attack.run(LocalBlackBox(linear_model), x, y)
    assert torch.equal(res.queries, torch.full((8,), 18))  # six steps of 3 forwards fit into 20 queries


def test_eot_makes_pgd_stronger_on_randomized_model() -> None:
    x = 0.3 + 0.1 * torch.rand(48, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(48, dtype=torch.long)

    def rate(eot: int) -> tuple[float, float]:
        attack = PGD(norm="linf", eps=0.2, steps=40, eot=eot, budget=40 * eot, seed=0)
        res = attack.run(LocalBlackBox(Obfuscated()), x, y)
        return res.clean_accuracy, res.success_rate

    clean1, plain = rate(1)
    clean32, eot = rate(32)
    assert clean1 == clean32 == 1.0
    assert eot >= plain + 0.5, (plain, eot)


def test_pgd_is_deterministic_for_seeds(bundled_eval) -> None:
    from rfd.defenses import DefenseSpec, defend

    x, y = bundled_eval.images[:6], bundled_eval.labels[:6]
    model = _small_cnn()

    def once():  # type: ignore[no-untyped-def]
        defended = defend(model, DefenseSpec(family="feature", sigma=0.3), seed=4)
        out = PGD(norm="linf", eps=0.05, steps=4, eot=2, seed=7).run(LocalBlackBox(defended), x, y)
        defended.remove()
        return out

    a, b = once(), once()
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.queries, b.queries) and torch.equal(a.success, b.success)


def test_whitebox_attacks_need_a_local_black_box(linear_model) -> None:
    class Remote(BlackBox):
        device = torch.device("cpu")  # type: ignore[assignment]
        num_classes = 2  # type: ignore[assignment]

        def _forward(self, x: torch.Tensor) -> torch.Tensor:
            return linear_model(x)

    x, y, _ = _linear_inputs(2)
    for attack in (PGD(), CarliniWagner(norm="l2", eps=1.0)):
        with pytest.raises(GradientsUnavailable, match="LocalBlackBox"):
            attack.run(Remote(), x, y)


def test_configs_reject_bad_settings() -> None:
    with pytest.raises(ValueError, match="loss"):
        PGDConfig(loss="hinge")
    with pytest.raises(ValueError, match="steps"):
        PGD(steps=0)
    with pytest.raises(ValueError, match="kappa"):
        CarliniWagner(kappa=-1.0)
    assert PGDConfig(eps=0.1, steps=10).alpha == pytest.approx(0.025)
    assert isinstance(make_attack("pgd", eps=0.1), PGD)
    assert isinstance(make_attack("cw", norm="l2"), CarliniWagner)


# -- C&W ----------------------------------------------------------------------------------------------------

def test_cw_l2_reaches_the_closed_form_distance(linear_model) -> None:
    x, y, gap = _linear_inputs()
    dist = 4 * gap
    bb = LocalBlackBox(linear_model, verify=1)
    cw = CarliniWagner(norm="l2", eps=float(dist.max()) * 1.02, binary_steps=4, steps=200, budget=800)
    res = cw.run(bb, x, y)
    assert res.success.all()
    assert torch.allclose(res.l2, dist, rtol=0.01)  # minimal, not just inside the generous ball
    # a ball smaller than every closed-form distance holds no adversarial: C&W must not claim one
    cw = CarliniWagner(norm="l2", eps=float(dist.min()) * 0.97, binary_steps=4, steps=200, budget=800)
    res = cw.run(bb, x, y)
    assert not res.success.any()
    assert torch.equal(res.queries, torch.full((8,), 800))
    # c = 10 (the 4th constant) crosses the boundary: failures keep their smallest adversarial (outside)
    assert (res.l2 >= dist * (1 - 1e-4)).all() and (res.l2 <= dist * 1.05).all()
    assert (linear_model(res.x_adv).argmax(1) == 1).all()


def test_cw_linf_is_pgd_on_the_margin(linear_model) -> None:
    x, y, gap = _linear_inputs()
    bb = LocalBlackBox(linear_model, verify=1)
    res = CarliniWagner(norm="linf", eps=float(gap.max()) + 0.01, steps=10, budget=10).run(bb, x, y)
    assert res.success.all() and (res.linf <= float(gap.max()) + 0.01 + 1e-6).all()
    assert res.config["kappa"] == 0.0


# -- reference models (slow) --------------------------------------------------------------------------------

def _balanced_eval(bundled_eval, n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    from rfd.data.selection import balanced_indices

    idx = balanced_indices(bundled_eval.labels, n, seed=0, num_classes=10)  # the bundled split is sorted by class
    return bundled_eval.images[idx], bundled_eval.labels[idx]


@pytest.mark.slow
def test_pgd_breaks_undefended_fmnist_vgg(bundled_eval, reference_model) -> None:  # type: ignore[no-untyped-def]
    model = reference_model("fmnist-vgg")
    x, y = _balanced_eval(bundled_eval)
    res = PGD(norm="linf", eps=0.05, steps=20, seed=0).run(LocalBlackBox(model), x, y)
    assert res.clean_accuracy >= 0.85
    assert res.robust_accuracy() <= 0.12, res.summary()  # 91% clean -> 8% with Madry's 20 steps
    # 100 steps leave 4 of these 100 images; AutoAttack's APGD-CE / APGD-T leave 3 / 2 of them
    # (benchmarks/bench_pgd_peers.py): a few trousers and bags resist eps 0.05 whatever the attack
    res = PGD(norm="linf", eps=0.05, steps=100, step_size=0.05 / 20, budget=100, seed=0).run(LocalBlackBox(model), x, y)
    assert res.robust_accuracy() <= 0.06, res.summary()
    res = PGD(norm="linf", eps=0.1, steps=20, seed=0).run(LocalBlackBox(model), x, y)
    assert res.robust_accuracy() <= 0.02, res.summary()


@pytest.mark.slow
def test_adversarial_training_makes_fmnist_vgg_more_robust(  # type: ignore[no-untyped-def]
        bundled_eval, reference_model) -> None:
    clean, at = reference_model("fmnist-vgg"), reference_model("fmnist-vgg-at")
    x, y = _balanced_eval(bundled_eval)
    attack = PGD(norm="linf", eps=0.1, steps=20, seed=0)
    r_clean = attack.run(LocalBlackBox(clean), x, y).robust_accuracy()
    r_at = attack.run(LocalBlackBox(at), x, y).robust_accuracy()
    assert r_at >= r_clean + 0.4, (r_clean, r_at)
