"""Calibration of sigma to a target clean-accuracy drop."""

from __future__ import annotations

import json

import pytest
import torch

from rfd.defenses import DefenseSpec, calibrate, defend
from rfd.defenses.accuracy import correct_counts
from rfd.models import ImageClassifier

N_CALIB = 300


@pytest.fixture(scope="module")
def calib(bundled_calib):  # type: ignore[no-untyped-def]
    return bundled_calib.images[:N_CALIB], bundled_calib.labels[:N_CALIB]


@pytest.mark.parametrize("spec", [
    DefenseSpec(family="input", drop=0.03),
    DefenseSpec(family="feature", layers=("penultimate",), drop=0.03),
    DefenseSpec(family="feature", layers=("net.1",), scaled=True, drop=0.03),
    DefenseSpec(family="logits", drop=0.03),
])
def test_calibration_hits_its_target(ncm: ImageClassifier, calib, spec: DefenseSpec) -> None:  # type: ignore[no-untyped-def]
    images, labels = calib
    res = calibrate(ncm, spec, images, labels, draws=4, tol=0.002, seed=0)
    assert res.converged and abs(res.drop - 0.03) <= 0.002
    assert res.sigma > 0 and res.spec == spec.replace(sigma=res.sigma)
    assert res.base_accuracy == pytest.approx(
        float((ncm(images).argmax(1) == labels).float().mean()))
    assert 0 < res.accuracy_se < 0.02
    # the reported accuracy is what the calibrated defense really gives with the calibration seed
    with torch.no_grad(), defend(ncm, res.spec, seed=0, calib_images=images) as d:
        acc = correct_counts(d, images, labels, draws=4).double().mean().item()
    assert acc == pytest.approx(res.accuracy, abs=1e-12)
    # exact accounting: base pass, (std pass for unscaled feature noise or for scaled), draws per evaluated sigma
    extra = N_CALIB if spec.family == "feature" else 0
    assert res.forwards == N_CALIB + extra + res.iterations * 4 * N_CALIB
    assert res.iterations == len(res.history)


def test_calibration_is_deterministic_for_a_seed(ncm: ImageClassifier, calib) -> None:  # type: ignore[no-untyped-def]
    images, labels = calib
    spec = DefenseSpec(family="input", drop=0.02)
    a = calibrate(ncm, spec, images, labels, draws=3, seed=1)
    b = calibrate(ncm, spec, images, labels, draws=3, seed=1)
    c = calibrate(ncm, spec, images, labels, draws=3, seed=2)
    assert a == b
    assert a.sigma != c.sigma
    assert a.spec == spec.replace(sigma=a.sigma)  # the calibrated spec keeps the drop it was calibrated to
    json.dumps(a.to_dict())


def test_more_drop_needs_more_noise(ncm: ImageClassifier, calib) -> None:  # type: ignore[no-untyped-def]
    images, labels = calib
    sig = [calibrate(ncm, DefenseSpec(family="input", drop=d), images, labels, draws=3).sigma for d in (0.01, 0.05, 0.15)]
    assert sig[0] < sig[1] < sig[2]


def test_bracket_works_from_far_starting_points(ncm: ImageClassifier, calib) -> None:  # type: ignore[no-untyped-def]
    images, labels = calib
    ref = calibrate(ncm, DefenseSpec(family="input", drop=0.03), images, labels, draws=3, tol=0.002)
    for s0 in (1e-5, 1e3):
        r = calibrate(ncm, DefenseSpec(family="input", drop=0.03), images, labels, draws=3, tol=0.002, sigma0=s0)
        assert r.converged and r.sigma == pytest.approx(ref.sigma, rel=0.3)


@pytest.mark.parametrize("kwargs, match", [
    ({"spec": DefenseSpec(family="aaa")}, "only noise defenses"),
    ({"spec": DefenseSpec()}, "only noise defenses"),
    ({"spec": DefenseSpec(family="input", sigma=0.1)}, "needs the target drop on the spec"),
    ({"spec": DefenseSpec(family="input", drop=0.9)}, "not below the base accuracy"),
    ({"draws": 0}, "draws"),
    ({"tol": 0.0}, "tol"),
    ({"sigma0": -1.0}, "sigma0"),
])
def test_bad_calibration_requests(ncm: ImageClassifier, calib, kwargs: dict, match: str) -> None:  # type: ignore[no-untyped-def]
    images, labels = calib
    args = {"spec": DefenseSpec(family="input", drop=0.02), **kwargs}
    spec = args.pop("spec")
    with pytest.raises(ValueError, match=match):
        calibrate(ncm, spec, images, labels, **args)


def test_calibration_refuses_a_defended_model_and_bad_images(ncm: ImageClassifier, calib) -> None:  # type: ignore[no-untyped-def]
    images, labels = calib
    with defend(ncm, DefenseSpec(family="input", sigma=0.1)) as d, pytest.raises(ValueError, match="undefended"):
        calibrate(d, DefenseSpec(family="input", drop=0.02), images, labels)
    with pytest.raises(ValueError, match="images"):
        calibrate(ncm, DefenseSpec(family="input", drop=0.02), images * 255, labels)
    with pytest.raises(ValueError, match="labels"):
        calibrate(ncm, DefenseSpec(family="input", drop=0.02), images, labels[:-1])


def test_calibration_leaves_no_hooks(ncm: ImageClassifier, calib) -> None:  # type: ignore[no-untyped-def]
    images, labels = calib
    calibrate(ncm, DefenseSpec(family="feature", drop=0.02), images, labels, draws=2)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ncm.modules())


# ---------------------------------------------------------------------------------------------- reference models
@pytest.mark.slow
@pytest.mark.parametrize("name", ["fmnist-vgg", "fmnist-resnet", "fmnist-vit"])
@pytest.mark.parametrize("kind", ["feature", "input"])
def test_calibration_on_reference_models(name: str, kind: str, bundled_calib,  # type: ignore[no-untyped-def]
                                         reference_model) -> None:
    model = reference_model(name)
    images, labels = bundled_calib.images[:500], bundled_calib.labels[:500]  # half the split keeps this ~20 s
    res = calibrate(model, DefenseSpec(family=kind, drop=0.02), images, labels, draws=3, tol=0.002, batch_size=500)
    assert res.converged and abs(res.drop - 0.02) <= 0.003
    assert res.base_accuracy > 0.85 and res.iterations <= 15
