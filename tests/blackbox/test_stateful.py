"""StatefulBlackBox: a detector in front of a black box. Refused queries are charged and never answered; counts
are exact; a ban ends the sample's session; log mode answers."""

from __future__ import annotations

import math

import pytest
import torch

from rfd.blackbox.local import LocalBlackBox
from rfd.blackbox.stateful import StatefulBlackBox
from tests.helpers.detectors import RepeatDetector


def _bb(model, action: str = "reject", access: str = "scores", budget: int | None = 100) -> StatefulBlackBox:
    return StatefulBlackBox(LocalBlackBox(model, access=access, budget=budget), RepeatDetector(action))


def test_repeats_are_rejected_charged_and_unanswered(linear_model):
    bb = _bb(linear_model)
    bb.start(2)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor([0, 1])
    first = bb.scores(x, idx)
    assert torch.isfinite(first).all() and not bool(bb.last_rejected.any())
    again = bb.scores(x[:1], idx[:1])  # sample 0 sends its image again: flagged, refused
    assert torch.isnan(again).all() and bb.last_rejected.tolist() == [True]
    assert bb.queries.tolist() == [2, 1]  # the refused query is charged
    assert bb.flagged.tolist() == [1, 0] and bb.rejected.tolist() == [1, 0]
    assert bb.first_flag.tolist() == [2, -1]  # its second query
    lab = bb.labels(x, idx)  # both repeat now
    assert lab.tolist() == [-1, -1] and bb.queries.tolist() == [3, 2] and bb.first_flag.tolist() == [2, 2]


def test_accounts_are_per_sample(linear_model):
    bb = _bb(linear_model)
    bb.start(2)
    x = torch.rand(1, 1, 4, 4).repeat(2, 1, 1, 1)
    out = bb.scores(x, torch.tensor([0, 1]))  # the same image from two samples: two accounts, no flag
    assert torch.isfinite(out).all() and bb.flagged.tolist() == [0, 0]
    shared = StatefulBlackBox(LocalBlackBox(linear_model, budget=10), RepeatDetector(), accounts="shared")
    shared.start(2)
    shared.scores(x, torch.tensor([0, 1]))
    assert shared.flagged.tolist() == [0, 1]


def test_eot_repeats_are_flagged_at_once_and_answer_averages_the_answered(linear_model):
    bb = _bb(linear_model)
    bb.start(1)
    x = torch.rand(1, 1, 4, 4)
    out = bb.scores(x, torch.tensor([0]), repeats=5)
    assert bb.queries.tolist() == [5] and bb.flagged.tolist() == [4] and bb.first_flag.tolist() == [2]
    assert torch.allclose(out, linear_model(x))  # the one answered forward
    assert not bool(bb.last_rejected.any())


def test_ban_ends_the_session(linear_model):
    bb = _bb(linear_model, action="ban")
    bb.start(2)
    x = torch.rand(2, 1, 4, 4)
    idx = torch.tensor([0, 1])
    bb.scores(x, idx)
    bb.scores(torch.cat([x[:1], torch.rand(1, 1, 4, 4)]), torch.tensor([0, 0]))  # flag, then a fresh image
    assert bb.closed.tolist() == [True, False]
    assert bb.rejected.tolist() == [2, 0]  # the flagged query and the one sent after it in the same call
    out = bb.scores(torch.rand(2, 1, 4, 4), idx)  # a banned sample is refused whatever it sends
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
    assert bb.detector.history_size(0) == 0  # its history was cleared


def test_log_answers_flagged_queries(linear_model):
    bb = _bb(linear_model, action="log")
    bb.start(1)
    x = torch.rand(1, 1, 4, 4)
    bb.scores(x, torch.tensor([0]))
    out = bb.scores(x, torch.tensor([0]))
    assert torch.isfinite(out).all() and bb.flagged.tolist() == [1] and bb.rejected.tolist() == [0]


def test_checks_are_not_screened_and_budget_holds(linear_model):
    bb = _bb(linear_model, budget=3)
    bb.start(1)
    x = torch.rand(1, 1, 4, 4)
    y = torch.tensor([0])
    for _ in range(3):
        bb.scores(x, torch.tensor([0]))
    assert bb.flagged.tolist() == [2]
    bb.is_adversarial(x, y)  # the evaluator's check: uncounted, unscreened
    assert bb.flagged.tolist() == [2] and bb.queries.tolist() == [3]
    with pytest.raises(Exception, match="budget"):
        bb.scores(x, torch.tensor([0]))


def test_start_forgets_histories(linear_model):
    bb = _bb(linear_model)
    bb.start(1)
    x = torch.rand(1, 1, 4, 4)
    bb.scores(x, torch.tensor([0]))
    bb.start(1)
    bb.scores(x, torch.tensor([0]))
    assert bb.flagged.tolist() == [0] and not math.isnan(float(bb.scores(torch.rand(1, 1, 4, 4),
                                                                      torch.tensor([0]))[0, 0]))
