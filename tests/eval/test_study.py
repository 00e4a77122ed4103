"""Study files: parsing, defaults (the paper's protocol), expansion into cells, and clear validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rfd.eval.cells import expand_cells
from rfd.eval.schema import load_study, parse_study
from rfd.eval.specs import StudyError

BASE = {"models": ["fmnist-vgg"], "attacks": ["square"]}


def study(**kw):  # type: ignore[no-untyped-def]
    return parse_study({**BASE, **kw})


def test_defaults_follow_the_paper() -> None:
    s = study()
    assert s.n == 1000 and s.seed == 0
    assert s.checkpoints == (1000, 10000)
    a = s.attacks[0]
    assert (a.norm, a.eps, a.budget, a.verify, a.eot) == ("linf", 0.05, 10000, 9, 1)
    assert [d.family for d in s.defenses] == ["none"]
    assert s.data.dataset == "bundled" and s.data.eval_split == "eval" and s.data.calib_split == "calib"
    f = study(defenses=[{"family": "feature", "drops": [0.02]}]).defenses[0]
    assert f.layers == ("penultimate",) and f.drop == 0.02 and f.needs_calibration


def test_l2_eps_default_comes_from_the_dataset_preset() -> None:
    a = study(attacks=[{"name": "nes", "norm": "l2"}]).attacks[0]
    from rfd.eval.presets import eps_preset

    assert a.eps == eps_preset("fashion-mnist", "l2")


def test_expansion_counts_and_order() -> None:
    s = parse_study({
        "models": ["fmnist-vgg", "fmnist-vit"],
        "defenses": ["none", {"family": "input", "drops": [0.02, 0.04]},
                     {"family": "feature", "layer": ["net.features.2", "penultimate"], "sigmas": [0.1]},
                     {"family": "feature", "layers": ["net.features.2", "penultimate"], "sigma": 0.2}, "aaa"],
        "attacks": [{"name": "square", "eps": [0.03, 0.05]},
                    {"name": "nes", "sweep": {"fd_step": [0.001, 0.01]}, "eot": [1, 5]}],
        "budget": 500,
    })
    # defenses: none, input x2, feature per-layer x2, feature together x1, aaa = 7
    assert len(s.defenses) == 7
    assert s.defenses[5].layers == ("net.features.2", "penultimate")
    assert len(s.attacks) == 2 + 4
    cells = expand_cells(s)
    assert len(cells) == 2 * 7 * 6
    assert [c.index for c in cells] == list(range(len(cells)))
    assert cells[0].model.name == "fmnist-vgg" and cells[-1].model.name == "fmnist-vit"
    # checkpoints default to the paper's budgets that fit the largest budget
    assert s.checkpoints == (500,)


def test_round_trip_through_dict() -> None:
    s = parse_study({
        "name": "rt", "models": [{"name": "fmnist-vgg", "label": "VGG"}],
        "defenses": ["none", {"family": "feature", "drops": [0.02], "scaled": True}],
        "attacks": [{"name": "square", "params": {"p_init": 0.1}, "label": "Sq"}],
        "n": 20, "checkpoints": [10, 100], "calibration": {"draws": 4},
    })
    assert parse_study(s.to_dict()) == s


@pytest.mark.parametrize("raw, where, what", [
    ({"modles": ["x"]}, "", "unknown key 'modles'"),
    ({"attacks": [{"name": "square", "epss": 0.1}]}, "attacks[0]", "unknown key 'epss'"),
    ({"defenses": ["none", {"family": "feature", "drop": 0.02, "sigmaa": 1}]}, "defenses[1]", "unknown key 'sigmaa'"),
    ({"models": [{"name": "m", "ckpt": "x"}]}, "models[0]", "unknown key 'ckpt'"),
    ({"data": {"split": "eval"}}, "data", "unknown key 'split'"),
    ({"attacks": ["squre"]}, "attacks[0].name", "unknown attack 'squre'"),
    ({"defenses": [{"family": "featur"}]}, "defenses[0]", "unknown defense family 'featur'; known: none"),
    ({"defenses": [{"family": "feature"}]}, "defenses[0]", "needs a level: sigma"),
    ({"defenses": [{"family": "none", "sigma": 0.1}]}, "defenses[0]", "sigma and drop apply to the noise"),
    ({"defenses": [{"family": "input", "drops": [2]}]}, "defenses[0]", "absolute clean-accuracy drop in (0, 1)"),
    ({"defenses": [{"family": "input", "layer": "x", "drops": [0.02]}]}, "defenses[0]", "feature defense only"),
    ({"defenses": [{"family": "feature", "layer": "a", "layers": ["b"], "drops": [0.02]}]}, "defenses[0]",
     "not both"),
    ({"defenses": [{"family": "input", "drops": [0.02], "scaled": True}]}, "defenses[0]", "feature defense only"),
    ({"defenses": [{"family": "aaa", "aaa": {"stepz": 3}}]}, "defenses[0]", "unknown aaa settings ['stepz']"),
    ({"attacks": [{"name": "square", "params": {"p_int": 0.1}}]}, "attacks[0]", "no setting 'p_int'; its settings"),
    ({"data": {"dataset": "bundled", "eval_split": "test"}}, "data.eval_split", "has splits eval, calib"),
    ({"attacks": [{"name": "square", "norm": "l1"}]}, "attacks[0].norm", "'l1' is not allowed"),
    ({"attacks": [{"name": "square", "params": {"seed": 3}}]}, "attacks[0].params.seed", "derived"),
    ({"attacks": [{"name": "square", "params": {"eps": 3}}]}, "attacks[0].params.eps", "attack entry itself"),
    ({"attacks": [{"name": "square", "budget": 0}]}, "attacks[0].budget", ">= 1"),
    ({"n": "many"}, "n", "expected an integer"),
    ({"verify": 0}, "verify", ">= 1"),
    ({"attacks": [{"name": "square", "eps": -1}]}, "attacks[0].eps", "> 0"),
    ({"data": {"dataset": "mnist"}}, "data.dataset", "unknown dataset 'mnist'"),
    ({"models": [{"name": "m", "factory": "nocolon"}]}, "models[0].factory", "package.module:function"),
    ({"models": ["a", "a"]}, "models", "share a name"),
])
def test_validation_errors_say_where_and_what(raw: dict, where: str, what: str) -> None:
    with pytest.raises(StudyError) as err:
        parse_study({**BASE, **raw})
    msg = str(err.value)
    # a nested problem starts with its location, a top-level one with the problem itself
    assert msg.startswith(where) if where else msg.lstrip(": ").startswith(what), msg
    assert what in msg, msg


def test_unknown_key_message_lists_allowed_keys() -> None:
    with pytest.raises(StudyError, match=r"allowed: name, norm, eps, budget, eot, verify, check, reevaluate, output, params, sweep, label"):
        parse_study({**BASE, "attacks": [{"name": "square", "step": 1}]})


def test_yaml_file_relative_paths_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("models:\n  - {name: tiny, factory: 'm:build', checkpoint: weights/t.safetensors}\n"
                 "attacks: [square]\nn: 10\n")
    s = load_study(f)
    assert s.models[0].checkpoint == str(tmp_path / "weights" / "t.safetensors")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [fmnist-vgg]\nattacks: [square]\ndefenses: [{family: input}]\n")
    with pytest.raises(StudyError, match=r"bad\.yaml: defenses\[0\]"):
        load_study(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(broken)
    with pytest.raises(FileNotFoundError):
        load_study(tmp_path / "absent.yaml")


def test_chunk_bounds_are_fixed_by_index() -> None:
    s = study(n=23, chunk_size=10)
    assert s.n_chunks == 3
    assert [s.chunk_bounds(k) for k in range(3)] == [(0, 10), (10, 20), (20, 23)]
    with pytest.raises(ValueError):
        s.chunk_bounds(3)


def test_output_settings_per_attack_entry_and_study_wide() -> None:
    s = parse_study({**BASE, "output": "probs", "attacks": ["square", {"name": "nes", "output": ["topk:3", "Top1"]}]})
    assert [(a.name, a.output) for a in s.attacks] == [("square", "probs"), ("nes", "topk:3"), ("nes", "top1")]
    assert parse_study(s.to_dict()) == s
    with pytest.raises(StudyError, match=r"attacks\[0\].*square is score-based and output setting labels"):
        parse_study({**BASE, "attacks": [{"name": "square", "output": "labels"}]})
    with pytest.raises(StudyError, match=r"attacks\[0\].*unknown output setting 'top5'"):
        parse_study({**BASE, "attacks": [{"name": "rays", "output": "top5"}]})
