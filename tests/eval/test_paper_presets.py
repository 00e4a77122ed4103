"""Paper presets (valid studies of the right shape at both scales) and the forward-pass estimate."""

from __future__ import annotations

import pytest
import torch

from rfd.cli.main import main
from rfd.eval.estimate import CALIBRATION_EVALUATIONS, CLAIMS_PER_IMAGE, estimate_study
from rfd.eval.paper_presets import PRESETS, SCALES, preset_study
from rfd.eval.study import expand_cells, parse_study
from rfd.eval.tables import resolve_kind


@pytest.mark.parametrize("table", list(PRESETS))
@pytest.mark.parametrize("scale", list(SCALES))
def test_presets_are_valid_studies(table: str, scale: str) -> None:
    s = preset_study(table, scale)
    assert parse_study(s.to_dict()) == s  # survives the YAML schema (a user can export and edit it)
    cells = expand_cells(s)
    assert cells and all(c.attack.budget <= 10000 * c.attack.eot for c in cells)
    if table.isdigit():  # a paper table: its number names its layout
        assert PRESETS[table].kind == resolve_kind(table)
    else:  # rfd's own studies (honest, adaptive) use a layout by kind
        assert resolve_kind(PRESETS[table].kind) == PRESETS[table].kind
    if scale == "full":
        assert s.n == (200 if table.startswith("honest") else 1000)  # the honest sweep: 200 images, 2000 queries
    else:
        assert s.n <= 200 and max(c.attack.budget for c in cells) <= 2500
        assert "REDUCED" in s.description


def test_table2_preset_matches_the_paper_design() -> None:
    s = preset_study("2", "full")
    assert [m.name for m in s.models] == ["fmnist-vgg", "fmnist-resnet", "fmnist-vit"]
    assert [(d.family, d.drop) for d in s.defenses] == [("none", None), ("input", 0.02), ("input", 0.04),
                                                       ("feature", 0.02), ("feature", 0.04)]
    assert [a.name for a in s.attacks] == ["square", "nes", "signhunt"]
    assert s.checkpoints == (1000, 10000) and all(a.budget == 10000 and a.verify == 9 for a in s.attacks)
    t5 = preset_study("5", "cpu")
    assert {d.family for d in t5.defenses} == {"none", "aaa", "input", "feature"}
    assert [a.name for a in t5.attacks] == ["rays", "signflip"]
    assert all(a.verify == 1 for a in preset_study("15", "cpu").attacks)


def test_estimate_counts_forwards_exactly() -> None:
    s = parse_study({"models": ["fmnist-vgg"], "defenses": ["none", {"family": "feature", "drops": [0.02, 0.04]}],
                     "attacks": [{"name": "square", "budget": 100}], "n": 10, "verify": 9,
                     "data": {"calib_images": 50}, "calibration": {"draws": 4}})
    est = estimate_study(s, throughput={"fmnist-vgg": 1000.0})
    assert est.attack_queries == 3 * 10 * 100
    assert est.verification_forwards == 3 * (1 + CLAIMS_PER_IMAGE) * 10 * 9
    assert est.calibration_forwards == 2 * 50 * (4 * CALIBRATION_EVALUATIONS + 2)
    assert est.reevaluation_forwards == 3 * 2 * 10 * 100  # R = 100 on clean and broken final images
    assert est.forwards == (est.attack_queries + est.verification_forwards + est.reevaluation_forwards
                            + est.calibration_forwards)
    assert est.seconds == pytest.approx(est.forwards / 1000.0 / torch.get_num_threads())
    assert estimate_study(s, throughput={"fmnist-vgg": 1000.0}, workers=2).seconds == pytest.approx(est.seconds / 2)


def test_reproduce_estimate_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "15", "--estimate", "--scale", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "estimates at scale cpu" in out and "fmnist-vit" in out
    assert main(["reproduce", "8", "--estimate"]) == 2
    assert "no preset for table '8'" in capsys.readouterr().err
