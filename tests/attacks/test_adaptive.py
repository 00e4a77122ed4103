"""Adaptive options of the score-based attacks against randomized models: Square / SignHunt ``resample`` (re-evaluate
a proposal before it becomes the incumbent) and NES ``momentum`` and plateau lr decay (Ilyas et al. 2018).

Invariants (eps-ball, budget, exact accounting, determinism, defaults), known answers on scripted and linear
models, and the effect each option exists for, measured on the noise-free margin of a noisy linear model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from rfd.attacks import AttackResult, make_attack
from rfd.attacks.nes import NESConfig, plateau_update
from rfd.attacks.rng import SampleStreams
from rfd.attacks.signhunt import SignHuntConfig
from rfd.attacks.square import SquareConfig, linf_init
from rfd.blackbox import LocalBlackBox, ThreatModel
from tests.helpers.models import Counting  # the score tests' counting wrapper
from tests.helpers.models import TinyCNN as NoisyCNN  # noise > 0: fresh feature noise per forward

EPS = {"linf": 0.05, "l2": 0.5}
NES_ADAPTIVE = {"momentum": 0.9, "plateau_length": 3, "plateau_drop": 2.0}


# -- models and black boxes -------------------------------------------------------------------------------------
class NoisyLinear(nn.Module):
    """2 classes on 1 x S x S images, logits ``[0.5, slope * mean(x)]`` plus fresh N(0, noise^2) per logit and
    forward (own seeded generator): the noise-free margin of class 0 is ``0.5 - slope * mean(x)``."""

    def __init__(self, noise: float, seed: int = 0, slope: float = 1.0) -> None:
        super().__init__()
        self.noise, self.slope = noise, slope
        self.gen = torch.Generator().manual_seed(seed)
        self.num_classes = 2

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        m = self.slope * x.flatten(1).mean(1)
        return torch.stack([torch.full_like(m, 0.5), m], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.clean(x)
        return z + self.noise * torch.randn(z.shape, generator=self.gen) if self.noise else z


class AskingBlackBox(LocalBlackBox):
    """Counts, per sample and independently of the black box's own accounting, the queries the attack asks for."""

    def start(self, n: int) -> None:
        super().start(n)
        self.asked = torch.zeros(n, dtype=torch.int64)

    def scores(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        out = super().scores(x, idx, repeats=repeats)  # raises (and counts nothing) past the budget
        self.asked.index_add_(0, idx, torch.full_like(idx, repeats))
        return out


class ScriptedMargin(nn.Module):
    """Forward call k answers margin ``script[k % len(script)]`` (of class 0) for every row."""

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.script = script
        self.calls = 0
        self.num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.script[self.calls % len(self.script)]
        self.calls += 1
        return torch.tensor([v, 0.0]).expand(x.shape[0], 2).clone()


class ClaimSpy(LocalBlackBox):
    """Records every claim offered to the check (rows, highest query count then) and rejects it without a forward;
    the clean check says every image is correct, also without a forward."""

    def start(self, n: int) -> None:
        super().start(n)
        self.claims: list[tuple[int, int]] = []

    def is_adversarial(self, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> torch.Tensor:
        if kw.get("threat") is not None:
            self.claims.append((x.shape[0], int(self.queries.max())))
        return torch.zeros(x.shape[0], dtype=torch.bool)


def _run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, verify: int = 3,
         **cfg: Any) -> tuple[AttackResult, AskingBlackBox, Counting]:
    counting = Counting(model)
    bb = AskingBlackBox(counting, budget=int(cfg.get("budget", 1000)), verify=verify)
    res = make_attack(name, **cfg).run(bb, x, y)
    return res, bb, counting


def _true_margin(x: torch.Tensor) -> torch.Tensor:
    return 0.5 - x.flatten(1).mean(1)


def _far_images(n: int, size: int, seed: int, mean: float = 0.2) -> torch.Tensor:
    """1 x size x size images of mean ~``mean`` (class 0 of NoisyLinear with margin >= 0.25 in any eps-ball):
    no sampling noise used here can make a check pass, so the attack spends its whole budget."""
    g = torch.Generator().manual_seed(seed)
    return mean + 0.1 * (torch.rand(n, 1, size, size, generator=g) - 0.5)


ADAPTIVE = [("square", {"resample": 2}), ("signhunt", {"resample": 3}), ("nes", {"samples": 10, **NES_ADAPTIVE})]


# -- invariants -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name,extra", ADAPTIVE, ids=[a for a, _ in ADAPTIVE])
def test_adaptive_invariants_on_a_noisy_cnn(name: str, extra: dict[str, Any], norm: str) -> None:
    model = NoisyCNN(1, 8, 3, seed=1, noise=0.3)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = NoisyCNN(1, 8, 3, seed=1, noise=0.0)(x).argmax(1)
    budget = 150
    res, bb, counting = _run(name, model, x, y, norm=norm, eps=EPS[norm], budget=budget, seed=3, eot=2, **extra)
    threat = ThreatModel(norm=norm, eps=EPS[norm])  # type: ignore[arg-type]
    assert bool(threat.contains(res.x_adv, x).all())  # final images in the ball and [0, 1] ...
    assert 0.0 <= counting.lo and counting.hi <= 1.0  # ... and so was every query
    # exact accounting: what the attack asked for is what the black box charged, never past the budget
    assert torch.equal(bb.asked, bb.queries.cpu())
    assert int(bb.queries.max()) <= budget
    assert torch.equal(res.queries, torch.where(res.success, res.queries, bb.queries.cpu()))
    assert bool((res.queries <= bb.queries.cpu()).all())
    forwards = int(bb.asked.sum()) + bb.verification_forwards + int(getattr(bb, "reevaluation_forwards", 0))
    assert counting.rows == forwards


@pytest.mark.parametrize("name,extra", ADAPTIVE, ids=[a for a, _ in ADAPTIVE])
def test_adaptive_budget_is_spent_and_never_exceeded(name: str, extra: dict[str, Any]) -> None:
    # no success possible: every image spends what it can. Square and SignHunt keep proposing when they cannot pay
    # the re-evaluations, so with eot=2 they spend all 130; NES pays nothing extra: 5 iterations of 11 * 2.
    x = _far_images(4, 4, seed=0)
    y = torch.zeros(4, dtype=torch.long)
    res, bb, _ = _run(name, NoisyLinear(0.01, seed=1), x, y, norm="linf", eps=0.05, budget=130, eot=2, **extra)
    assert not bool(res.success.any())
    expected = 130 if name != "nes" else 130 // 22 * 22
    assert res.queries.tolist() == [expected] * 4
    assert bb.asked.tolist() == [expected] * 4


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name,extra", ADAPTIVE, ids=[a for a, _ in ADAPTIVE])
def test_adaptive_same_seed_same_result(name: str, extra: dict[str, Any], norm: str) -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = NoisyCNN(1, 8, 3, seed=4, noise=0.0)(x).argmax(1)
    runs = [_run(name, NoisyCNN(1, 8, 3, seed=4, noise=0.2), x, y, norm=norm, eps=EPS[norm], budget=90, seed=s,
                 **extra)[0] for s in (5, 5, 6)]
    a, b, c = runs
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries) and torch.equal(a.success, b.success)
    if name != "signhunt":  # SignHunt draws nothing from the seed
        assert not torch.equal(a.x_adv, c.x_adv)


DEFAULTS = [("square", {"resample": 0}), ("signhunt", {"resample": 0}),
            ("nes", {"samples": 10, "momentum": 0.0, "plateau_length": 0, "plateau_drop": 2.0, "min_lr": None})]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name,explicit", DEFAULTS, ids=[a for a, _ in DEFAULTS])
def test_defaults_equal_explicit_defaults(name: str, explicit: dict[str, Any], norm: str) -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = NoisyCNN(1, 8, 3, seed=6, noise=0.0)(x).argmax(1)
    base = {"samples": 10} if name == "nes" else {}
    cfg: dict[str, Any] = {"norm": norm, "eps": EPS[norm], "budget": 120, "seed": 1}
    a, bba, ca = _run(name, NoisyCNN(1, 8, 3, seed=6, noise=0.2), x, y, **cfg, **base)
    b, bbb, cb = _run(name, NoisyCNN(1, 8, 3, seed=6, noise=0.2), x, y, **cfg, **explicit)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries) and torch.equal(a.success, b.success)
    assert torch.equal(bba.asked, bbb.asked) and ca.rows == cb.rows
    assert a.config == b.config


def test_config_validation() -> None:
    for cls in (SquareConfig, SignHuntConfig):
        assert cls().resample == 0
        for bad in (-1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="resample"):
                cls(resample=bad)  # type: ignore[arg-type]
        assert cls(resample=4).resample == 4
    c = NESConfig()
    assert (c.momentum, c.plateau_length, c.plateau_drop, c.min_lr) == (0.0, 0, 2.0, None)
    assert NESConfig(norm="linf").lr_floor == 0.005 / 200 and NESConfig(lr=0.1, min_lr=0.01).lr_floor == 0.01
    for bad_kw in ({"momentum": -0.1}, {"momentum": 1.0}, {"plateau_length": -1}, {"plateau_length": 1},
                   {"plateau_length": 2.5}, {"plateau_drop": 1.0}, {"plateau_drop": 0.5}, {"min_lr": 0.0},
                   {"min_lr": -1e-3}, {"lr": 0.01, "min_lr": 0.02}):
        with pytest.raises(ValueError, match=next(k for k in bad_kw if k != "lr")):
            NESConfig(**bad_kw)
    with pytest.raises(ValueError, match="resample"):
        make_attack("square", resample=-2)
    NESConfig(momentum=0.9, plateau_length=5, plateau_drop=2.0, min_lr=1e-4)  # the paper's values are fine


# -- resample: known answers ------------------------------------------------------------------------------------
def test_square_resample_cannot_accept_without_the_budget_for_reevaluation() -> None:
    # budget 3, resample 5: the start is taken on its single evaluation and no proposal can ever pay its 5
    # re-evaluations, so the final image is the start (the vertical stripes drawn first from the seed)
    x = _far_images(6, 4, seed=1)
    y = torch.zeros(6, dtype=torch.long)
    res, _, _ = _run("square", NoisyLinear(0.0), x, y, norm="linf", eps=0.05, budget=3, seed=2, resample=5)
    start = linf_init(x, 0.05, SampleStreams(6, 2).rows(torch.arange(6)))  # the first draw of each image's stream
    assert torch.equal(res.x_adv, start) and res.queries.tolist() == [3] * 6
    plain, _, _ = _run("square", NoisyLinear(0.0), x, y, norm="linf", eps=0.05, budget=3, seed=2)
    assert not torch.equal(plain.x_adv, start)  # without resampling some improving proposal is accepted


@pytest.mark.parametrize("budget,resample,flipped", [(6, 2, True), (5, 2, False), (2, 0, True)])
def test_signhunt_resample_known_answer(budget: int, resample: int, flipped: bool) -> None:
    # Class 1 images (mean 0.8, margin mean - 0.5): the all-ones probe x + eps is worst, flipping every sign (x - eps)
    # is best. With resample 2 the first probe costs 3 queries, the full flip 3 more: budget 6 keeps it, budget 5
    # cannot pay the re-evaluation and keeps x + eps (the next probe cannot pay either). Plain SignHunt: 2 queries.
    x = _far_images(3, 4, seed=2, mean=0.8)
    y = torch.ones(3, dtype=torch.long)
    res, bb, _ = _run("signhunt", NoisyLinear(0.0), x, y, norm="linf", eps=0.05, budget=budget, resample=resample)
    assert torch.allclose(res.x_adv, x - 0.05 if flipped else x + 0.05, atol=1e-6)
    assert res.queries.tolist() == [budget] * 3 and bb.asked.tolist() == [budget] * 3


@pytest.mark.parametrize("name", ["square", "signhunt"])
def test_resample_claims_on_the_mean_of_the_evaluations(name: str) -> None:
    # Forward calls answer margins -1, 3, -1, 3, ...: each single first evaluation looks adversarial, but with
    # resample=1 every candidate's mean is 1, so nothing is claimed; plain attacks claim the -1 draws.
    x = _far_images(4, 4, seed=3)
    y = torch.zeros(4, dtype=torch.long)
    counts = {}
    for resample in (0, 1):
        bb = ClaimSpy(ScriptedMargin([-1.0, 3.0]), budget=8)
        res = make_attack(name, norm="linf", eps=0.05, budget=8, resample=resample).run(bb, x, y)
        assert res.queries.tolist() == [8] * 4
        counts[resample] = len(bb.claims)
    assert counts[0] > 0 and counts[1] == 0
    # a mean below zero is claimed: margins -3, 1 average to -1 at the start
    bb = ClaimSpy(ScriptedMargin([-3.0, 1.0]), budget=2)
    make_attack(name, norm="linf", eps=0.05, budget=2, resample=1).run(bb, x, y)
    assert bb.claims == [(4, 2)]
    # a candidate that cannot pay its re-evaluation is claimed on its single evaluation: start (-1, 3) at
    # queries 2, then a proposal at -1 with no budget left for the second evaluation
    bb = ClaimSpy(ScriptedMargin([-1.0, 3.0]), budget=3)
    make_attack(name, norm="linf", eps=0.05, budget=3, resample=1).run(bb, x, y)
    assert bb.claims == [(4, 3)]


# -- the effects ------------------------------------------------------------------------------------------------
def _gain(name: str, noise: float, budget: int, seed: int, size: int = 8, norm: str = "linf",
          **cfg: Any) -> float:
    """Mean change of the noise-free margin from the clean image to the final image (lower = better attack)."""
    x = _far_images(16, size, seed=100 + seed)
    y = torch.zeros(16, dtype=torch.long)
    res, _, _ = _run(name, NoisyLinear(noise, seed=seed), x, y, norm=norm, eps=EPS[norm], budget=budget, seed=seed,
                     verify=9, **cfg)
    assert not bool(res.success.any()) and res.queries.tolist() == [budget] * 16  # equal budgets, all spent
    return float((_true_margin(res.x_adv) - _true_margin(x)).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_square_resample_reaches_a_lower_true_margin_on_a_noisy_model(seed: int) -> None:
    # Margin noise sd 0.0028 against true steps of ~0.006 per accepted window: plain Square keeps lucky draws as
    # incumbents and stalls. Measured over 12 seeds: resample=3 lowers the mean true margin by 0.008 - 0.013 more.
    plain = _gain("square", 0.002, 400, seed)
    resampled = _gain("square", 0.002, 400, seed, resample=3)
    assert resampled < plain - 0.004, (plain, resampled)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_signhunt_resample_reaches_a_lower_true_margin_on_a_noisy_model(norm: str) -> None:
    # Margin noise sd 0.028; measured over 12 seeds (l_inf and l_2): resample=3 gains 0.010 - 0.019 more.
    plain = _gain("signhunt", 0.02, 200, 0, norm=norm)
    resampled = _gain("signhunt", 0.02, 200, 0, norm=norm, resample=3)
    assert resampled < plain - 0.005, (plain, resampled)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_nes_momentum_reaches_a_lower_true_margin_on_a_noisy_model(norm: str) -> None:
    # 20 iterations of 10 probes; measured over 8 seeds: momentum 0.9 gains 0.006 - 0.021 more (both norms).
    plain = _gain("nes", 0.001, 11 * 20, 0, norm=norm, samples=10)
    mom = _gain("nes", 0.001, 11 * 20, 0, norm=norm, samples=10, momentum=0.9)
    assert mom < plain - 0.003, (plain, mom)


def test_nes_plateau_decay_shrinks_the_steps_on_a_flat_loss() -> None:
    # A flat, noisy loss (slope 0): the estimates are pure noise, the loss window rises about every other time,
    # and with decay the lr falls to its floor, so the random walk stays near x0; with a constant lr it fills the
    # l_inf ball (30 steps of eps/10). Measured: mean l_inf distance 0.21 eps with decay, 0.99 eps without.
    x = _far_images(16, 8, seed=4, mean=0.5)
    y = torch.zeros(16, dtype=torch.long)
    kw: dict[str, Any] = {"norm": "linf", "eps": 0.05, "budget": 11 * 30, "samples": 10, "seed": 0}
    plain, _, _ = _run("nes", NoisyLinear(0.05, seed=0, slope=0.0), x, y, **kw)
    decayed, _, _ = _run("nes", NoisyLinear(0.05, seed=0, slope=0.0), x, y, plateau_length=2, plateau_drop=10.0, **kw)
    assert float(plain.linf.mean()) > 0.9 * 0.05
    assert float(decayed.linf.mean()) < 0.5 * 0.05
    assert decayed.queries.tolist() == plain.queries.tolist() == [11 * 30] * 16  # the decay costs no query


def test_plateau_update_follows_ilyas_et_al() -> None:
    # their loop per image: last_ls.append(l); last_ls = last_ls[-L:]; if full and last > first: lr = max(lr / drop,
    # min_lr) when lr > min_lr; last_ls = []
    def reference(losses: list[float], lr: float, length: int, drop: float, floor: float) -> list[float]:
        window: list[float] = []
        out = []
        for v in losses:
            window = (window + [v])[-length:]
            if len(window) == length and window[-1] > window[0]:
                if lr > floor:
                    lr = max(lr / drop, floor)
                window = []
            out.append(lr)
        return out

    g = torch.Generator().manual_seed(0)
    steps, b, length = 40, 5, 3
    losses = torch.rand(steps, b, generator=g)
    losses[:, 0] = -torch.arange(steps, dtype=torch.float32)  # always falling: never decays
    losses[:, 1] = torch.arange(steps, dtype=torch.float32)  # always rising: decays every `length` steps
    lr = torch.full((b,), 0.01)
    hist = torch.zeros(b, length)
    count = torch.zeros(b, dtype=torch.int64)
    got = []
    for t in range(steps):
        lr, hist, count = plateau_update(lr, hist, count, losses[t], drop=2.0, min_lr=0.01 / 200)
        got.append(lr.clone())
    got_t = torch.stack(got)
    for i in range(b):
        want = torch.tensor(reference(losses[:, i].tolist(), 0.01, length, 2.0, 0.01 / 200))
        assert torch.allclose(got_t[:, i], want), i
    assert bool((got_t[:, 0] == 0.01).all())
    assert float(got_t[length - 2, 1]) == pytest.approx(0.01) and float(got_t[length - 1, 1]) == pytest.approx(0.005)
    assert float(got_t[-1, 1]) == pytest.approx(0.01 / 200)  # halved at the first full window, at the floor later
    # the inputs are left alone
    lr0, h0, c0 = torch.full((2,), 0.01), torch.zeros(2, 2), torch.full((2,), 1)
    plateau_update(lr0, h0, c0, torch.tensor([1.0, -1.0]), drop=2.0, min_lr=1e-4)
    assert bool((lr0 == 0.01).all()) and bool((h0 == 0).all()) and bool((c0 == 1).all())
