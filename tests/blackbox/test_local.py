"""The black box: query accounting, budgets, access modes, majority-vote success check, eps-ball check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rfd.attacks import make_attack
from rfd.blackbox import BudgetExceeded, LocalBlackBox, ThreatModel, cross_entropy_loss, margin_loss


class ScriptedModel(nn.Module):
    """Predicts ``script[t % len(script)]`` for every row at its t-th forward; logits are one-hot times 5, plus
    1e-3 times the forward counter in the last class (so averaged scores reveal which forwards were taken)."""

    def __init__(self, script: list[int], num_classes: int = 3) -> None:
        super().__init__()
        self.script = script
        self.num_classes = num_classes
        self.calls = 0
        self.rows = 0
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = self.script[self.calls % len(self.script)]
        out = torch.zeros(x.shape[0], self.num_classes)
        out[:, label] = 5.0
        out[:, -1] += 1e-3 * self.calls
        self.calls += 1
        self.rows += x.shape[0]
        return out


def _x(n: int = 2) -> torch.Tensor:
    return torch.full((n, 1, 2, 2), 0.5)


def test_budget_is_enforced_per_sample_and_never_exceeded() -> None:
    bb = LocalBlackBox(ScriptedModel([0]), budget=3)
    bb.start(2)
    i0, i1 = torch.tensor([0]), torch.tensor([1])
    for _ in range(3):
        bb.scores(_x(1), i0)
    with pytest.raises(BudgetExceeded, match="sample 0"):
        bb.scores(_x(1), i0)
    assert bb.queries.tolist() == [3, 0]  # the refused query was not charged
    assert bb.remaining(torch.tensor([0, 1])).tolist() == [0, 3]
    bb.scores(_x(1), i1, repeats=3)  # EOT: 3 forwards, 3 queries
    assert bb.queries.tolist() == [3, 3]


def test_rows_of_one_sample_in_one_batch_are_summed_against_the_budget() -> None:
    # NES sends many probes of the same sample in one call: 4 rows x 1 query must not slip past a budget of 3.
    bb = LocalBlackBox(ScriptedModel([0]), budget=3)
    bb.start(2)
    with pytest.raises(BudgetExceeded):
        bb.scores(_x(4), torch.tensor([1, 1, 1, 1]))
    assert bb.queries.tolist() == [0, 0]
    bb.scores(_x(3), torch.tensor([1, 0, 1]))
    assert bb.queries.tolist() == [1, 2]


def test_repeats_average_m_forwards_and_charge_m() -> None:
    model = ScriptedModel([0])
    bb = LocalBlackBox(model)
    bb.start(1)
    s = bb.scores(_x(1), torch.tensor([0]), repeats=4)
    assert model.calls == 4 and bb.queries.tolist() == [4]
    assert float(s[0, -1]) == pytest.approx(1e-3 * (0 + 1 + 2 + 3) / 4)  # the mean of the 4 forwards


def test_queries_need_start_and_valid_idx() -> None:
    bb = LocalBlackBox(ScriptedModel([0]))
    with pytest.raises(RuntimeError, match="start"):
        bb.scores(_x(1), torch.tensor([0]))
    bb.start(2)
    with pytest.raises(ValueError, match="int64"):
        bb.scores(_x(2), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="matching the batch"):
        bb.scores(_x(2), torch.tensor([0]))
    with pytest.raises(ValueError):
        LocalBlackBox(ScriptedModel([0]), budget=0)
    with pytest.raises(ValueError):
        LocalBlackBox(ScriptedModel([0]), verify=0)


def test_label_access_refuses_scores_but_answers_labels() -> None:
    bb = LocalBlackBox(ScriptedModel([2]), access="labels", budget=5)
    bb.start(1)
    with pytest.raises(PermissionError):
        bb.scores(_x(1), torch.tensor([0]))
    assert bb.queries.tolist() == [0]
    assert bb.labels(_x(1), torch.tensor([0])).tolist() == [2]
    assert bb.queries.tolist() == [1]
    # a score-based attack refuses such a black box up front
    with pytest.raises(ValueError, match="labels only"):
        make_attack("square", budget=5).run(bb, _x(1), torch.tensor([0]))


class PerImageScript(nn.Module):
    """Row ``i`` of a batch is image ``round(100 * x[i, 0, 0, 0])``; its t-th forward (over all calls, however
    batched) predicts ``scripts[image][t]``. So a check's votes can be scripted per image exactly."""

    def __init__(self, scripts: list[list[int]], num_classes: int = 3) -> None:
        super().__init__()
        self.scripts = scripts
        self.num_classes = num_classes
        self.seen = [0] * len(scripts)
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.num_classes)
        for r, img in enumerate(torch.round(100 * x[:, 0, 0, 0]).long().tolist()):
            out[r, self.scripts[img][self.seen[img]]] = 5.0
            self.seen[img] += 1
        return out


def _ids(n: int) -> torch.Tensor:
    x = torch.full((n, 1, 2, 2), 0.5)
    x[:, 0, 0, 0] = torch.arange(n) / 100
    return x


# (script of 9 votes for an image of label 0, decision of the full majority, votes until it is decided)
_VOTES = [([1] * 5 + [0] * 4, True, 5), ([0] * 5 + [1] * 4, False, 5), ([0] * 4 + [1] * 5, True, 9),
          ([1, 0] * 4 + [0], False, 9), ([1, 1, 0, 1, 1, 1, 0, 0, 0], True, 6), ([0, 1, 0, 0, 1, 0, 0, 1, 1], False, 7)]


def test_verify_is_a_majority_of_k_forwards_stopped_once_decided_and_free() -> None:
    scripts = [s for s, _, _ in _VOTES]
    model = PerImageScript(scripts)
    bb = LocalBlackBox(model, verify=9)
    bb.start(len(scripts))
    idx = torch.arange(len(scripts))
    ok = bb.is_adversarial(_ids(len(scripts)), torch.zeros(len(scripts), dtype=torch.int64), idx=idx)
    assert ok.tolist() == [e for _, e, _ in _VOTES]
    # each image voted exactly until its majority was decided, the same decision as all 9 votes
    assert model.seen == [v for _, _, v in _VOTES]
    assert bb.check_forwards.tolist() == [v for _, _, v in _VOTES]
    assert bb.checks.tolist() == [1] * len(scripts)
    assert bb.verification_forwards == sum(v for _, _, v in _VOTES)
    assert bb.queries.tolist() == [0] * len(scripts)  # success checks are not charged


def test_charged_check_pays_each_vote_from_the_budget_and_fails_when_it_cannot_finish() -> None:
    scripts = [[1] * 20, [0] * 4 + [1] * 16, [1] * 20]
    bb = LocalBlackBox(PerImageScript(scripts), verify=9, check="charged", budget=6)
    bb.start(3)
    x = _ids(3)
    bb.scores(x[2:], torch.tensor([2]))  # image 2 has spent 1 of its 6 queries
    ok = bb.is_adversarial(x, torch.zeros(3, dtype=torch.int64), idx=torch.arange(3))
    # image 0: 5 wrong votes (5 queries); image 1 needs 9 votes but can pay 6: undecided, fails; image 2 pays 5
    assert ok.tolist() == [True, False, True]
    assert bb.queries.tolist() == [5, 6, 6]
    assert bb.check_forwards.tolist() == [5, 6, 5]
    assert bb.verification_forwards == 0  # nothing uncounted
    # the clean-image check (no idx) is never charged
    bb.start(3)
    bb.is_adversarial(x, torch.zeros(3, dtype=torch.int64))
    assert bb.queries.tolist() == [0, 0, 0] and bb.checks.tolist() == [0, 0, 0]


def test_reevaluation_is_the_misclassification_rate_of_r_uncounted_forwards() -> None:
    scripts = [[1] * 3 + [0] * 7, [0] * 10, [2] * 10]
    bb = LocalBlackBox(PerImageScript(scripts), reevaluate=10)
    bb.start(3)
    p = bb.reevaluate_wrong(_ids(3), torch.zeros(3, dtype=torch.int64))
    assert p.tolist() == [0.3, 0.0, 1.0]
    assert bb.reevaluation_forwards == 30 and bb.queries.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="reevaluate"):
        LocalBlackBox(PerImageScript(scripts), reevaluate=0)
    with pytest.raises(ValueError, match="check must be"):
        LocalBlackBox(PerImageScript(scripts), check="paid")  # type: ignore[arg-type]


def test_verify_one_is_the_lucky_single_forward() -> None:
    model = ScriptedModel([1, 0, 0])
    bb = LocalBlackBox(model, verify=1)
    bb.start(1)
    assert bb.is_adversarial(_x(1), torch.tensor([0])).tolist() == [True]  # one wrong forward suffices
    assert bb.is_adversarial(_x(1), torch.tensor([0])).tolist() == [False]


def test_success_needs_the_eps_ball_and_the_box() -> None:
    bb = LocalBlackBox(ScriptedModel([1]), verify=3)  # always misclassifies label 0
    bb.start(3)
    x0 = _x(3)
    threat = ThreatModel(norm="linf", eps=0.1)
    x = x0.clone()
    x[1] += 0.2  # outside the ball
    x[2, 0, 0, 0] = 1.5  # outside [0, 1]
    x[0] += 0.1  # on the boundary: inside
    ok = bb.is_adversarial(x, torch.zeros(3, dtype=torch.long), x0=x0, threat=threat)
    assert ok.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="x0"):
        bb.is_adversarial(x, torch.zeros(3, dtype=torch.long), threat=threat)


def test_threat_model_l2_contains_and_validation() -> None:
    x0 = torch.zeros(2, 1, 2, 2)
    x = x0.clone()
    x[0] += 0.5  # l2 = 1.0
    x[1] += 0.6  # l2 = 1.2
    assert ThreatModel(norm="l2", eps=1.0).contains(x, x0).tolist() == [True, False]
    with pytest.raises(ValueError):
        ThreatModel(norm="l1", eps=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ThreatModel(norm="linf", eps=0.0)


def test_start_resets_counts_and_probs_output() -> None:
    bb = LocalBlackBox(ScriptedModel([0]), output="probs", budget=2)
    bb.start(1)
    s = bb.scores(_x(1), torch.tensor([0]))
    assert torch.allclose(s.sum(1), torch.ones(1))
    bb.is_adversarial(_x(1), torch.tensor([0]))
    bb.start(4)
    assert bb.queries.tolist() == [0, 0, 0, 0] and bb.verification_forwards == 0
    assert bb.num_classes == 3


def test_margin_and_cross_entropy_losses() -> None:
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 4.0, 1.0]])
    y = torch.tensor([0, 0])
    assert margin_loss(scores, y).tolist() == [1.0, -4.0]  # f_y - max_{i != y} f_i
    p = scores.softmax(1)
    assert torch.allclose(cross_entropy_loss(p, y, probabilities=True), cross_entropy_loss(scores, y), atol=1e-6)


def test_large_batches_are_split_into_max_batch_rows_and_charged_once() -> None:
    from rfd.blackbox.local import CPU_MAX_BATCH

    model = ScriptedModel([1])
    bb = LocalBlackBox(model, budget=5)
    assert bb.max_batch == CPU_MAX_BATCH  # CPU default: cache-sized chunks
    n = 2 * CPU_MAX_BATCH + 3
    bb.start(n)
    s = bb.scores(_x(n), torch.arange(n))
    assert s.shape == (n, 3) and model.calls == 3 and model.rows == n
    assert bb.queries.tolist() == [1] * n  # chunks are one query per row, not one per chunk
    small = LocalBlackBox(ScriptedModel([1]), max_batch=4)
    small.start(10)
    assert small.scores(_x(10), torch.arange(10)).shape == (10, 3) and small.model.calls == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_batch_must_be_a_positive_row_count(bad: object) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        LocalBlackBox(ScriptedModel([0]), max_batch=bad)  # type: ignore[arg-type]
