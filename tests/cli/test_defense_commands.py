"""`rfd calibrate`, `rfd accuracy` and the shared defense flags (defense_args)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

import rfd.cli.calibrate as calibrate_cmd
from rfd.cli.common import CLIError
from rfd.cli.defense_args import add_defense_args, build_defense
from rfd.cli.main import main
from rfd.models import ImageClassifier


@pytest.fixture(scope="module")
def ncm(bundled_eval) -> ImageClassifier:  # type: ignore[no-untyped-def]
    """Nearest-class-mean classifier (closed form, ~70% on Fashion-MNIST): stands in for a trained model."""
    x, y = bundled_eval.images.flatten(1), bundled_eval.labels
    mu = torch.stack([x[y == k].mean(0) for k in range(10)])
    fc = nn.Linear(784, 10)
    with torch.no_grad():
        fc.weight.copy_(mu)
        fc.bias.copy_(-0.5 * (mu * mu).sum(1))
    net = nn.Sequential(nn.Flatten(), nn.Identity(), fc)
    return ImageClassifier(net, mean=(0.0,), std=(1.0,), input_shape=(1, 28, 28), num_classes=10, head="2").eval()


@pytest.fixture
def use_ncm(monkeypatch, ncm):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(calibrate_cmd, "_load", lambda args: ncm)
    return ncm


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_defense_args(p)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


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
    (["--defense", "feature"], "exactly one of --sigma"),
    (["--defense", "input", "--sigma", "0.1", "--drop", "0.02"], "exactly one of --sigma"),
    (["--defense", "input", "--sigma", "0.1", "--layer", "net.1"], "--layer applies to --defense feature"),
    (["--defense", "aaa", "--sigma", "0.1"], "apply to noise defenses"),
    (["--defense", "input", "--sigma", "-1"], "--sigma must be"),
    (["--defense", "input", "--drop", "2"], "absolute accuracy drop"),
    (["--defense", "logits", "--sigma", "1", "--scaled"], "--scaled applies"),
])
def test_bad_defense_flags(ncm, argv: list[str], match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CLIError, match=match):
        build_defense(_parse(argv), ncm)


def test_build_defense_info_and_unknown_layer(ncm) -> None:  # type: ignore[no-untyped-def]
    d, info = build_defense(_parse(["--defense", "feature", "--sigma", "0.2", "--layer", "penultimate",
                                    "--layer", "net.1", "--noise-seed", "4"]), ncm)
    try:
        assert info["kind"] == "feature" and info["sigma"] == 0.2 and info["layers"] == ["penultimate", "net.1"]
        assert info["resolved_layers"] == ["net.2 (input)", "net.1"] and info["seed"] == 4
        assert info["calibration"] is None and d.spec.seed == 4
        json.dumps(info)
    finally:
        d.remove()
    with pytest.raises(ValueError, match="closest"):
        build_defense(_parse(["--defense", "feature", "--sigma", "0.2", "--layer", "net.l"]), ncm)


def test_build_defense_scaled_and_calibration_data_checks(ncm) -> None:  # type: ignore[no-untyped-def]
    d, info = build_defense(_parse(["--defense", "feature", "--layer", "net.1", "--scaled", "--sigma", "0.5"]), ncm)
    assert d.scale_0.shape == (784,) and info["scaled"]
    d.remove()
    small = (torch.rand(10, 1, 8, 8), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(CLIError, match="model expects"):
        build_defense(_parse(["--defense", "input", "--drop", "0.02"]), ncm, calib=small)


def test_cli_reports_errors_as_exit_2(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["accuracy", "--model", "ncm", "--defense", "feature", "--layer", "nett.1", "--sigma", "1",
                 "--quiet"]) == 2
    assert "closest" in capsys.readouterr().err
