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


def _reference_scores(e: torch.Tensor, k: int, cap: int | None) -> list[float]:
    """Mean distance to the k nearest of the (last cap) earlier rows, one row at a time (float64)."""
    out = []
    for i in range(e.shape[0]):
        past = e[max(0, i - cap) if cap is not None else 0: i].double()
        if past.shape[0] == 0:
            out.append(float("inf"))
            continue
        d = torch.linalg.vector_norm(past - e[i].double(), dim=1)
        out.append(float(d.sort().values[:k].mean()))
    return out


@pytest.mark.parametrize("cap", [None, 5, 40])
def test_scores_in_any_calls_equal_one_at_a_time(cap):
    g = torch.Generator().manual_seed(0)
    e = torch.rand(120, 1, 4, 4, generator=g)
    det = KNNDetector(DetectorSpec(kind="knn", k=7, cap=cap), threshold=0.3)
    sig = det.signatures(e)
    det.restore("a", sig[:30])
    got = torch.cat([det.observe(["a"] * (b - a), sig[a:b])[1] for a, b in ((30, 31), (31, 70), (70, 120))])
    want = _reference_scores(sig, 7, cap)[30:]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    assert det.history_size("a") == (120 if cap is None else cap)


def test_near_duplicates_flagged_distinct_images_mostly_not(bundled_eval, bundled_calib):
    det = build_detector("knn", seed=0, benign=bundled_calib.images)
    x = bundled_eval.images[:1]
    g = torch.Generator().manual_seed(0)
    probes = (x + (torch.rand(20, 1, 28, 28, generator=g) * 2 - 1) * 0.01).clamp(0, 1)  # l_inf 0.01
    flags = det.check(probes, [0] * 20)
    assert bool(flags[1:].all())
    assert bool(det.check(x.repeat(2, 1, 1, 1), [1, 1])[1])  # an exact re-send
    assert false_positive_rate(det, bundled_eval.images[:500]) <= 0.01


def test_calibration_leaves_other_accounts_alone(bundled_calib):
    imgs = bundled_calib.images
    det = KNNDetector(DetectorSpec(kind="knn", k=1), threshold=1.0)
    det.observe(["a"] * 3, det.signatures(imgs[:3]))
    assert det.calibrate(imgs[100:300]) > 0
    assert det.history_size("a") == 3
    _, s = det.observe(["a"], det.signatures(imgs[:1]))
    assert float(s[0]) == pytest.approx(0.0, abs=0.01)  # its nearest past query: itself


def test_bad_input_fails_clearly():
    det = KNNDetector(DetectorSpec(kind="knn"), threshold=1.0)
    det.observe([0], torch.zeros(1, 16))
    with pytest.raises(ValueError, match="history holds 16"):
        det.observe([0], torch.zeros(1, 9))
    with pytest.raises(ValueError, match="float"):
        det.observe([0], torch.zeros(1, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det.signatures(torch.full((1, 1, 2, 2), 1.5))
    with pytest.raises(ValueError, match="at least"):
        KNNDetector(DetectorSpec(kind="knn")).calibrate(torch.rand(20, 1, 4, 4))


def test_penultimate_embedding_and_missing_threshold(reference_model, bundled_calib):
    model = reference_model("fmnist-vgg")
    det = build_detector("knn:embedding=penultimate", seed=0, model=model, benign=bundled_calib.images[:200])
    sig = det.signatures(bundled_calib.images[:3])
    assert sig.shape[0] == 3 and sig.shape[1] > 10
    with pytest.raises(ValueError, match="threshold"):
        KNNDetector(DetectorSpec(kind="knn")).observe([0, 0, 0], sig)
    with pytest.raises(ValueError, match="benign"):
        build_detector("knn", seed=0)


def _which_change(x: torch.Tensor, c: torch.Tensor) -> str:
    """Which of the three changes turned image x (C, H, W) into c."""
    if torch.equal(c, torch.round(x * 32) / 32):
        return "round"
    lit = (x > 0.05) & (c < 1)
    if bool(lit.any()):
        gain = float((c[lit] / x[lit]).median())
        if 0.9 <= gain <= 1.1 and torch.allclose(c, (x * gain).clamp(0, 1), atol=1e-4):
            return "brightness"
    h, w = x.shape[1:]
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            rows = (torch.arange(h) - dy).clamp(0, h - 1)
            cols = (torch.arange(w) - dx).clamp(0, w - 1)
            if (dy, dx) != (0, 0) and torch.equal(c, x[:, rows][:, :, cols]):
                return "shift"
    return "none"


def test_changed_copies_are_one_small_change_each(bundled_eval):
    x = bundled_eval.images[:60]
    c = changed_copies(x, seed=1)
    assert c.shape == x.shape and bool((c >= 0).all() and (c <= 1).all())
    kinds = [_which_change(a, b) for a, b in zip(x, c, strict=True)]
    assert "none" not in kinds and set(kinds) == {"round", "brightness", "shift"}
    assert torch.equal(changed_copies(x, seed=1), c) and not torch.equal(changed_copies(x, seed=2), c)


def test_resend_stream_sends_each_original_before_its_copies(bundled_eval):
    x = bundled_eval.images[:50]
    s = resend_stream(x, copies=2, seed=2)
    assert s.shape == (150, 1, 28, 28) and torch.equal(resend_stream(x, copies=2, seed=2), s)
    flat = s.flatten(1)

    def first_at(rows: torch.Tensor) -> list[int]:  # where each row first appears in the stream
        return [int(torch.nonzero((flat == r).all(1)).min()) for r in rows.flatten(1)]

    orig = first_at(x)
    assert sorted(orig) != list(range(0, 150, 3)) and sorted(orig) != list(range(50))  # interleaved at random
    # the c-th copies are changed_copies(x, seed=seed + 1 + c), each sent after its original (two copies of an
    # image can be equal, when both drew the same rounding)
    for c in range(2):
        assert all(p > o for p, o in zip(first_at(changed_copies(x, seed=3 + c)), orig, strict=True))
