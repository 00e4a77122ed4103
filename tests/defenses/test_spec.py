"""DefenseSpec: validation and dict round trip."""

from __future__ import annotations

import json

import pytest

from rfd.defenses import AAAConfig, DefenseSpec


def test_round_trip_through_json() -> None:
    spec = DefenseSpec(family="feature", sigma=0.3, drop=0.02, layers=("net.features.3", "penultimate"), scaled=True)
    back = DefenseSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.layers == ("net.features.3", "penultimate")
    aaa = DefenseSpec(family="aaa", aaa=AAAConfig(interval=4.0))
    assert aaa.to_dict()["params"] == {"aaa": {"interval": 4.0}}  # only what differs from the defaults
    assert DefenseSpec.from_dict(json.loads(json.dumps(aaa.to_dict()))) == aaa


def test_dict_form_is_the_store_record() -> None:
    """The dict a results store keys runs by: the same keys (and values) whatever the defense."""
    assert DefenseSpec(family="feature", drop=0.02).to_dict() == {
        "family": "feature", "layers": ["penultimate"], "drop": 0.02, "sigma": None, "scaled": False, "params": {}}
    assert DefenseSpec().to_dict() == {"family": "none", "layers": [], "drop": None, "sigma": None,
                                       "scaled": False, "params": {}}


def test_a_noise_defense_needs_a_level() -> None:
    """DefenseSpec(family="feature") alone would be no defense at all: refused, naming both ways to set it."""
    for family in ("input", "feature", "logits"):
        with pytest.raises(ValueError, match="needs a level: sigma .* or drop"):
            DefenseSpec(family=family)
    assert DefenseSpec(family="feature", drop=0.02).needs_calibration
    assert not DefenseSpec(family="feature", sigma=0.0).needs_calibration
    assert DefenseSpec(family="feature", sigma=0.0).is_identity  # an explicit zero is a level (no noise)


def test_defend_refuses_an_uncalibrated_spec() -> None:
    from torch import nn

    from rfd.defenses import defend

    with pytest.raises(ValueError, match="calibrate it first"):
        defend(nn.Linear(4, 2), DefenseSpec(family="input", drop=0.02))


def test_families_are_listed_once_with_their_labels() -> None:
    from rfd.defenses import FAMILIES, NOISE_FAMILIES

    assert list(FAMILIES) == ["none", "input", "feature", "logits", "aaa"]
    assert NOISE_FAMILIES == ("input", "feature", "logits")
    assert [DefenseSpec(family=f, sigma=0.1).method for f in NOISE_FAMILIES] == ["Input", "Feature", "Logits"]
    assert DefenseSpec(family="none").method == "Base" and DefenseSpec(family="aaa").method == "AAA"


def test_defaults_match_the_paper_settings_of_aaa() -> None:
    a = DefenseSpec().aaa
    assert (a.interval, a.reverse_step, a.calibration_weight, a.steps, a.lr, a.temperature, a.dev) == (
        6.0, 1.0, 5.0, 100, 0.1, 1.0, 0.5)


def test_spec_is_frozen_and_keyword_only() -> None:
    spec = DefenseSpec(family="input", sigma=0.1)
    with pytest.raises(AttributeError):
        spec.sigma = 0.2  # type: ignore[misc]
    with pytest.raises(TypeError):
        DefenseSpec("input", 0.1)  # type: ignore[misc]


def test_single_layer_string_is_one_layer() -> None:
    assert DefenseSpec(family="feature", sigma=1.0, layers="net.fc").layers == ("net.fc",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"family": "dropout"}, "unknown defense family 'dropout'; known: none, input, feature, logits, aaa"),
        ({"family": "input", "sigma": -0.1}, "sigma must be a finite number >= 0"),
        ({"family": "input", "sigma": float("nan")}, "finite"),
        ({"family": "input", "drop": 1.5}, r"drop is an absolute clean-accuracy drop in \(0, 1\)"),
        ({"family": "none", "sigma": 0.1}, "sigma and drop apply to the noise defenses"),
        ({"family": "aaa", "drop": 0.02}, "sigma and drop apply to the noise defenses"),
        ({"family": "feature", "sigma": 1.0, "layers": ("a", "a")}, "twice"),
        ({"family": "feature", "sigma": 1.0, "layers": ("",)}, "non-empty"),
        ({"family": "input", "sigma": 1.0, "layers": ("net.fc",)}, "layers apply to the feature defense only"),
        ({"family": "input", "sigma": 1.0, "scaled": True}, "scaled applies to the feature defense only"),
        ({"family": "input", "sigma": 1.0, "aaa": AAAConfig(steps=3)}, "aaa settings apply to the aaa defense"),
    ],
)
def test_bad_specs_fail_clearly(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DefenseSpec(**kwargs)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown defense spec keys"):
        DefenseSpec.from_dict({"family": "input", "sigmaa": 0.1})
    with pytest.raises(ValueError, match="unknown aaa settings"):
        DefenseSpec.from_dict({"family": "aaa", "params": {"aaa": {"intervall": 3}}})


def test_bad_aaa_config() -> None:
    with pytest.raises(ValueError, match="interval"):
        AAAConfig(interval=0.0)
    with pytest.raises(ValueError, match="steps"):
        AAAConfig(steps=-1)
