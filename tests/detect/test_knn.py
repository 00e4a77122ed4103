"""kNN similarity detection: the threshold is the benign fpr quantile; near-duplicates are flagged."""

from __future__ import annotations

import pytest
import torch

from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect import KNNDetector, build_detector, changed_copies, false_positive_rate, resend_stream


def test_threshold_is_the_fpr_quantile_of_benign_distances(bundled_calib):
    imgs = bundled_calib.images[:400]
    det = KNNDetector(DetectorSpec(kind="knn", k=10, fpr=0.01))
    t = det.calibrate(imgs)
    ref = KNNDetector(DetectorSpec(kind="knn", k=10), threshold=0.0)
    _, scores = ref.observe(["s"] * 400, ref.signatures(imgs))
    assert t == pytest.approx(float(torch.quantile(scores[10:], 0.01)), rel=1e-5)
    assert det.history_size("s") == 0  # calibration leaves no account behind


def test_mean_distance_to_k_nearest_known_answer():
    det = KNNDetector(DetectorSpec(kind="knn", k=2), threshold=0.5)
    pts = torch.zeros(4, 1, 1, 2)
    pts[1, 0, 0] = torch.tensor([0.3, 0.0])
    pts[2, 0, 0] = torch.tensor([0.0, 0.4])
    pts[3, 0, 0] = torch.tensor([0.3, 0.4])
    flags, scores = det.observe([0] * 4, det.signatures(pts))
    # row 0: no history (inf); row 1: one neighbour at 0.3; row 2: 0.4 and 0.5 -> 0.45; row 3: 0.3 and 0.4 -> 0.35
    assert scores[0] == float("inf") and scores[1:].tolist() == pytest.approx([0.3, 0.45, 0.35])
    assert flags.tolist() == [False, True, True, True]


def test_near_duplicates_flagged_distinct_images_mostly_not(bundled_eval, bundled_calib):
    det = build_detector("knn", seed=0, benign=bundled_calib.images)
    x = bundled_eval.images[:1]
    g = torch.Generator().manual_seed(0)
    probes = (x + 0.01 * torch.randn(20, 1, 28, 28, generator=g)).clamp(0, 1)
    flags = det.check(probes, [0] * 20)
    assert bool(flags[1:].all())
    assert false_positive_rate(det, bundled_eval.images[:500]) <= 0.02


def test_penultimate_embedding_and_missing_threshold(reference_model, bundled_calib):
    model = reference_model("fmnist-vgg")
    det = build_detector("knn:embedding=penultimate", seed=0, model=model, benign=bundled_calib.images[:200])
    sig = det.signatures(bundled_calib.images[:3])
    assert sig.shape[0] == 3 and sig.shape[1] > 10
    with pytest.raises(ValueError, match="threshold"):
        KNNDetector(DetectorSpec(kind="knn")).observe([0, 0, 0], sig)
    with pytest.raises(ValueError, match="benign"):
        build_detector("knn", seed=0)


def test_benign_streams_are_small_changes_in_range(bundled_eval):
    x = bundled_eval.images[:50]
    c = changed_copies(x, seed=1)
    assert c.shape == x.shape and bool((c >= 0).all() and (c <= 1).all())
    assert float((c - x).abs().mean()) < 0.1 and not torch.equal(c, x)
    s = resend_stream(x, copies=1, seed=2)
    assert s.shape[0] == 100
    assert torch.equal(resend_stream(x, copies=1, seed=2), s)
