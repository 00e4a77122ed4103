"""`rfd attack --detector`: the attack runs behind a stateful detector and the payload says what it did."""

from __future__ import annotations

import json

import pytest

import rfd.cli.attack as attack_cmd
from rfd.cli.main import main


@pytest.fixture
def use_ncm(monkeypatch, ncm):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(attack_cmd, "model_from_args", lambda args, device="cpu": ncm)
    return ncm


def test_square_behind_blacklight_is_flagged_and_charged(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["attack", "--model", "fmnist-vgg", "--attack", "square", "--budget", "40", "--n", "8",
                 "--detector", "blacklight", "--detector-seed", "3", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    det = out["detector"]
    assert det["spec"].startswith("blacklight")
    # Square's proposals change one square of the incumbent: near-duplicates, so nearly every image is caught
    # within a few queries and most of its queries are refused (still charged: the budget is spent)
    assert det["detected"] >= 50.0 and det["first_flag"] >= 1.0
    assert det["flagged"] > 50.0
    assert 0 < det["queries"] <= 40


def test_a_bad_detector_spec_is_a_clear_error(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["attack", "--model", "fmnist-vgg", "--attack", "square", "--budget", "5", "--n", "2",
                 "--detector", "blacklight:window=0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--detector" in err and "window" in err
