"""`rfd calibrate`, `rfd accuracy` and the shared defense flags (defense_args)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import rfd.cli.accuracy as accuracy_cmd
import rfd.cli.calibrate as calibrate_cmd
from rfd.cli.data_args import add_data_args, data_spec_from_args
from rfd.cli.defense_args import add_defense_args, defend_from_args
from rfd.cli.main import main


@pytest.fixture
def use_ncm(monkeypatch, ncm):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(calibrate_cmd, "model_from_args", lambda args, device="cpu": ncm)
    monkeypatch.setattr(accuracy_cmd, "model_from_args", lambda args, device="cpu": ncm)
    return ncm


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_data_args(p)
    add_defense_args(p)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _defend(argv: list[str], model):  # type: ignore[no-untyped-def]
    args = _parse(argv)
    return defend_from_args(args, model, data_spec_from_args(args))


def test_calibrate_command_json(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["calibrate", "--model", "ncm", "--defense", "input", "--drop", "0.02", "--draws", "3",
                 "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"sigma", "accuracy", "base_accuracy", "drop", "accuracy_se", "forwards"} <= set(out)
    assert abs(out["drop"] - 0.02) <= 0.001 and out["sigma"] > 0 and out["data"] == "bundled/calib"


def test_accuracy_command_with_sigma_and_with_drop(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["accuracy", "--model", "ncm", "--defense", "feature", "--layer", "net.1", "--sigma", "0.5",
                 "--draws", "3", "--pairs", "2", "--limit", "200", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    for k in ("accuracy", "accuracy_majority", "accuracy_extreme", "base_accuracy", "sigma"):
        assert k in out
    assert out["sigma"] == 0.5 and out["n"] == 200 and out["defense"]["layers"] == ["net.1"]
    assert out["accuracy_extreme"] <= out["accuracy"] < out["base_accuracy"]
    assert main(["accuracy", "--model", "ncm", "--defense", "input", "--drop", "0.03", "--calib-draws", "3",
                 "--draws", "3", "--pairs", "1", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    cal = out["defense"]["calibration"]
    assert cal["data"] == "bundled/calib" and abs(cal["drop"] - 0.03) <= 0.001 and out["sigma"] == cal["sigma"]
    # the same sigma on the (disjoint) eval split costs about the same
    assert abs((out["base_accuracy"] - out["accuracy"]) - 0.03) < 0.02


def test_accuracy_command_undefended_and_aaa(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["accuracy", "--model", "ncm", "--limit", "100", "--json", "--quiet"]) == 0
    none = json.loads(capsys.readouterr().out)
    assert none["sigma"] is None and none["accuracy"] == none["base_accuracy"] == none["accuracy_extreme"]
    assert main(["accuracy", "--model", "ncm", "--defense", "aaa", "--limit", "100", "--json", "--quiet"]) == 0
    aaa = json.loads(capsys.readouterr().out)
    assert aaa["accuracy"] == none["accuracy"]  # AAA never changes a label


@pytest.mark.parametrize("argv, match", [
    (["--defense", "feature"], "needs a level: sigma .* or drop"),
    (["--defense", "input", "--sigma", "0.1", "--layer", "net.1"], "layers apply to the feature defense only"),
    (["--defense", "aaa", "--sigma", "0.1"], "sigma and drop apply to the noise defenses"),
    (["--defense", "input", "--sigma", "-1"], "sigma must be a finite number >= 0"),
    (["--defense", "input", "--drop", "2"], "absolute clean-accuracy drop"),
    (["--defense", "logits", "--sigma", "1", "--scaled"], "scaled applies to the feature defense only"),
])
def test_bad_defense_flags(ncm, argv: list[str], match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        _defend(argv, ncm)


def test_a_drop_with_a_sigma_is_the_calibrated_spec(ncm) -> None:  # type: ignore[no-untyped-def]
    """--sigma with --drop: the sigma is used as given (the drop is recorded), nothing is calibrated."""
    d, info = _defend(["--defense", "input", "--sigma", "0.1", "--drop", "0.02"], ncm)
    d.remove()
    assert info["sigma"] == 0.1 and info["spec"]["drop"] == 0.02 and info["calibration"] is None


def test_defense_info_and_unknown_layer(ncm) -> None:  # type: ignore[no-untyped-def]
    d, info = _defend(["--defense", "feature", "--sigma", "0.2", "--layer", "penultimate", "--layer", "net.1",
                       "--noise-seed", "4"], ncm)
    try:
        assert info["family"] == "feature" and info["sigma"] == 0.2 and info["layers"] == ["penultimate", "net.1"]
        assert info["resolved_layers"] == ["net.2 (input)", "net.1"] and info["seed"] == 4
        assert info["calibration"] is None and d.seed == 4
        json.dumps(info)
    finally:
        d.remove()
    with pytest.raises(ValueError, match="closest"):
        _defend(["--defense", "feature", "--sigma", "0.2", "--layer", "net.l"], ncm)


def test_defense_scaled_and_calibration_data_checks(ncm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d, info = _defend(["--defense", "feature", "--layer", "net.1", "--scaled", "--sigma", "0.5"], ncm)
    assert d.scale_0.shape == (784,) and info["scaled"]
    d.remove()
    from rfd.defenses import DefenseSpec, prepare_defense

    small = torch.rand(10, 1, 8, 8), torch.zeros(10, dtype=torch.int64)
    with pytest.raises(ValueError, match="model expects"):
        prepare_defense(ncm, DefenseSpec(family="input", drop=0.02), calib_images=small[0], calib_labels=small[1])
    with pytest.raises(ValueError, match="needs calibration images"):
        prepare_defense(ncm, DefenseSpec(family="input", drop=0.02))


def test_every_command_reads_any_data(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    """--data/--split reach calibrate, accuracy and attack alike; calibration images stay disjoint."""
    assert main(["calibrate", "--model", "ncm", "--defense", "input", "--drop", "0.02", "--draws", "2",
                 "--data", "fashion-mnist", "--calib-n", "500", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == "fashion-mnist/test" and out["n"] == 500
    assert main(["accuracy", "--model", "ncm", "--data", "fashion-mnist", "--split", "train", "--limit", "300",
                 "--draws", "2", "--pairs", "1", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == "fashion-mnist/train" and out["n"] == 300


def test_attack_command_on_the_fashion_mnist_test_set(monkeypatch, ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    import rfd.cli.attack as attack_cmd

    monkeypatch.setattr(attack_cmd, "model_from_args", lambda args, device="cpu": ncm)
    assert main(["attack", "--model", "fmnist-vgg", "--attack", "square", "--budget", "5", "--n", "20",
                 "--data", "fashion-mnist", "--defense", "input", "--drop", "0.03", "--calib-n", "200",
                 "--calib-draws", "2", "--reevaluate", "3", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == "fashion-mnist/test" and out["n"] == 20
    cal = out["defense"]["calibration"]
    assert cal["data"] == "fashion-mnist/test" and cal["n"] == 200  # the test images not attacked
