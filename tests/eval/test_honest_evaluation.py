"""The honest reading of robust accuracy under randomized defenses: re-evaluation against a closed-form
misclassification probability, the strict and expected readings, strict and charged checks, paired attack draws
across defenses, Wilson coverage, McNemar, paired comparisons and sanity flags."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn

from rfd.attacks import make_attack
from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.blackbox import LocalBlackBox
from rfd.cli.main import main
from rfd.eval.compare import compare_runs
from rfd.eval.results import load_results
from rfd.eval.runner import run_study
from rfd.eval.sanity import sanity_flags
from rfd.eval.schema import parse_study
from rfd.eval.store import ChunkInfo, ResultStore, SampleRow
from rfd.stats import bootstrap_mean, mcnemar_exact, paired_difference, wilson
from tests.helpers.tiny_eval import tiny_study


class NoisyLogits(nn.Module):
    """Two classes, logits ``(a(x), 0) + N(0, s^2 I)`` with ``a(x) = 4 * mean(x) - 1``: for label 0 one forward
    misclassifies x with probability ``P(n1 - n0 > a) = Phi(-a / (s sqrt 2))``, known in closed form."""

    num_classes = 2

    def __init__(self, s: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.s = s
        self.gen = torch.Generator().manual_seed(seed)
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return 4 * x.flatten(1).mean(1) - 1

    def p_wrong(self, x: torch.Tensor) -> torch.Tensor:
        a = self.margin(x).double()
        return torch.tensor([NormalDist().cdf(-float(v) / (self.s * math.sqrt(2))) for v in a], dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([self.margin(x), torch.zeros(x.shape[0])], 1)
        return z + self.s * torch.randn(z.shape, generator=self.gen)


def _points(levels: list[float]) -> torch.Tensor:
    return torch.tensor(levels).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()


def test_reevaluated_p_matches_the_closed_form_within_binomial_error() -> None:
    model = NoisyLogits(s=1.0)
    x = _points([0.05, 0.2, 0.25, 0.3, 0.45])  # margins -0.8 .. 0.8: p from 0.71 to 0.29
    r = 4000
    bb = LocalBlackBox(model, reevaluate=r)
    bb.start(x.shape[0])
    p = bb.reevaluate_wrong(x, torch.zeros(5, dtype=torch.int64))
    truth = model.p_wrong(x)
    se = torch.sqrt(truth * (1 - truth) / r)
    assert bool(((p - truth).abs() <= 4 * se).all()), (p, truth)
    assert bb.reevaluation_forwards == 5 * r and bb.queries.tolist() == [0] * 5


@dataclass(frozen=True, kw_only=True)
class FixedClaimConfig(AttackConfig):
    level: float = 0.2  # every sample's single candidate: an image of constant value `level`


class FixedClaim(Attack):
    """Queries one fixed candidate per sample (1 query) and claims it: a lucky check decides, nothing else."""

    name = "fixed-claim"
    config_class = FixedClaimConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        idx = state.active_idx(1)
        cfg = self.config
        assert isinstance(cfg, FixedClaimConfig)
        x = torch.full_like(state.x0[idx], cfg.level)
        state.margin(x, idx)
        state.report(x, idx)
        state.keep(x, idx)


def test_strict_and_expected_readings_follow_the_reevaluated_probability() -> None:
    # clean images (value 0.45, p_wrong 0.29) are mostly right; the candidate (0.2, margin -0.2) is misclassified
    # with p = Phi(0.2 / sqrt 2) = 0.556 > 1/2, the candidate 0.3 (margin 0.2) with p = 0.444 < 1/2.
    n = 300
    x = _points([0.45] * n)
    y = torch.zeros(n, dtype=torch.int64)
    for level, strict_broken in ((0.2, True), (0.3, False)):
        model = NoisyLogits(s=1.0, seed=1)
        truth = float(model.p_wrong(_points([level]))[0])
        bb = LocalBlackBox(model, verify=1, reevaluate=400)  # a single-vote check: many lucky passes
        res = FixedClaim(eps=0.5, budget=5, level=level).run(bb, x, y)
        s = res.success
        assert 0 < int(s.sum()) < n  # a single vote passes some claims and not others
        p = res.p_wrong[s]
        assert abs(float(p.mean()) - truth) < 4 * math.sqrt(truth * (1 - truth) / (400 * int(s.sum())))
        paper = res.robust_values(reading="paper")
        strict = res.robust_values(reading="strict")
        expected = res.robust_values(reading="expected")
        cc = res.clean_correct.numpy()
        assert (paper == (cc & ~s.numpy())).all()
        # strict: a break counts only where the final image is misclassified in more than half of R forwards
        assert (strict[s.numpy()] == (res.p_wrong[s] <= 0.5).double().numpy()).all()
        if strict_broken:
            assert res.robust_accuracy(reading="strict") < res.clean_accuracy - 0.1
        else:  # nearly every pass was lucky
            assert res.robust_accuracy(reading="strict") > res.robust_accuracy(reading="paper") + 0.1
        assert np.allclose(expected[s.numpy()], 1 - res.p_wrong[s].numpy())
        assert (expected[cc & ~s.numpy()] == 1).all() and (expected[~cc] == 0).all()
        assert res.expected_clean_accuracy == pytest.approx(1 - float(model.p_wrong(_points([0.45]))[0]), abs=0.02)


def test_a_strict_check_stops_only_on_real_breaks_and_charged_checks_are_paid_exactly() -> None:
    model = NoisyLogits(s=1.0, seed=2)
    x = _points([0.45] * 40)
    y = torch.zeros(40, dtype=torch.int64)
    # candidate 0.3 is misclassified in 44% of forwards: a 9-vote check passes it often, 100 votes rarely
    nine = FixedClaim(eps=0.5, budget=5, level=0.3).run(LocalBlackBox(model, verify=9), x, y)
    strict = FixedClaim(eps=0.5, budget=5, level=0.3).run(LocalBlackBox(model, verify=101), x, y)
    assert int(nine.success.sum()) > int(strict.success.sum()) + 5
    # charged: every vote of every check is one query of the sample; never past the budget
    counting = _Counting(NoisyLogits(s=1.0, seed=3))
    bb = LocalBlackBox(counting, verify=9, check="charged", budget=60)
    res = make_attack("square", norm="linf", eps=0.2, budget=60, seed=0).run(bb, x, y)
    assert int(res.queries.max()) <= 60 and int(bb.queries.max()) <= 60
    assert res.check_forwards is not None and int(res.check_forwards.sum()) > 0
    assert (res.check_forwards <= bb.queries).all()
    # forwards = charged queries (attack + check votes) + the uncounted clean check + the re-evaluation
    assert counting.rows == int(bb.queries.sum()) + bb.verification_forwards + bb.reevaluation_forwards
    assert bb.verification_forwards <= 9 * 40  # only the clean check is free
    # success is recorded at the query count after the (paid) check
    for i in torch.nonzero(res.success).flatten().tolist():
        assert res.claims[i] and res.queries[i] > res.claims[i][-1]


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0
        self.num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


# -- statistics ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p,n", [(0.3, 50), (0.05, 100), (0.9, 200)])
def test_wilson_interval_covers_a_simulated_binomial_at_its_nominal_rate(p: float, n: int) -> None:
    rng = np.random.default_rng(0)
    k = rng.binomial(n, p, size=4000)
    cover = np.mean([wilson(int(v), n).low <= p <= wilson(int(v), n).high for v in k])
    assert 0.93 <= cover <= 0.975, cover  # nominal 0.95; 4000 draws give a standard error of 0.0034


def test_wilson_known_values_and_bootstrap_of_a_constant() -> None:
    e = wilson(0, 10)
    assert e.low == 0.0 and e.high == pytest.approx(0.2775, abs=1e-4)  # the textbook value for 0/10
    e = wilson(5, 10)
    assert (e.low, e.high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    b = bootstrap_mean(np.full(20, 0.25))
    assert (b.value, b.low, b.high) == (0.25, 0.25, 0.25)
    assert bootstrap_mean(np.linspace(0, 1, 50), seed=1) == bootstrap_mean(np.linspace(0, 1, 50), seed=1)


def test_mcnemar_exact_matches_hand_computed_values() -> None:
    # b=1, c=6: n=7, P(X<=1) = (1 + 7) / 128, two-sided 16/128
    assert mcnemar_exact(1, 6) == pytest.approx(16 / 128)
    assert mcnemar_exact(6, 1) == pytest.approx(16 / 128)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 0], dtype=float)
    b = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 0], dtype=float)
    d = paired_difference(a, b)
    assert (d.a_only, d.b_only) == (6, 1) and d.p_value == pytest.approx(16 / 128)
    assert d.difference == pytest.approx(0.5) and d.low <= 0.5 <= d.high
    with pytest.raises(ValueError, match="same images"):
        paired_difference(a, b[:5])


# -- studies: paired draws, comparisons, sanity flags ----------------------------------------------------------
# DrawOnce (tests/helpers/attacks.py): one random point in the ball per image, from the sample's own stream


def test_every_defense_and_check_of_a_study_meets_the_same_attack_draws(tiny_eval: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    _, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt, n=20, budget=5, checkpoints=[5], attacks=[
        {"name": "tests.helpers.attacks:DrawOnce", "eps": 0.1, "verify": [3, 25]},
        {"name": "tests.helpers.attacks:DrawOnce", "eps": 0.05}]))
    db = tmp_path / "paired.sqlite"
    run_study(st, db, progress=False)
    res = load_results(db)
    assert set(res.runs.seeding) == {"paired"}
    s = res.samples.merge(res.runs[["run_id", "family", "eps", "verify"]], on="run_id")
    s = s[s.clean_correct]
    for eps, g in s.groupby("eps"):
        per = g.pivot_table(index="sample", columns=["family", "verify"], values="l2")
        per = per.dropna()
        assert len(per) > 10 and per.shape[1] >= 3
        # the same draw per image for none / feature / input noise and for 3- and 25-vote checks
        assert np.allclose(per.to_numpy(), per.to_numpy()[:, :1]), per.head()
    a = s[s.eps == 0.1].groupby("sample").l2.first()
    b = s[s.eps == 0.05].groupby("sample").l2.first()
    common = a.index.intersection(b.index)
    assert not np.allclose(a[common].to_numpy(), 2 * b[common].to_numpy())  # another attack: other draws
    with ResultStore(db) as store:
        seeds = {r["run_id"]: {c.seed for c in store.chunk_info(r["run_id"])} for r in store.runs()}
    by_attack: dict[float, set[frozenset[int]]] = {}
    for _, r in res.runs.iterrows():
        by_attack.setdefault(r.eps, set()).add(frozenset(seeds[r.run_id]))
    assert all(len(v) == 1 for v in by_attack.values()) and len(by_attack) == 2


def _hand_store(db: Path) -> None:
    rng = np.random.default_rng(0)
    with ResultStore(db) as s:
        s.put_study("hand", {"checkpoints": [100, 1000]})
        for k, (family, drop) in enumerate((("input", 0.02), ("feature", 0.02))):
            ident = {"model": {"name": "vgg"}, "defense": {"family": family, "layers": [], "drop": drop,
                                                           "sigma": None, "scaled": False, "params": {}},
                     "attack": {"name": "square", "norm": "linf", "eps": 0.05, "budget": 1000, "eot": 1, "verify": 9,
                                "check": "free", "reevaluate": 100, "params": {}},
                     "n": 40, "seed": 0, "chunk_size": 50, "data": {}, "seeding": "paired"}
            rid = s.ensure_run(f"r{k}", {"identity": ident, "sigma": 0.1,
                                         "calibration": {"converged": k == 0}}, {"model": "vgg"})
            rows = []
            for i in range(40):
                broken = (i < 30) if family == "input" else (i < 20)
                q = int(rng.integers(1, 4))  # every success within 3 queries: early
                pw = (0.9 if i < 10 else 0.3) if broken else None  # feature: half of the breaks are lucky
                rows.append(SampleRow(i, 100 + i, 0, True, broken, q if broken else 1000, 0.05, 1.0, 1, 9, f"[{q}]",
                                      pw, 0.0))
            s.write_chunk(rid, ChunkInfo(0, 1, 40, 0, 0, 0.0, 0), rows)


def test_paired_comparison_and_sanity_flags_on_a_hand_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    db = tmp_path / "hand.sqlite"
    _hand_store(db)
    res = load_results(db)
    c = compare_runs(res, 2, 1, reading="paper")  # feature minus input: 10 images more robust under feature
    assert c.difference.difference == pytest.approx(10 / 40)
    assert (c.difference.a_only, c.difference.b_only) == (10, 0)
    assert c.difference.p_value == pytest.approx(2 / 2**10) and c.paired_draws
    # strict: the breaks of images 10.. were lucky under both defenses; only images 0-9 are really broken in
    # both, so the paper's 25-point lead of feature noise vanishes
    c = compare_runs(res, 2, 1, reading="strict")
    assert c.a_value.value == pytest.approx(30 / 40) and c.b_value.value == pytest.approx(30 / 40)
    assert c.difference.difference == 0 and c.difference.p_value == 1.0
    with pytest.raises(ValueError, match="not in the store"):
        compare_runs(res, 1, 9)
    codes = {(f.run_id, f.code) for f in sanity_flags(res)}
    assert {(1, "early"), (1, "stalled"), (1, "lucky"), (2, "lucky"), (2, "calibration")} <= codes
    assert (1, "calibration") not in codes and not any(code == "unstable" for _, code in codes)
    assert main(["check", str(db)]) == 1
    out = capsys.readouterr().out
    assert "[lucky] run 2" in out and "Try:" in out
    assert main(["report", str(db), "--compare", "2", "1"]) == 0
    out = capsys.readouterr().out
    assert "paper @ 1000" in out and "strict @ 1000" in out and "+25.0 points" in out
    assert main(["report", str(db), "--table", "robust"]) == 0
    out = capsys.readouterr().out
    assert "calibration NOT converged" in out and "lucky: runs 1, 2" in out and "rfd check" in out
