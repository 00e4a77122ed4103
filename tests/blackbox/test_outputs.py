"""Output settings (rfd.blackbox.outputs): each returns exactly what it promises, queries are charged alike in
every setting, attacks that cannot use a setting are refused by name, and the margin of a partial answer."""

from __future__ import annotations

import math

import pytest
import torch

from rfd.attacks import make_attack
from rfd.blackbox import LocalBlackBox, OutputSpec, margin_loss, parse_output, visible_margin
from rfd.eval.specs import AttackSpec, StudyError
from rfd.eval.worker import attack_seed_key
from tests.helpers.models import tiny_cnn

SETTINGS = ("logits", "probs", "topk:3", "top1", "rounded:2", "labels")


def images(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return x, tiny_cnn()(x).argmax(1)


def test_parse_round_trips_and_refuses_by_name() -> None:
    for text in SETTINGS:
        spec = parse_output(text)
        assert str(spec) == text and spec == text and parse_output(spec) is spec and hash(spec) == hash(text)
    assert parse_output(" TopK:5 ") == OutputSpec("topk", k=5)
    for bad, says in (("scores", "now called 'logits'"), ("label", "now called 'labels'"), ("topk", "needs a number"),
                      ("rounded:x", "unknown output setting"), ("topk:0", "K >= 1"), ("rounded:9", "0 to 8"),
                      ("top5", "unknown output setting")):
        with pytest.raises(ValueError, match=says):
            parse_output(bad)
    with pytest.raises(ValueError, match="takes no K"):
        OutputSpec("probs", k=3)


@pytest.mark.parametrize("setting", SETTINGS)
def test_each_setting_answers_exactly_what_it_promises(setting: str) -> None:
    model = tiny_cnn()
    x, _ = images()
    with torch.no_grad():
        logits = model(x)
    p = logits.softmax(1)
    bb = LocalBlackBox(model, output=setting, budget=10, num_classes=10)
    bb.start(8)
    idx = torch.arange(8)
    assert torch.equal(bb.labels(x, idx), logits.argmax(1))  # the model's own class in every setting
    if setting == "labels":
        with pytest.raises(PermissionError, match="labels only"):
            bb.scores(x, idx)
        assert bb.queries.tolist() == [1] * 8
        return
    s = bb.scores(x, idx)
    assert bb.queries.tolist() == [2] * 8  # charged alike: one query per row, whatever the answer shows
    if setting == "logits":
        assert torch.equal(s, logits)
    elif setting == "probs":
        assert torch.allclose(s, p)
    elif setting == "rounded:2":
        assert torch.equal(s, torch.round(p, decimals=2))
    else:
        k = 3 if setting == "topk:3" else 1
        seen = ~torch.isnan(s)
        assert seen.sum(1).tolist() == [k] * 8  # nothing about the other classes
        top = p.topk(k, dim=1)
        assert torch.equal(seen.nonzero()[:, 1].view(8, k).sort(1).values, top.indices.sort(1).values)
        assert torch.allclose(s.gather(1, top.indices), top.values)


def test_eot_under_a_partial_answer_averages_what_each_forward_showed() -> None:
    model = tiny_cnn()
    x, _ = images(4)
    bb = LocalBlackBox(model, output="topk:3", num_classes=10)
    bb.start(4)
    idx = torch.arange(4)
    one, five = bb.scores(x, idx), bb.scores(x, idx, repeats=5)  # a deterministic model: the same classes
    assert torch.equal(torch.isnan(one), torch.isnan(five)) and torch.allclose(one.nan_to_num(), five.nan_to_num())
    assert bb.queries.tolist() == [6] * 4


def test_visible_margin_known_answers() -> None:
    nan = math.nan
    p = torch.tensor([[0.5, 0.3, 0.2], [0.6, nan, 0.1], [nan, 0.7, nan], [0.8, nan, nan]])
    y = torch.tensor([0, 0, 0, 0])
    m = visible_margin(p, y)
    # full: 0.5 - 0.3; topk: 0.6 - 0.1; true class hidden: 0 - 0.7; top1 answering y: 2 * 0.8 - 1
    assert torch.allclose(m, torch.tensor([0.2, 0.5, -0.7, 0.6]))
    full = torch.tensor([[0.1, 0.6, 0.3]])
    assert torch.equal(visible_margin(full, torch.tensor([1])), margin_loss(full, torch.tensor([1])))


def test_attacks_refuse_settings_they_cannot_use_and_run_on_the_others() -> None:
    x, y = images(6)
    model = tiny_cnn()
    for attack, setting, says in (("square", "labels", "score-based and output setting labels"),
                                  ("bandits", "topk:3", "loss='ce' needs the true class"),
                                  ("pgd", "probs", "white-box")):
        kw = {"loss": "ce"} if attack == "bandits" else {}
        a = make_attack(attack, eps=0.1, budget=20, **kw)
        bb = LocalBlackBox(model, access=a.blackbox_access(), output=setting, budget=20)
        with pytest.raises(ValueError, match=says):
            a.run(bb, x, y)
        with pytest.raises(StudyError, match=says):
            AttackSpec(name=attack, eps=0.1, budget=20, output=setting, params=tuple(kw.items()))
    for attack, setting in (("square", "topk:3"), ("nes", "top1"), ("signhunt", "rounded:2"), ("rays", "top1")):
        a = make_attack(attack, eps=0.1, budget=60, seed=0)
        bb = LocalBlackBox(model, access=a.blackbox_access(), output=setting, budget=60)
        res = a.run(bb, x, y)
        assert int(bb.queries.max()) <= 60 and bool((res.linf[res.success] <= 0.1 + 1e-6).all())
        with torch.no_grad():  # a claimed success is a real one (a deterministic model)
            wrong = model(res.x_adv[res.success]).argmax(1) != y[res.success]
        assert bool(wrong.all())


def test_output_is_a_black_box_setting_of_the_study_cell() -> None:
    a = AttackSpec(name="square", eps=0.05, budget=100, output="TopK:5")
    assert a.output == "topk:5" and a.to_dict()["output"] == "topk:5"
    plain = AttackSpec(name="square", eps=0.05, budget=100)
    assert "output" not in plain.to_dict()  # default: the run keys of older stores stay as they were
    assert attack_seed_key(a) == attack_seed_key(plain)  # the same attack draws: settings compare paired
    with pytest.raises(StudyError, match="unknown output setting"):
        AttackSpec(name="square", output="top5")
