"""`rfd analyze ...`: every analysis writes its PNG/JSON/CSV files, --json prints the summary, runs repeat exactly.

A small MLP fitted on the bundled calibration split stands in for a trained reference model (registered only for
the test); the slow test runs on the shipped fmnist-vgg."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from rfd.analysis import predicted_flip_probability
from rfd.cli.main import main
from rfd.models import registry
from rfd.models.checkpoints import save_checkpoint
from rfd.models.classifier import ImageClassifier

NAME = "test-analysis-mlp"


def _build() -> ImageClassifier:
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(inplace=True), nn.Linear(32, 10))
    return ImageClassifier(net, mean=(0.2860,), std=(0.3530,), input_shape=(1, 28, 28), num_classes=10, head="3")


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory, bundled_calib) -> Path:
    torch.manual_seed(0)
    model = _build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = bundled_calib.images, bundled_calib.labels
    for _ in range(150):  # full-batch steps: ~80% accuracy in a couple of seconds
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("mlp") / "mlp.safetensors"
    save_checkpoint(model.eval(), path)
    return path


@pytest.fixture
def mlp(monkeypatch, mlp_checkpoint) -> list[str]:
    entry = registry.ModelEntry(NAME, _build, None, "fashion-mnist", "test MLP")
    monkeypatch.setitem(registry._REGISTRY, NAME, entry)
    return ["--model", NAME, "--checkpoint", str(mlp_checkpoint), "--quiet", "--threads", "1"]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(args + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check_files(out: dict, folder: Path, name: str) -> None:
    for ext in ("png", "json", "csv"):
        p = folder / f"{name}.{ext}"
        assert str(p) in out["files"] and p.stat().st_size > 0
    assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / f"{name}.json").read_text())["files"] == out["files"]
    with (folder / f"{name}.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows


def test_ratio_writes_files_and_repeats_exactly(mlp, tmp_path, capsys) -> None:
    args = ["analyze", "ratio", *mlp, "--n", "20", "--layers", "input", "net.1", "penultimate"]
    out = _run(args + ["--out", str(tmp_path / "a")], capsys)
    _check_files(out, tmp_path / "a", "ratio")
    assert [r["layer"] for r in out["layers"]] == ["input", "net.1", "penultimate"]
    assert out["images"] <= 20 and out["correct_only"] is True
    assert out["layers"][0]["ratio_before"]["median"] == pytest.approx(1.0)
    with (tmp_path / "a" / "ratio.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == out["images"] * 3 * 2
    again = _run(args + ["--out", str(tmp_path / "b")], capsys)
    assert (tmp_path / "a" / "ratio.csv").read_text() == (tmp_path / "b" / "ratio.csv").read_text()
    assert again["layers"] == out["layers"]


def test_theorem1_writes_predicted_and_measured(mlp, tmp_path, capsys) -> None:
    args = ["analyze", "theorem1", *mlp, "--n", "4", "--layers", "input", "net.1", "--nu", "1e-4", "1e-2",
            "--mu", "1e-4", "--draws", "50", "--out", str(tmp_path)]
    out = _run(args, capsys)
    _check_files(out, tmp_path, "theorem1")
    assert len(out["cells"]) == 2 * 2 * 1
    n, draws = out["images"], 50
    assert n == 4 and out["draws"] == draws
    with (tmp_path / "theorem1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 1 * n
    for r in rows:  # every image's prediction is Theorem 1 at its own ratio; at the input grad_h = grad_x
        ratio, nu, mu = float(r["ratio"]), float(r["nu"]), float(r["mu"])
        assert float(r["predicted"]) == pytest.approx(float(predicted_flip_probability(ratio, nu, mu)), abs=1e-12)
        if r["layer"] == "input":
            assert ratio == pytest.approx(1.0)
        assert float(r["measured"]) * draws == pytest.approx(round(float(r["measured"]) * draws))  # k of 50 wrong
    for c in out["cells"]:
        if c["layer"] == "input":  # ratio 1 on every image: the closed form 1/2 - atan(sqrt(mu / 2 nu)) / pi
            hand = 0.5 - math.atan(math.sqrt(c["mu"] / (2 * c["nu"]))) / math.pi
            assert c["predicted_mean"] == pytest.approx(hand, abs=1e-12)
        mine = [float(r["measured"]) for r in rows if r["layer"] == c["layer"] and float(r["nu"]) == c["nu"]]
        assert c["measured_mean"] == pytest.approx(sum(mine) / n, abs=1e-12)
        # small nu and mu: first order holds, so the measured rate is the prediction up to sampling error
        # (4 standard errors of a mean of n x 50 decisions at p = 1/2)
        assert abs(c["measured_mean"] - c["predicted_mean"]) < 4 * 0.5 / math.sqrt(n * draws), c
    assert set(out["correlations"]) >= {"pearson", "spearman", "pearson_cell_means"}
    assert (tmp_path / "theorem1_cells.csv").is_file()
    # more defense noise, more wrong decisions (same layer, same mu): predicted and, here clearly, measured
    by = {(c["layer"], c["nu"]): c for c in out["cells"]}
    assert by[("net.1", 1e-2)]["predicted_mean"] > by[("net.1", 1e-4)]["predicted_mean"]
    assert by[("net.1", 1e-2)]["measured_mean"] > by[("net.1", 1e-4)]["measured_mean"]


def test_theorem1_calibrated_grid_and_approx_error(mlp, tmp_path, capsys) -> None:
    out = _run(["analyze", "theorem1", *mlp, "--n", "3", "--layers", "penultimate", "--drop", "0.05",
                "--calib-n", "200", "--calib-draws", "2", "--nu-scale", "1", "--mu", "1e-4", "--draws", "20",
                "--out", str(tmp_path / "t")], capsys)
    sigma = out["calibration"]["penultimate"]["sigma"]
    assert out["nus"]["penultimate"] == [pytest.approx(sigma ** 2)]
    out = _run(["analyze", "approx-error", *mlp, "--n", "3", "--layers", "input", "net.1", "--nu", "1e-3",
                "--mu", "1e-5", "1e-1", "--draws", "8", "--out", str(tmp_path / "e")], capsys)
    _check_files(out, tmp_path / "e", "approx_error")
    assert [p["layer"] for p in out["places"]] == ["input", "net.1"]
    med = [r["median_rel_error"] for r in out["places"][0]["summary"]]
    assert med[0] < med[1]


def test_magnitude_and_layers(mlp, tmp_path, capsys) -> None:
    common = [*mlp, "--n", "20", "--layers", "input", "net.1", "penultimate", "--drop", "0.05", "--calib-n", "200",
              "--calib-draws", "2"]
    out = _run(["analyze", "magnitude", *common, "--out", str(tmp_path / "m")], capsys)
    _check_files(out, tmp_path / "m", "magnitude")
    assert all(r["sigma"] > 0 and r["magnitude"]["n"] == out["correct"] for r in out["layers"])
    out = _run(["analyze", "layers", *common, "--confirm", "1", "--budget", "10", "--attack-n", "4",
                "--eps", "0.05", "--out", str(tmp_path / "l")], capsys)
    _check_files(out, tmp_path / "l", "layers")
    ranking = out["ranking"]
    assert sorted(r["layer"] for r in ranking) == ["input", "net.1", "penultimate"]  # each candidate once
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    # the default metric ranks by the Theorem-1 probability after one step toward the adversary, best first
    assert out["metric"] == "theorem1-step" and all(r["score"] == r["prob_step"] for r in ranking)
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)
    by = {r["layer"]: r for r in ranking}
    # at the input grad_h = grad_x: the ratio is 1 before and after the step, so both probabilities agree
    assert by["input"]["ratio_change_mean"] == pytest.approx(1.0)
    assert by["input"]["prob_step"] == pytest.approx(by["input"]["prob_clean"], abs=1e-12)
    assert all(r["sigma"] > 0 and abs(r["calib_drop"] - 0.05) < 0.02 for r in ranking)  # each costs ~5 points
    (conf,) = out["confirm"]
    assert conf["layer"] == ranking[0]["layer"] and conf["sigma"] == ranking[0]["sigma"]
    # one confirmed layer cannot be beaten by another: the recommendation is the top-ranked layer
    assert out["recommended"] == ranking[0]["layer"]
    assert (conf["images"], conf["budget"], conf["eps"]) == (4, 10, 0.05)
    # robust images are correctly classified ones that resisted: a count out of the 4 attacked images
    assert conf["robust_accuracy"] <= conf["clean_accuracy"]
    assert conf["robust_accuracy"] * 4 == pytest.approx(round(conf["robust_accuracy"] * 4))


def test_bad_arguments_fail_clearly(mlp, tmp_path, capsys) -> None:
    assert main(["analyze", "ratio", *mlp, "--layers", "net.7", "--out", str(tmp_path)]) == 2
    assert "unknown layer 'net.7'" in capsys.readouterr().err
    assert main(["analyze", "theorem1", *mlp, "--nu", "0", "--layers", "input", "--out", str(tmp_path)]) == 2
    assert "nu" in capsys.readouterr().err


@pytest.mark.slow
def test_ratio_on_reference_vgg(tmp_path, capsys, shipped_checkpoint) -> None:  # type: ignore[no-untyped-def]
    shipped_checkpoint("fmnist-vgg")  # `--model fmnist-vgg` alone loads the shipped weights
    out = _run(["analyze", "ratio", "--model", "fmnist-vgg", "--n", "30", "--quiet", "--out", str(tmp_path)], capsys)
    _check_files(out, tmp_path, "ratio")
    layers = {r["layer"]: r for r in out["layers"]}
    assert list(layers) == ["input", "net.features.2", "net.features.6", "net.features.10", "net.features.13",
                            "penultimate"]
    assert out["images"] >= 25  # the trained model gets most of 30 balanced images right
    # The paper's Figure 1 / Table 14 trend: one step toward the adversary raises the ratio at the deep layers
    # (on the reference VGG by ~40% at the penultimate layer) more than at the first conv layer (~0%).
    assert layers["penultimate"]["change_mean"] > 1.15
    assert layers["penultimate"]["change_mean"] > layers["net.features.2"]["change_mean"] + 0.1
    assert layers["input"]["change_mean"] == pytest.approx(1.0)
