"""Blacklight: near-duplicates flagged, distinct images not, the salt matters, exact match counts, restore and cap."""

from __future__ import annotations

import hashlib

import pytest
import torch

from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect import BlacklightDetector, false_positive_rate
from rfd.detect.blacklight import PAD, blacklight_fingerprints


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


def _noisy(x: torch.Tensor, n: int, eps: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + (torch.rand(n, *x.shape[1:], generator=g) * 2 - 1) * eps).clamp(0, 1)


def test_small_noise_near_duplicates_are_flagged(bundled_eval):
    # x, then x + U(-0.01, 0.01) probes: 2.55 levels on the 0-255 scale change ~2.5% of the quantized values, so
    # ~78% of 10-value windows and ~60% of 20-value windows repeat
    for window, least in ((10, 1.0), (20, 0.85)):
        det = _det(window=window)
        flagged = []
        for i in range(5):
            x = bundled_eval.images[i: i + 1]
            seq = torch.cat([x, _noisy(x, 15, 0.01, seed=i)])
            f, _ = det.observe([i] * 16, det.signatures(seq))
            assert not bool(f[0])
            flagged.append(f[1:])
        assert float(torch.cat(flagged).float().mean()) >= least


def _reference_fingerprint(img: torch.Tensor, salt: torch.Tensor, window: int, stride: int, step: int, top: int,
                           skip_flat: bool) -> list[int]:
    """The definition, one window at a time."""
    raw = [int(v) for v in torch.round(img * 255).flatten().tolist()]
    q = bytes(((r + int(s)) % 256) // step for r, s in zip(raw, salt.flatten().tolist(), strict=True))
    keys = set()
    for j in range(0, len(q) - window + 1, stride):
        if skip_flat and len(set(raw[j: j + window])) == 1:
            continue
        keys.add(int.from_bytes(hashlib.sha256(q[j: j + window]).digest()[:8], "big"))
    kept = sorted(keys)[:top]
    return [k - 2**64 if k >= 2**63 else k for k in kept] + [PAD + i for i in range(top - len(kept))]


@pytest.mark.parametrize("window, stride, step, top, skip_flat", [
    (20, 1, 50, 50, True), (20, 1, 50, 50, False), (28, 4, 50, 50, True), (30, 7, 10, 20, False),
    (700, 10, 50, 50, True),  # 9 windows: padded
])
def test_fingerprints_follow_the_definition(bundled_eval, window, stride, step, top, skip_flat):
    x = torch.cat([bundled_eval.images[:6], bundled_eval.images[:1], torch.zeros(1, 1, 28, 28)])
    salt = torch.randint(0, 256, (1, 28, 28), generator=torch.Generator().manual_seed(3))
    got = blacklight_fingerprints(x, salt, window=window, stride=stride, step=step, top=top, skip_flat=skip_flat)
    want = [_reference_fingerprint(img, salt, window, stride, step, top, skip_flat) for img in x]
    assert got.tolist() == want


def test_padding_never_matches():
    # a blank image has no informative window (skip_flat): all padding, so re-sending it is never a match
    det = _det()
    blank = torch.zeros(3, 1, 28, 28)
    sig = det.signatures(blank)
    assert bool((sig < PAD + 50).all())
    _, scores = det.observe([0, 0, 0], sig)
    assert scores.tolist() == [0.0, 0.0, 0.0] and det.index_entries() == 0


def test_info_does_not_reveal_the_salt():
    det = BlacklightDetector(DetectorSpec(kind="blacklight"), salt_seed=123456789)
    assert "123456789" not in repr(det.info()) and "123456789" not in repr(det)
    assert not any("salt" in k for k in det.info())


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


def _reference_scores(fps: torch.Tensor, cap: int | None) -> list[float]:
    """Most real hashes each fingerprint shares with one of the (last cap) earlier ones, by brute force."""
    sets = [{h for h in row if h >= PAD + fps.shape[1]} for row in fps.tolist()]
    lo = (lambda i: 0) if cap is None else (lambda i: max(0, i - cap))
    return [float(max((len(s & sets[j]) for j in range(lo(i), i)), default=0)) for i, s in enumerate(sets)]


@pytest.mark.parametrize("cap", [None, 7, 60])
def test_scores_with_cap_and_compaction_equal_brute_force(bundled_eval, cap):
    # near-duplicate walks of 4 images interleaved with distinct ones: shared postings, evictions, compactions
    walks = [_square_walk(bundled_eval.images[i: i + 1], 30, seed=i) for i in range(4)]
    order = torch.randperm(4 * 31 + 100, generator=torch.Generator().manual_seed(0))
    x = torch.cat([*walks, bundled_eval.images[10:110]])[order]
    det = _det(cap=cap)
    sig = det.signatures(x)
    # in calls of various sizes, and the first 50 restored (a restart)
    det.restore(0, sig[:50])
    parts = [det.observe([0] * (b - a), sig[a:b])[1] for a, b in ((50, 51), (51, 90), (90, 91), (91, 224))]
    want = _reference_scores(sig, cap)[50:]
    assert torch.cat(parts).tolist() == want
    assert det.history_size(0) == (224 if cap is None else cap)


def test_bad_signatures_fail_clearly():
    with pytest.raises(ValueError, match="int64"):
        _det().observe([0], torch.zeros(1, 49, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        _det().restore(0, torch.zeros(1, 50))


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
