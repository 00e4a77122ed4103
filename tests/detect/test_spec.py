"""DetectorSpec: one text form, round trips, clear errors; composed with a defense spec."""

from __future__ import annotations

import pytest

from rfd.defenses.detector_spec import DetectorSpec, parse_detector
from rfd.defenses.spec import DefenseSpec


@pytest.mark.parametrize("text", ["blacklight", "knn", "blacklight:window=28,stride=4", "knn:action=ban,k=20",
                                  "blacklight:skip_flat=False,cap=1000"])
def test_text_round_trip(text):
    spec = parse_detector(text)
    assert parse_detector(str(spec)) == spec
    assert parse_detector(spec.to_dict()) == spec


_BAD = [
    ("lightblack", "unknown detector"),
    ("blacklight:windw=3", "unknown detector settings"),
    ("knn:window=3", "do not apply"),
    ("blacklight:match=60", "cannot exceed"),
    ("knn:action=drop", "action"),
    ("blacklight:window", "key=value"),
    ("knn:fpr=2", "false-positive"),
    ("blacklight:skip_flat=maybe", "true or false"),
    ("blacklight:cap=0", "cap"),
    ("blacklight:step=300", "0-255"),
    ("knn:embedding=logits", "embedding"),
    ({"window": 20}, "needs kind"),
    (20, "a name"),
]


@pytest.mark.parametrize("bad, msg", _BAD)
def test_bad_specs_fail_clearly(bad, msg):
    with pytest.raises(ValueError, match=msg):
        parse_detector(bad)


def test_text_form_names_only_changed_settings():
    assert str(DetectorSpec(kind="blacklight")) == "blacklight"
    assert str(parse_detector({"kind": "knn", "k": 20, "action": "ban"})) == "knn:action=ban,k=20"
    assert parse_detector(" blacklight : window = 10 , stride = 1 ").window == 10


def test_defense_with_detector_labels_stores_and_shares_its_calibration():
    d = DefenseSpec(family="feature", drop=0.02, detector="blacklight")
    assert d.method == "Feature+Blacklight" and DefenseSpec(family="none", detector="knn").method == "kNN"
    assert DefenseSpec.from_dict(d.to_dict()) == d
    assert d.calibration_dict() == DefenseSpec(family="feature", drop=0.02).calibration_dict()
    assert "detector" not in DefenseSpec(family="feature", drop=0.02).to_dict()["params"]
    assert DetectorSpec(kind="blacklight", action="ban").label == "Blacklight (ban)"
