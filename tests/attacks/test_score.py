"""Score-based attacks: invariants of every attack of the ``ATTACKS`` table (Square, NES, SignHunt, Bandits, SimBA
in both bases, ZO-signSGD, P-RGF) on tiny models: eps-ball and [0, 1], exact query accounting and budget, verified
success only, EOT, determinism; then Square/NES/SignHunt's known answers on a linear model and building blocks,
and (slow) the paper's effect on fmnist-vgg. The other attacks' own tests are in test_bandits_zosignsgd.py,
test_simba.py and test_transfer_prgf.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from rfd.attacks import AttackResult, make_attack
from rfd.attacks.base import Attack
from rfd.attacks.nes import NES, NESConfig, nes_gradient
from rfd.attacks.prgf import PRGF
from rfd.attacks.rng import RowDraws, SampleStreams
from rfd.attacks.signhunt import SignHunt, chunk_bounds
from rfd.attacks.square import (
    Square,
    SquareConfig,
    l2_init,
    l2_proposal,
    l2_window_size,
    linf_init,
    linf_proposal,
    linf_window_size,
    meta_pattern,
    p_schedule,
)
from rfd.blackbox import LocalBlackBox, ThreatModel
from tests.helpers.attack_cases import SpyBlackBox, near_boundary, run_attack, tiny_score_case, uncharged
from tests.helpers.models import Counting, TinyCNN

# table id -> (registry name, settings that fit several iterations into the small budgets of the tests below)
ATTACKS: dict[str, tuple[str, dict[str, Any]]] = {
    "square": ("square", {}),
    "nes": ("nes", {"samples": 10}),
    "signhunt": ("signhunt", {}),
    "bandits": ("bandits", {}),
    "simba-pixel": ("simba", {"basis": "pixel"}),
    "simba-dct": ("simba", {"basis": "dct", "freq_dims": 2, "stride": 2}),
    "zosignsgd": ("zosignsgd", {"q": 10}),
    "prgf": ("prgf", {"samples": 10, "norm_samples": 4}),
}
NORMS = ["linf", "l2"]
EPS = {"linf": 0.05, "l2": 0.5}


def _attack(case: str, model: nn.Module, **cfg: Any) -> Attack:
    """The table's attack ``case`` with its small settings (``cfg`` overrides them). P-RGF's surrogate is the
    target model itself (unwrapped: its forwards are the attacker's own, not queries)."""
    name, small = ATTACKS[case]
    settings = {**small, **cfg}
    if name == "prgf":
        return PRGF.with_surrogate(model, **settings)
    return make_attack(name, **settings)


def _run(case: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, verify: int = 3,
         **cfg: Any) -> tuple[AttackResult, LocalBlackBox, Counting]:
    return run_attack(_attack(case, model, **cfg), model, x, y, verify=verify)


# -- invariants -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cnn-gray", "cnn-rgb"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("case", ATTACKS)
def test_invariants(case: str, norm: str, kind: str, linear_model: nn.Module) -> None:
    model, x, y = tiny_score_case(kind, linear_model)
    res, bb, counting = _run(case, model, x, y, norm=norm, eps=EPS[norm], budget=150, seed=3)
    threat = ThreatModel(norm=norm, eps=EPS[norm])
    # every final image (adversarial or last iterate) lies in the eps-ball and [0, 1]; so did every query
    assert bool(threat.contains(res.x_adv, x).all())
    assert 0.0 <= counting.lo and counting.hi <= 1.0
    # query accounting is exact: every forward is a charged query or an (uncharged) verification forward
    assert counting.rows == int(bb.queries.sum()) + uncharged(res) == int(res.queries.sum()) + uncharged(res)
    assert int(res.queries.max()) <= 150
    # a misclassified clean image is not attacked: no query, no success, x_adv = x
    assert res.clean_correct.tolist() == [True] * 5 + [False]
    assert int(res.queries[-1]) == 0 and not bool(res.success[-1]) and torch.equal(res.x_adv[-1], x[-1])
    # a success is a verified adversarial example at the reported distance
    assert bool((res.success <= res.clean_correct).all())
    if bool(res.success.any()):
        with torch.no_grad():
            pred = model(res.x_adv[res.success]).argmax(1)
        assert bool((pred != y[res.success]).all())
    d = threat.distance(res.x_adv, x)
    assert torch.allclose(d, res.linf if norm == "linf" else res.l2)


def _spent(case: str, budget: int, eot: int) -> tuple[int, int]:
    """(fewest, most) queries an image that cannot succeed spends of ``budget``: every whole iteration it can pay,
    each evaluation costing ``eot`` queries (with the table's settings)."""
    per_eval = {"square": 1, "signhunt": 1, "simba-pixel": 1, "simba-dct": 1,
                "bandits": 2 + 1,  # 2 probes + the new iterate
                "nes": 10 + 1}  # 10 samples + the new iterate
    if case in per_eval:
        spent = budget // (eot * per_eval[case]) * eot * per_eval[case]
    elif case == "zosignsgd":  # the clean image once, then 10 probes + the new iterate per iteration
        spent = eot + (budget - eot) // (eot * 11) * eot * 11
    else:  # P-RGF: an image stops when its remaining budget cannot pay an iteration's worst case (probes
        # skipped when the prior is trusted, gradient-norm probes only every few iterations): the leftover is kept
        assert case == "prgf"
        return budget - eot * (10 + 2 + 4) + 1, budget
    return spent, spent


@pytest.mark.parametrize("case", ATTACKS)
def test_budget_is_spent_exactly_and_never_exceeded(case: str, linear_model: nn.Module) -> None:
    # images far from the decision boundary: the attack cannot succeed and spends all it can. An odd budget: the
    # last query cannot buy a whole evaluation (eot 2) and stays unspent
    x = torch.full((3, 1, 4, 4), 0.2)
    y = torch.zeros(3, dtype=torch.long)
    res, _, counting = _run(case, linear_model, x, y, norm="linf", eps=0.05, budget=131, eot=2)
    assert not bool(res.success.any())
    lo, hi = _spent(case, 131, 2)
    assert all(lo <= q <= hi for q in res.queries.tolist()), (res.queries.tolist(), lo, hi)
    assert bool((res.queries % 2 == 0).all())
    assert counting.rows == int(res.queries.sum()) + uncharged(res)


def test_black_box_budget_must_cover_the_attack(linear_model: nn.Module) -> None:
    bb = LocalBlackBox(linear_model, budget=10)
    with pytest.raises(ValueError, match="below the attack budget"):
        make_attack("square", budget=100).run(bb, torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, dtype=torch.long))


# -- verified success only (SpyBlackBox: tests/helpers/attack_cases.py) -----------------------------------------
@pytest.mark.parametrize("case", ATTACKS)
def test_success_only_when_verified(case: str) -> None:
    # A noisy 2-class model: single queries often look adversarial while the majority of 9 forwards disagrees.
    model = TinyCNN(1, 4, 2, seed=5, noise=0.6)
    x = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(24, dtype=torch.long)
    bb = SpyBlackBox(model, budget=200, verify=9)
    bb.set_originals(x)
    res = _attack(case, model, norm="linf", eps=0.05, budget=200, seed=0).run(bb, x, y)
    rejected = [c for c in bb.spied if not c[2]]
    passed = [c for c in bb.spied if c[2]]
    # the per-sample accounting agrees with the spy: one check per claim, each claim's query count recorded
    assert res.checks is not None and int(res.checks.sum()) == len(bb.spied)
    assert sorted((i, q) for i, q, _ in bb.spied) == sorted((i, q) for i, c in enumerate(res.claims) for q in c)
    assert rejected, "the noisy model should make some single queries look adversarial falsely"
    # success exactly for the samples with a passing check, at the query count of that (first and only) check
    assert sorted(i for i, _, _ in passed) == torch.nonzero(res.success).flatten().tolist()
    for i, q, _ in passed:
        assert int(res.queries[i]) == q
    # a sample keeps being attacked after a rejected claim: its later queries are charged
    assert any(int(res.queries[i]) > q for i, q, _ in rejected)


# -- EOT, determinism -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ATTACKS)
def test_eot_pays_m_queries_per_evaluation(case: str, linear_model: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    x = (0.5 - 0.04 + 0.1 * (torch.rand(5, 1, 4, 4, generator=g) - 0.5)).clamp(0, 1)
    y = torch.zeros(5, dtype=torch.long)
    r1, _, c1 = _run(case, linear_model, x, y, norm="linf", eps=0.05, budget=600, seed=4)
    r3, _, c3 = _run(case, linear_model, x, y, norm="linf", eps=0.05, budget=1800, seed=4, eot=3)
    # a deterministic model: the same search, each evaluation averaged over 3 forwards and charged 3 queries
    assert torch.equal(r3.success, r1.success) and bool(r1.success.any())
    assert torch.equal(r3.queries, 3 * r1.queries)
    assert torch.allclose(r3.x_adv, r1.x_adv)
    assert c3.rows - uncharged(r3) == 3 * (c1.rows - uncharged(r1))


# attacks of the table whose path the seed does not change here, and why (checked elsewhere where it can)
SEED_FREE = {
    "signhunt": "SignHunt's search order is fixed: it makes no random draws",
    "prgf": "with the target as its own surrogate the prior is the true gradient, lambda* = 1 and every step "
            "follows it: no draw moves the image (test_transfer_prgf.py checks the seed with another surrogate)",
}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("case", ATTACKS)
def test_same_seed_same_result(case: str, norm: str) -> None:
    model = TinyCNN(1, 8, 4, seed=1)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    a, _, _ = _run(case, model, x, y, norm=norm, eps=EPS[norm], budget=80, seed=11)
    b, _, _ = _run(case, model, x, y, norm=norm, eps=EPS[norm], budget=80, seed=11)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries) and torch.equal(a.success, b.success)
    if case not in SEED_FREE:  # the others draw from the seed
        c, _, _ = _run(case, model, x, y, norm=norm, eps=EPS[norm], budget=80, seed=12)
        assert not torch.equal(a.x_adv, c.x_adv)


# -- known answers on the linear model ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,max_queries", [("square", 250), ("nes", 61 * 20), ("signhunt", 1)])
def test_linf_attacks_find_the_adversarial_corner(name: str, max_queries: int, linear_model: nn.Module) -> None:
    # Only the corner x0 + eps (every pixel up) is adversarial: it needs the mean up by more than 0.95 eps.
    eps = 0.05
    x = near_boundary(0.95 * eps)
    y = torch.zeros(6, dtype=torch.long)
    res, _, _ = run_attack(name, linear_model, x, y, norm="linf", eps=eps, budget=2000, seed=0)
    assert bool(res.success.all())
    assert int(res.queries.max()) <= max_queries
    # the adversarial images sit (almost) in the corner: mean shift > 0.95 eps with every pixel at most eps
    shift = (res.x_adv - x).flatten(1)
    assert bool((shift.mean(1) > 0.95 * eps).all()) and float(shift.abs().max()) <= eps + 1e-6
    if name != "nes":  # random search and sign flips land exactly on it
        assert torch.allclose(res.x_adv, x + eps, atol=1e-6)


@pytest.mark.parametrize("name,gap_frac,max_queries", [("nes", 0.7, 31 * 3), ("signhunt", 0.99, 1), ("square", 0.3, 150)])
def test_l2_attacks_find_the_linear_direction(name: str, gap_frac: float, max_queries: int,
                                              linear_model: nn.Module) -> None:
    # The best l_2 move is along w (uniform): eps/4 per pixel raises the mean by eps/4. Success needs a step whose
    # cosine with w is above gap_frac.
    eps = 0.5
    x = near_boundary(gap_frac * eps / 4)
    y = torch.zeros(6, dtype=torch.long)
    res, _, _ = run_attack(name, linear_model, x, y, norm="l2", eps=eps, budget=1000, seed=0)
    assert bool(res.success.all())
    assert int(res.queries.max()) <= max_queries


# -- the Square building blocks ---------------------------------------------------------------------------------
def _draws(n: int, seed: int) -> RowDraws:
    """Per-image draws for a batch of n images (as an attack's ``state.rng.rows(idx)`` with every image active)."""
    return SampleStreams(n, seed).rows(torch.arange(n))


def test_p_schedule_matches_the_reference() -> None:
    assert p_schedule(0.05, 0, 10000) == 0.05
    assert p_schedule(0.05, 10, 10000) == 0.05
    assert p_schedule(0.05, 11, 10000) == 0.025
    assert p_schedule(0.05, 200, 10000) == 0.05 / 4
    assert p_schedule(0.05, 201, 10000) == 0.05 / 8
    assert p_schedule(0.05, 9999, 10000) == 0.05 / 512
    # rescaled to shorter runs: iteration 2 of 1000 is iteration 20 of 10000
    assert p_schedule(0.1, 1, 1000) == 0.1 and p_schedule(0.1, 2, 1000) == 0.05
    assert p_schedule(0.1, 999, 1000) == 0.1 / 512


def test_window_sizes() -> None:
    assert linf_window_size(0.05, 1, 28, 28) == 6  # round(sqrt(0.05 * 784))
    assert linf_window_size(0.05, 3, 32, 32) == 7
    assert linf_window_size(1.0, 1, 28, 28) == 27  # at most H - 1
    assert linf_window_size(1e-6, 1, 28, 28) == 1
    assert l2_window_size(0.1, 1, 28, 28) == 9
    assert l2_window_size(1e-6, 1, 28, 28) == 3  # at least 3
    assert l2_window_size(0.0125, 1, 28, 28) % 2 == 1


def test_meta_pattern_shape() -> None:
    for s in (3, 5, 9):
        p = meta_pattern(s)
        assert p.shape == (s, s) and abs(float(p.norm()) - 1) < 1e-6
        assert bool((p[: s // 2] > 0).all()) and bool((p[s // 2:] < 0).all())


@pytest.mark.parametrize("norm", NORMS)
def test_square_proposals_change_every_image_at_per_image_windows(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 1, 10, 10, generator=g)
    eps = 0.05 if norm == "linf" else 1.0
    # for l_inf start every image in the +eps corner: half of all sign draws would reproduce it
    rows = _draws(64, 0)
    x_best = (x0 + eps).clamp(0, 1) if norm == "linf" else l2_init(x0, eps, rows)
    for _ in range(5):
        if norm == "linf":
            x_new = linf_proposal(x0, x_best, eps, 3, rows)
        else:
            x_new = l2_proposal(x0, x_best, eps, 3, rows)
        assert bool(((x_new - x_best).abs().flatten(1).amax(1) > 0).all())  # no image left unchanged
        assert bool(ThreatModel(norm=norm, eps=eps).contains(x_new, x0).all())
        changed = (x_new != x_best).flatten(1)
        assert len({tuple(r.tolist()) for r in changed}) > 10  # windows differ between images
        x_best = x_new


def test_linf_proposal_sets_one_window_per_image_to_a_signed_corner_per_channel() -> None:
    g = torch.Generator().manual_seed(3)
    b, c, h, w, s, eps = 32, 3, 9, 7, 4, 0.1
    x0 = 0.2 + 0.6 * torch.rand(b, c, h, w, generator=g)  # away from 0 and 1: no clipping, every window pixel moves
    x_best = x0 + (torch.rand(x0.shape, generator=g) * 1.8 - 0.9) * eps  # strictly inside the ball
    x_new = linf_proposal(x0, x_best, eps, s, _draws(b, 3))
    up, down = (x0 + eps).clamp(0, 1), (x0 - eps).clamp(0, 1)
    for i in range(b):
        rows, cols = torch.nonzero((x_new[i] != x_best[i]).any(0), as_tuple=True)
        r0, c0 = int(rows.min()), int(cols.min())
        assert int(rows.max()) - r0 < s and int(cols.max()) - c0 < s  # inside one s x s window
        r0, c0 = min(r0, h - s), min(c0, w - s)
        win = (slice(None), slice(r0, r0 + s), slice(c0, c0 + s))
        for ch in range(c):  # every channel's window is all +eps or all -eps (clipped)
            got = x_new[i][win][ch]
            assert torch.equal(got, up[i][win][ch]) or torch.equal(got, down[i][win][ch])


def test_square_inits_lie_in_the_ball() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 3, 28, 28, generator=g)
    xi = linf_init(x0, 0.05, _draws(5, 0))
    inner = (x0 > 0.05) & (x0 < 0.95)  # pixels where clipping cannot act
    assert torch.allclose((xi - x0).abs()[inner], torch.tensor(0.05))
    x2 = l2_init(x0, 2.0, _draws(5, 1))
    assert bool(ThreatModel(norm="l2", eps=2.0).contains(x2, x0).all())
    assert float((x2 - x0).flatten(1).norm(dim=1).min()) > 1.5  # at (or, after clipping, near) the sphere


def test_linf_init_is_vertical_stripes() -> None:
    x0 = torch.full((4, 2, 6, 6), 0.5)
    d = linf_init(x0, 0.05, _draws(4, 0)) - x0
    assert torch.allclose(d.abs(), torch.full_like(d, 0.05))
    assert torch.equal(d, d[:, :, :1].expand_as(d))  # constant along each column


# -- NES and SignHunt building blocks -----------------------------------------------------------------------------
def test_nes_gradient_estimates_a_linear_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 1, 4, 4, generator=g)
    x = torch.rand(2, 1, 4, 4, generator=g)
    u = torch.randn(400, 2, 1, 4, 4, generator=g)
    sigma = 0.01
    f = lambda z: (z * w).flatten(2).sum(2)
    est = nes_gradient(u, f(x + sigma * u), f(x - sigma * u), sigma)
    cos = nn.functional.cosine_similarity(est.flatten(1), w.flatten(1))
    assert bool((cos > 0.95).all())


def test_chunk_bounds() -> None:
    assert chunk_bounds(10, 0, 0) == (0, 10)
    assert chunk_bounds(10, 1, 1) == (5, 10)
    assert chunk_bounds(10, 2, 3) == (9, 10)  # chunks of ceil(10/4) = 3
    assert chunk_bounds(10, 4, 9) == (9, 10)


# -- configs and registry ------------------------------------------------------------------------------------------
def test_paper_defaults_and_config_validation() -> None:
    sq = make_attack("square", norm="l2", eps=1.0)
    assert isinstance(sq, Square) and isinstance(sq.config, SquareConfig) and sq.config.initial_p == 0.1
    assert SquareConfig(norm="linf").initial_p == 0.05
    nes = make_attack("nes", norm="linf")
    assert isinstance(nes, NES) and isinstance(nes.config, NESConfig)
    assert (nes.config.n_samples, nes.config.sigma, nes.config.step) == (60, 0.01, 0.005)
    assert (NESConfig(norm="l2").n_samples, NESConfig(norm="l2").sigma, NESConfig(norm="l2").step) == (30, 0.005, 1.0)
    sh = make_attack("signhunt", eps=0.03)
    assert isinstance(sh, SignHunt) and sh.config.probe_length == 0.03  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="p_init"):
        SquareConfig(p_init=0.0)
    with pytest.raises(ValueError, match="even"):
        NESConfig(samples=7)
    with pytest.raises(ValueError, match="probe"):
        make_attack("signhunt", probe=-1.0)
    with pytest.raises(ValueError, match="eot"):
        make_attack("square", eot=0)
    with pytest.raises(ValueError, match="Square: unknown setting 'samples'.*valid settings .*p_init"):
        make_attack("square", samples=10)  # a NES setting is not a Square setting


# -- the paper's effect on the reference model (slow) -----------------------------------------------------------------
@pytest.mark.slow
def test_square_breaks_undefended_fmnist_vgg_far_more_often_than_feature_defended(  # type: ignore[no-untyped-def]
        bundled_eval, bundled_calib, reference_model) -> None:
    # About 2-3 minutes on one CPU core: calibration (500 calib images, 4 noise draws per sigma), then Square l_inf
    # eps 0.05 with 500 queries on 50 eval images, undefended and defended.
    from rfd.data.selection import balanced_indices
    from rfd.defenses import DefenseSpec, calibrate, defend

    model = reference_model("fmnist-vgg")
    sel = balanced_indices(bundled_eval.labels, 50, seed=0)
    x, y = bundled_eval.images[sel], bundled_eval.labels[sel]
    cal_sel = balanced_indices(bundled_calib.labels, 500, seed=0)
    spec = DefenseSpec(family="feature", layers=("penultimate",), drop=0.02)
    cal = calibrate(model, spec, bundled_calib.images[cal_sel], bundled_calib.labels[cal_sel], draws=4,
                    tol=0.005)
    budget = 500
    base, _, _ = run_attack("square", model, x, y, norm="linf", eps=0.05, budget=budget, verify=9)
    with defend(model, cal.spec) as defended:
        dres, _, _ = run_attack("square", defended, x, y, norm="linf", eps=0.05, budget=budget, verify=9)
    assert base.success_rate > 0.5, f"undefended success rate {base.success_rate:.2f}"
    # measured here: undefended 59% of the correct images broken, defended 28%; robust accuracy 0.38 vs 0.68
    assert dres.success_rate < 0.6 * base.success_rate, (
        f"success rate undefended {base.success_rate:.2f} vs feature-defended (sigma {cal.sigma:.3g}) "
        f"{dres.success_rate:.2f}"
    )
    assert dres.robust_accuracy() > base.robust_accuracy() + 0.2


# -- the `rfd attack` command -------------------------------------------------------------------------------------
def test_cli_attack_reports_robust_accuracy_and_saves_images(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from safetensors.torch import load_file

    from rfd.cli.main import main
    from rfd.models import create_model
    from rfd.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("fmnist-vgg", pretrained=False), tmp_path / "random.safetensors")
    out = tmp_path / "adv.safetensors"
    base = ["attack", "--model", "fmnist-vgg", "--checkpoint", str(ckpt), "--budget", "12", "--n", "10", "--seed", "1",
            "--verify", "1", "--quiet"]
    argv = base + ["--attack", "square", "--checkpoints", "3,6", "--attack-arg", "p_init=0.2", "--output-images",
                   str(out), "--json"]
    assert main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("clean_accuracy", "robust_accuracy", "success_rate", "queries_mean", "queries_median", "n", "sigma",
                "elapsed_s"):
        assert key in rep
    assert rep["n"] == 10 and rep["eps"] == 0.05 and rep["sigma"] is None  # the fashion-mnist l_inf preset
    assert rep["attack_config"]["p_init"] == 0.2
    curve = [rep["robust_accuracy"][k] for k in ("3", "6", "12")]
    assert curve == sorted(curve, reverse=True) and curve[0] <= rep["clean_accuracy"]
    saved = load_file(str(out))
    assert saved["adversarial"].shape == saved["clean"].shape == (10, 1, 28, 28)
    assert bool(ThreatModel(norm="linf", eps=0.05).contains(saved["adversarial"], saved["clean"]).all())
    # the class-balanced selection: 10 images, one per class
    assert sorted(saved["labels"].tolist()) == list(range(10))
    # bad flags fail with a clear message and status 2
    assert main(base + ["--attack", "square", "--checkpoints", "50"]) == 2
    assert "--checkpoints" in capsys.readouterr().err
    assert main(base + ["--attack", "nes", "--norm", "l2", "--attack-arg", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
