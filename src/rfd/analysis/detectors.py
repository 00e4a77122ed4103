"""Benign cost and speed of stateful detectors: false-positive rates on a stream of distinct images and on a
stream in which benign users re-send slightly changed copies (:mod:`rfd.detect.benign`), and queries per second.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from rfd.defenses.detector_spec import DetectorSpec, parse_detector
from rfd.detect import build_detector, false_positive_rate, resend_stream
from rfd.stats import wilson

__all__ = ["benign_report"]


def benign_report(specs: list[DetectorSpec | str], *, benign: torch.Tensor, calib: torch.Tensor, seed: int,
                  model: nn.Module | None = None) -> list[dict[str, Any]]:
    """Per detector: false-positive rate (with a 95% Wilson interval) on ``benign`` (N, C, H, W) sent in order as
    one account, on the re-send stream of the same images (each followed later by one changed copy), and the
    detector's queries/s on the distinct stream (signatures and matching; one thread's worth of CPU in tests).
    kNN thresholds come from ``calib`` (disjoint from ``benign``); Blacklight is salted with ``seed``."""
    out = []
    resend = resend_stream(benign, copies=1, seed=seed)
    for raw in specs:
        spec = parse_detector(raw)
        det = build_detector(spec, seed=seed, model=model, benign=calib)
        t0 = time.perf_counter()
        fpr = false_positive_rate(det, benign)
        dt = time.perf_counter() - t0
        fpr_resend = false_positive_rate(det, resend)
        n, m = benign.shape[0], resend.shape[0]
        out.append({
            "detector": str(spec), "label": spec.label, "n_distinct": n, "n_resend": m,
            "fpr_distinct": fpr, "fpr_distinct_ci": _ci(fpr, n),
            "fpr_resend": fpr_resend, "fpr_resend_ci": _ci(fpr_resend, m),
            "queries_per_s": n / dt if dt > 0 else float("inf"),
            "threshold": getattr(det, "threshold", None),
        })
    return out


def _ci(rate: float, n: int) -> list[float]:
    e = wilson(round(rate * n), n)
    return [e.low, e.high]
