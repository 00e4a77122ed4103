"""Paper presets: valid studies at both scales whose every cell can run (shipped model, buildable attack,
defense at real layers), radii from the eps presets, the cpu scale a reduced full scale, each table varying what
it is about; and the forward-pass estimate."""

from __future__ import annotations

import pytest
import torch

from rfd.attacks.registry import get_attack_class
from rfd.cli.main import main
from rfd.defenses import defend
from rfd.eval.cells import expand_cells
from rfd.eval.estimate import CALIBRATION_EVALUATIONS, CLAIMS_PER_IMAGE, estimate_study
from rfd.eval.paper_presets import PRESETS, SCALES, preset_for, preset_study
from rfd.eval.presets import default_eps
from rfd.eval.schema import parse_study
from rfd.eval.specs import AttackSpec
from rfd.eval.tables import resolve_kind
from rfd.eval.worker import make_cell_attack
from rfd.models import create_model
from rfd.models.registry import get_entry


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
        # the honest sweep: 200 images, 2000 queries; the stateful table: 100 images, 2000 queries (its issue's size)
        assert s.n == (200 if table.startswith("honest") else 100 if table == "stateful" else 1000)
    else:
        assert s.n <= 200 and max(c.attack.budget for c in cells) <= 2500
        assert "REDUCED" in s.description


def test_every_preset_is_found_by_its_table_name() -> None:
    for key, preset in PRESETS.items():
        assert preset_for(key) is preset and preset_for(key.upper()) is preset
        if key.isdigit():  # `rfd reproduce "Table 2"` / `table2` name the same preset
            assert preset_for(f"Table {key}") is preset and preset_for(f"table{key}") is preset
    with pytest.raises(ValueError, match="no preset for table '8'; presets: 2, 3"):
        preset_for("8")
    with pytest.raises(ValueError, match="scale must be one of full, cpu"):
        preset_study("2", "gpu")


_MODELS: dict[str, torch.nn.Module] = {}


def _random_weights(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = create_model(name, pretrained=False)
    return _MODELS[name]


@pytest.mark.parametrize("table", list(PRESETS))
@pytest.mark.parametrize("scale", list(SCALES))
def test_every_cell_of_a_preset_can_run(table: str, scale: str, shipped_checkpoint) -> None:  # type: ignore[no-untyped-def]
    """What a worker does with each cell, short of attacking: the model ships, the attack builds with the cell's
    settings (a misspelt parameter fails here), and the defense attaches to the model and fires at its layers."""
    s = preset_study(table, scale)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for m in s.models:
        for name in get_entry(m.name).members or (m.name,):  # a model set ships its members' weights
            shipped_checkpoint(name)
    for a in s.attacks:
        attack = make_cell_attack(a, seed=0)
        assert a.norm in type(attack).norms and attack.config.budget == a.budget and attack.config.eot == a.eot
        for k, v in a.params:
            assert getattr(attack.config, k) == v, (a, k)
    for m in s.models:
        model = _random_weights(m.name)
        for d in s.defenses:
            if d.needs_calibration:
                assert 0 < d.drop < 1, d  # type: ignore[operator]
            spec = d.replace(sigma=0.1) if d.is_noise else d
            with torch.no_grad(), defend(model, spec, calib_images=x) as defended:
                assert defended(x).shape == (4, 10)
                if d.family == "feature":  # every named layer received its noise exactly once
                    heads = getattr(model, "heads", None)  # a model set: the members that answered, once each
                    want = set(heads) if heads and d.layers == ("penultimate",) else set(d.layers)
                    assert set(defended.injections) <= want and set(defended.injections.values()) == {1}
                    assert heads or set(defended.injections) == want


@pytest.mark.parametrize("table", list(PRESETS))
@pytest.mark.parametrize("scale", list(SCALES))
def test_preset_radii_checkpoints_and_checks(table: str, scale: str) -> None:
    s = preset_study(table, scale)
    budgets = [a.budget for a in s.attacks]
    # the reported budgets are increasing and each is reached by some attack
    assert list(s.checkpoints) == sorted(set(s.checkpoints)) and max(s.checkpoints) <= max(budgets)
    for a in s.attacks:
        default = default_eps(s.data.dataset, a.norm)
        if table == "3" and a.name == "signhunt":  # the strength sweep varies SignHunt's radius (its probe)
            assert default in {b.eps for b in s.attacks if b.name == "signhunt"}
        elif table == "4":  # adversarial training: the reference radius and the AT model's training radius
            assert a.eps in (default, 0.1), a
        else:  # the eps preset of the dataset (rfd.eval.presets) for the attack's norm
            assert a.eps == default, a
        if table == "15":  # the lucky table: success decided by a single forward
            assert a.verify == 1, a
        elif a.verify != AttackSpec(name=a.name).verify:  # any other check is named in the table
            assert a.label is not None and "strict" in a.label, a


@pytest.mark.parametrize("table", list(PRESETS))
def test_cpu_scale_is_a_reduced_full_scale(table: str) -> None:
    full, cpu = preset_study(table, "full"), preset_study(table, "cpu")
    assert cpu.n <= full.n and max(a.budget for a in cpu.attacks) <= max(a.budget for a in full.attacks)
    assert len(expand_cells(cpu)) <= len(expand_cells(full))
    # the same experiment, smaller: no model or defense appears that the full preset does not have
    assert set(cpu.models) <= set(full.models) and set(cpu.defenses) <= set(full.defenses)
    assert "REDUCED" in cpu.description and "REDUCED" not in full.description
    assert (cpu.n, max(a.budget for a in cpu.attacks), len(expand_cells(cpu))) != (
        full.n, max(a.budget for a in full.attacks), len(expand_cells(full)))


@pytest.mark.parametrize("scale", list(SCALES))
def test_paper_tables_vary_what_they_are_about(scale: str) -> None:
    from rfd.analysis import candidate_layers

    # Table 2 / 9: score-based attacks against no defense and input vs feature noise at equal accuracy costs
    for table, norm in (("2", "linf"), ("9", "l2")):
        s = preset_study(table, scale)
        assert all(get_attack_class(a.name).access == "scores" and a.norm == norm for a in s.attacks)
        assert "none" in {d.family for d in s.defenses}
        drops = {fam: {d.drop for d in s.defenses if d.family == fam} for fam in ("input", "feature")}
        if table == "2":
            assert drops["input"] == drops["feature"] and all(d.needs_calibration for d in s.defenses[1:])
    # Table 5: label-only attacks, AAA among the defenses (it cannot change a label)
    t5 = preset_study("5", scale)
    assert all(get_attack_class(a.name).access == "labels" for a in t5.attacks)
    assert {"none", "aaa"} <= {d.family for d in t5.defenses}
    # Table 4: the AT model and its base model, each bare and with input / feature noise at the same drop, under
    # the score attacks at the reference eps and at the AT model's training eps
    t4 = preset_study("4", scale)
    assert [m.name for m in t4.models] == ["fmnist-vgg-at", "fmnist-vgg"]
    assert [(d.family, d.drop) for d in t4.defenses] == [("none", None), ("input", 0.02), ("feature", 0.02)]
    assert {(a.name, a.eps) for a in t4.attacks} == {(a, e) for a in ("square", "nes", "signhunt") for e in (0.05, 0.1)}
    # Tables 6 and 14: feature noise at one candidate layer at a time, every layer once (one model per preset)
    for table in ("6", "14", "6-resnet", "6-vit", "14-resnet", "14-vit"):
        s = preset_study(table, scale)
        (model,) = s.models
        layers = [d.layers for d in s.defenses]
        assert all(d.family == "feature" and len(d.layers) == 1 for d in s.defenses)
        assert len(set(layers)) == len(layers)
        assert {ly for (ly,) in layers} <= set(candidate_layers(_random_weights(model.name)))
        assert model.name == {"resnet": "fmnist-resnet", "vit": "fmnist-vit"}.get(table.partition("-")[2], "fmnist-vgg")
        if table.startswith("6"):
            assert all(d.scaled for d in s.defenses)
        else:
            assert all(d.needs_calibration for d in s.defenses)
    # Table 7: EOT; each attack's budget is M times the base budget, so the base budget is also reported
    t7 = preset_study("7", scale)
    base = min(a.budget for a in t7.attacks if a.eot == 1)
    assert {a.eot for a in t7.attacks} > {1}
    assert all(a.budget == base * a.eot for a in t7.attacks) and base in t7.checkpoints


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
