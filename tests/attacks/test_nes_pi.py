"""NES in the partial-information setting (nes_pi): targets from the batch, invariants, and it breaks a model it
only sees through its top-k answers."""

from __future__ import annotations

import pytest
import torch

from rfd.attacks import NESPartialInfo, make_attack
from rfd.attacks.nes_pi import pick_targets
from rfd.blackbox import LocalBlackBox
from tests.helpers.attack_cases import run_attack, tiny_score_case


def test_pick_targets_known_answer() -> None:
    y = torch.tensor([0, 1, 1, 2])
    targets, starts = pick_targets(y, torch.tensor([0.0, 0.99, 0.0, 0.5]))
    # image 0: candidates (1, 2), u 0 -> 1, first image of class 1 is #1; image 1: (0, 2), u 0.99 -> 2 (#3);
    # image 2: (0, 2), u 0 -> 0 (#0); image 3: (0, 1), u 0.5 -> 1 (#1)
    assert targets.tolist() == [1, 2, 0, 1] and starts.tolist() == [1, 3, 0, 1]
    assert (targets != y).all()
    alone = pick_targets(torch.tensor([4, 4]), torch.tensor([0.3, 0.7]))
    assert alone[0].tolist() == [-1, -1] and alone[1].tolist() == [-1, -1]  # no other class: nothing to start from


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="l_inf ball"):
        make_attack("nes_pi", norm="l2", eps=1.0, budget=100)
    with pytest.raises(ValueError, match="even number"):
        make_attack("nes_pi", eps=0.05, budget=100, samples=5)
    with pytest.raises(ValueError, match="start_eps"):
        make_attack("nes_pi", eps=0.05, budget=100, start_eps=0.01)


@pytest.mark.parametrize("output", ["topk:2", "probs", "logits"])
def test_invariants_budget_ball_and_box(output: str, linear_model) -> None:  # type: ignore[no-untyped-def]
    model, x, y = tiny_score_case("cnn-gray", linear_model)
    budget = 400
    res, bb, counting = run_attack("nes_pi", model, x, y, budget=budget, eps=0.1, output=output, samples=10)
    assert int(bb.queries.max()) <= budget
    assert int(bb.queries.sum()) == counting.rows - res.verification_forwards - res.reevaluation_forwards
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    broken = res.success
    assert ((res.x_adv[broken] - x[broken]).abs().flatten(1).amax(1) <= 0.1 + 1e-6).all()
    assert set(res.extras) >= {"target", "radius"}
    assert (res.extras["target"] != y)[res.clean_correct].all()


def test_it_breaks_a_reference_model_seen_through_top3(reference_model, bundled_eval) -> None:  # type: ignore[no-untyped-def]
    from rfd.data.selection import balanced_indices

    model = reference_model("fmnist-vgg").eval()
    sel = balanced_indices(bundled_eval.labels, 10, seed=0)
    x, y = bundled_eval.images[sel], bundled_eval.labels[sel]
    bb = LocalBlackBox(model, output="topk:3", budget=8000)
    res = NESPartialInfo(eps=0.05, budget=8000, seed=0).run(bb, x, y)
    # measured: 5 of the 9 clean-correct images broken (median 4641 queries), 7 of 9 balls shrunk to eps 0.05 from
    # a start image of the target class (l_inf distance near 1): every break is the shrinking at work
    assert int(res.success.sum()) >= 3
    assert (res.extras["radius"][res.clean_correct] <= 0.05 + 1e-6).float().mean() >= 0.5
