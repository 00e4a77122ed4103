"""DefenseSpec: validation and dict round trip."""

from __future__ import annotations

import json

import pytest

from rfd.defenses import AAAConfig, DefenseSpec


def test_round_trip_through_json() -> None:
    spec = DefenseSpec(kind="feature", sigma=0.3, layers=("net.features.3", "penultimate"), scaled=True, seed=7,
                       aaa=AAAConfig(interval=4.0))
    back = DefenseSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert back.layers == ("net.features.3", "penultimate") and back.aaa.interval == 4.0


def test_defaults_match_the_paper_settings_of_aaa() -> None:
    a = DefenseSpec().aaa
    assert (a.interval, a.reverse_step, a.calibration_weight, a.steps, a.lr, a.temperature, a.dev) == (
        6.0, 1.0, 5.0, 100, 0.1, 1.0, 0.5)


def test_spec_is_frozen_and_keyword_only() -> None:
    spec = DefenseSpec(kind="input", sigma=0.1)
    with pytest.raises(AttributeError):
        spec.sigma = 0.2  # type: ignore[misc]
    with pytest.raises(TypeError):
        DefenseSpec("input", 0.1)  # type: ignore[misc]


def test_single_layer_string_is_one_layer() -> None:
    assert DefenseSpec(kind="feature", sigma=1.0, layers="net.fc").layers == ("net.fc",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "dropout"}, "unknown defense kind"),
        ({"kind": "input", "sigma": -0.1}, "sigma must be >= 0"),
        ({"kind": "input", "sigma": float("nan")}, "finite"),
        ({"kind": "feature", "sigma": 1.0, "layers": ()}, "at least one layer"),
        ({"kind": "feature", "sigma": 1.0, "layers": ("a", "a")}, "twice"),
        ({"kind": "feature", "sigma": 1.0, "layers": ("",)}, "non-empty"),
        ({"kind": "input", "sigma": 1.0, "scaled": True}, "feature noise only"),
        ({"kind": "input", "seed": -1}, "seed"),
    ],
)
def test_bad_specs_fail_clearly(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DefenseSpec(**kwargs)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown DefenseSpec keys"):
        DefenseSpec.from_dict({"kind": "input", "sigmaa": 0.1})
    with pytest.raises(ValueError, match="unknown AAAConfig keys"):
        DefenseSpec.from_dict({"kind": "aaa", "aaa": {"intervall": 3}})


def test_bad_aaa_config() -> None:
    with pytest.raises(ValueError, match="interval"):
        AAAConfig(interval=0.0)
    with pytest.raises(ValueError, match="steps"):
        AAAConfig(steps=-1)
