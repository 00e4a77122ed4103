"""Predicted vs measured per-layer robustness (rfd.analysis.agreement, `rfd analyze agreement`): rank statistics
with known answers, a hand-built per-layer store, and the errors a user meets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rfd.analysis.agreement import agreements, layer_agreement, measured_by_layer, predictions_from
from rfd.cli.main import main
from rfd.eval.results import load_results
from rfd.eval.store import ResultStore
from rfd.stats import average_ranks, spearman, spearman_exact_p
from tests.helpers.stores import add_run

BROKEN, ROBUST, LUCKY = (1, 1, 10), (1, 0, 100), (1, 1, 10, 0.3)  # LUCKY: broken by the check, right in 70%
LAYERS = ("net.a", "net.b", "net.c", "penultimate")
# per layer, per attack: 4 images. Paper means (over images of the mean over attacks): 0, 1/8, 3/8, 1.
# Strict: net.a's image 0 was a lucky break, so it counts as robust under square: net.a = 1/8 (tied with net.b).
OUTCOMES = {
    "net.a": {"square": [LUCKY, BROKEN, BROKEN, BROKEN], "nes": [BROKEN] * 4},
    "net.b": {"square": [ROBUST, BROKEN, BROKEN, BROKEN], "nes": [BROKEN] * 4},
    "net.c": {"square": [ROBUST, ROBUST, BROKEN, BROKEN], "nes": [ROBUST, BROKEN, BROKEN, BROKEN]},
    "penultimate": {"square": [ROBUST] * 4, "nes": [ROBUST] * 4},
}


@pytest.fixture
def layer_store(tmp_path: Path) -> Path:
    db = tmp_path / "layers.sqlite"
    with ResultStore(db) as s:
        s.put_study("layers", {"checkpoints": [100]})
        for ly, by_attack in OUTCOMES.items():
            for atk, samples in by_attack.items():
                add_run(s, family="feature", drop=0.04, layers=(ly,), attack=atk, samples=samples)
        add_run(s, family="none")  # ignored: not a feature-noise run
    return db


def test_rank_statistics_known_answers() -> None:
    assert average_ranks(np.array([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]
    assert float(spearman(np.arange(5.0), np.arange(5.0) ** 3)) == pytest.approx(1.0)
    assert float(spearman(np.arange(5.0), -np.arange(5.0))) == pytest.approx(-1.0)
    assert float(spearman(np.array([1.0, 2, 3, 4, 5]), np.array([2.0, 1, 4, 3, 5]))) == pytest.approx(0.8)
    assert math.isnan(float(spearman(np.arange(4.0), np.ones(4))))
    # exact permutation p: 2 of the n! orderings reach |rho| = 1
    assert spearman_exact_p(np.arange(5.0), np.arange(5.0)) == pytest.approx(2 / 120)
    assert spearman_exact_p(np.arange(3.0), np.arange(3.0)[::-1].copy()) == pytest.approx(2 / 6)
    # beyond 8 items the orderings are sampled (seeded): near the exact tail, the same value twice
    x = np.arange(10.0)
    y = np.array([0, 2, 1, 3, 5, 4, 6, 8, 7, 9.0])
    assert spearman_exact_p(x, y, seed=1) == spearman_exact_p(x, y, seed=1) < 0.001
    with pytest.raises(ValueError, match="at least 3"):
        spearman_exact_p(np.arange(2.0), np.arange(2.0))


def test_measured_by_layer_reads_each_image_as_the_mean_over_attacks(layer_store: Path) -> None:
    res = load_results(layer_store)
    paper = measured_by_layer(res, "vgg", reading="paper")
    assert paper.layers == LAYERS and paper.attacks == ("nes", "square") and paper.budget == 100
    np.testing.assert_allclose(paper.values.mean(1), [0, 1 / 8, 3 / 8, 1])
    np.testing.assert_allclose(paper.values[2], [1, 0.5, 0, 0])
    strict = measured_by_layer(res, "vgg", reading="strict")
    np.testing.assert_allclose(strict.values.mean(1), [1 / 8, 1 / 8, 3 / 8, 1])
    # at 5 queries no attack has broken anything yet (every break above took 10)
    assert measured_by_layer(res, "vgg", reading="paper", budget=5).values.mean() == pytest.approx(1.0)


def test_agreement_known_answers_and_ties(layer_store: Path) -> None:
    res = load_results(layer_store)
    rising = {"net.a": 0.1, "net.b": 0.2, "net.c": 0.3, "penultimate": 0.4, "input": 9.0}  # input: not in the store
    g = layer_agreement(rising, measured_by_layer(res, "vgg", reading="paper"), "prob_step")
    assert g.layers == LAYERS and g.rho == pytest.approx(1.0) and g.p_value == pytest.approx(2 / 24)
    assert -1 <= g.low <= g.rho <= g.high <= 1 and g.images == 4
    assert [r["measured_rank"] for r in g.rows()] == [4.0, 3.0, 2.0, 1.0]  # 1 = most robust
    # the strict reading ties net.a with net.b: ranks [1.5, 1.5, 3, 4] against [1, 2, 3, 4]
    s = layer_agreement(rising, measured_by_layer(res, "vgg", reading="strict"), "prob_step")
    assert s.rho == pytest.approx(4.5 / math.sqrt(22.5))
    falling = {k: -v for k, v in rising.items()}
    assert layer_agreement(falling, measured_by_layer(res, "vgg", reading="paper"), "grad_norm").rho == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="share 2 layer"):
        layer_agreement({"net.a": 1.0, "net.b": 2.0}, measured_by_layer(res, "vgg"), "grad_norm")
    with pytest.raises(ValueError, match="unknown predictor"):
        layer_agreement(rising, measured_by_layer(res, "vgg"), "vibes")


def test_predictions_come_from_the_analyses_json() -> None:
    ratio = {"layers": [{"layer": "net.a", "ratio_after": {"median": 0.5}, "change_mean": 1.2, "grad_norm_mean": 3.0}]}
    layers = {"ranking": [{"layer": "net.a", "prob_step": 0.4, "prob_clean": 0.3, "magnitude_median": 2.0}]}
    assert predictions_from(ratio) == {"grad_norm": {"net.a": 3.0}, "ratio_change": {"net.a": 1.2},
                                       "ratio_after": {"net.a": 0.5}}
    assert predictions_from(layers) == {"prob_step": {"net.a": 0.4}, "prob_clean": {"net.a": 0.3},
                                        "magnitude": {"net.a": 2.0}}
    with pytest.raises(ValueError, match="rfd analyze ratio"):
        predictions_from({"cells": []})


def test_store_errors_name_the_problem(layer_store: Path, tmp_path: Path) -> None:
    res = load_results(layer_store)
    with pytest.raises(ValueError, match="no feature-noise runs of 'vit'.*models: vgg"):
        measured_by_layer(res, "vit")
    with pytest.raises(ValueError, match="exceeds"):
        measured_by_layer(res, "vgg", budget=500)
    db = tmp_path / "two-levels.sqlite"
    with ResultStore(db) as s:
        for drop in (0.02, 0.04):
            add_run(s, family="feature", drop=drop, layers=("net.a",), attack="nes", samples=[BROKEN])
    with pytest.raises(ValueError, match="more than one run of layer 'net.a'"):
        measured_by_layer(load_results(db), "vgg")
    db = tmp_path / "stacked.sqlite"
    with ResultStore(db) as s:
        add_run(s, family="feature", drop=0.02, layers=("net.a", "net.b"), samples=[BROKEN])
    with pytest.raises(ValueError, match="several layers at once"):
        measured_by_layer(load_results(db), "vgg")


def test_cli_agreement_writes_json_and_csv(layer_store: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    pred = tmp_path / "layers.json"
    pred.write_text(json.dumps({"ranking": [{"layer": ly, "prob_step": p, "prob_clean": p, "magnitude_median": p}
                                            for ly, p in zip(LAYERS, (0.1, 0.2, 0.3, 0.4))]}))
    out = tmp_path / "agree"
    assert main(["analyze", "agreement", str(layer_store), "--model", "vgg", "--prediction", str(pred),
                 "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    got = {(a["reading"], a["predictor"]): a["rho"] for a in payload["agreements"]}
    assert got[("paper", "prob_step")] == pytest.approx(1.0)
    assert got[("strict", "magnitude")] == pytest.approx(4.5 / math.sqrt(22.5))
    assert (out / "agreement.csv").read_text().count("\n") == 1 + 2 * 3 * 4  # header + readings x predictors x layers
    assert len(agreements([json.loads(pred.read_text())], load_results(layer_store), "vgg")) == 6
    assert main(["analyze", "agreement", str(tmp_path / "none.sqlite"), "--model", "vgg", "--prediction", str(pred),
                 "--out", str(out)]) != 0
    assert "results store not found" in capsys.readouterr().err
