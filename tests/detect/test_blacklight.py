"""Blacklight: near-duplicates flagged, distinct images not, the salt matters, exact match counts, restore and cap."""

from __future__ import annotations

import pytest
import torch

from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect import BlacklightDetector, false_positive_rate
from rfd.detect.blacklight import blacklight_fingerprints


def _det(**kw) -> BlacklightDetector:
    return BlacklightDetector(DetectorSpec(kind="blacklight", **kw), salt_seed=7)


def _square_walk(x: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """Square-attack-like queries: each changes one 4x4 window of the previous one by +-0.05."""
    g = torch.Generator().manual_seed(seed)
    seq = [x]
    for _ in range(steps):
        nxt = seq[-1].clone()
        r, c = torch.randint(0, x.shape[-1] - 4, (2,), generator=g).tolist()
        sign = 1.0 if float(torch.rand(1, generator=g)) < 0.5 else -1.0
        nxt[:, :, r: r + 4, c: c + 4] = (x[:, :, r: r + 4, c: c + 4] + 0.05 * sign).clamp(0, 1)
        seq.append(nxt)
    return torch.cat(seq)


def test_near_duplicates_are_flagged_from_the_second_query(bundled_eval):
    det = _det()
    x = bundled_eval.images[:1]
    walk = _square_walk(x, 20, seed=0)
    flags, _ = det.observe([0] * walk.shape[0], det.signatures(walk))
    assert not bool(flags[0]) and bool(flags[1:].all())
    again = det.check(x, [0])  # the exact image re-sent
    assert bool(again[0])


def test_distinct_test_images_are_not_flagged(bundled_eval):
    det = _det()
    assert false_positive_rate(det, bundled_eval.images[:600]) <= 0.01


def test_flat_background_windows_would_flag_distinct_images(bundled_eval):
    # why skip_flat is the default on Fashion-MNIST: hashing black-background windows makes distinct images match
    keep = _det(skip_flat=False)
    assert false_positive_rate(keep, bundled_eval.images[:600]) > 0.05


def test_the_salt_changes_the_fingerprints(bundled_eval):
    x = bundled_eval.images[:4]
    a = BlacklightDetector(DetectorSpec(kind="blacklight"), salt_seed=1).signatures(x)
    b = BlacklightDetector(DetectorSpec(kind="blacklight"), salt_seed=2).signatures(x)
    c = BlacklightDetector(DetectorSpec(kind="blacklight"), salt_seed=1).signatures(x)
    assert torch.equal(a, c) and not bool((a == b).any(1).all())
    assert a.shape == (4, 50) and a.dtype == torch.int64


def test_exact_match_counts_on_a_hand_built_case():
    # 1x1x4x4 images, windows of 4 values, stride 4: four windows; image B shares exactly two windows with A
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0] = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.7, 0.2, 0.8, 0.4], [0.6, 0.1, 0.3, 0.9], [0.2, 0.8, 0.5, 0.7]])
    b = a.clone()
    b[0, 0, 2:] = 1.0 - b[0, 0, 2:]  # rows 2 and 3 (windows 3 and 4) change
    det = BlacklightDetector(DetectorSpec(kind="blacklight", window=4, stride=4, step=1, top=4, match=2,
                                          skip_flat=False), salt_seed=0)
    _, scores = det.observe([0, 0, 0], det.signatures(torch.cat([a, b, a])))
    assert scores.tolist() == [0.0, 2.0, 4.0]


def test_restore_gives_the_same_flags_as_an_uninterrupted_history(bundled_eval):
    walk = _square_walk(bundled_eval.images[1:2], 10, seed=1)
    whole = _det()
    f_whole, s_whole = whole.observe([0] * 11, whole.signatures(walk))
    first = _det()
    sig = first.signatures(walk)
    first.observe([0] * 6, sig[:6])
    restarted = _det()
    restarted.restore(0, sig[:6])
    f_rest, s_rest = restarted.observe([0] * 5, sig[6:])
    assert torch.equal(f_rest, f_whole[6:]) and torch.equal(s_rest, s_whole[6:])


def test_cap_evicts_the_oldest_queries(bundled_eval):
    det = _det(cap=50)
    imgs = bundled_eval.images[:300]
    det.observe([0] * 300, det.signatures(imgs))
    assert det.history_size(0) == 50
    assert not bool(det.check(imgs[:1], [0])[0])  # query 0 was evicted: its re-send no longer matches
    assert bool(det.check(imgs[299:300], [0])[0])  # a recent one still does
    uncapped = _det()
    uncapped.observe([0] * 300, uncapped.signatures(imgs))
    assert det.index_entries() < uncapped.index_entries() / 2


def test_accounts_are_separate_and_reset_forgets(bundled_eval):
    det = _det()
    x = bundled_eval.images[:1]
    det.check(x, ["alice"])
    assert not bool(det.check(x, ["bob"])[0]) and bool(det.check(x, ["alice"])[0])
    det.reset("alice")
    assert det.history_size("alice") == 0 and not bool(det.check(x, ["alice"])[0])


def test_bad_images_fail_clearly():
    with pytest.raises(ValueError):
        _det().signatures(torch.full((1, 1, 28, 28), 2.0))
    with pytest.raises(ValueError, match="wider"):
        blacklight_fingerprints(torch.rand(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64), window=20,
                                stride=1, step=50, top=50)
