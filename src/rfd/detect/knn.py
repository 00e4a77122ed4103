"""Similarity (kNN) detection (Chen, Carlini & Wagner, "Stateful Detection of Black-Box Adversarial Attacks",
ACM SPAI 2020, https://arxiv.org/abs/1907.05587).

Each query is embedded (raw pixels, or an encoder such as the clean model's penultimate features); a query is
flagged when the mean l_2 distance from its embedding to the ``k`` (50) nearest past queries of its account is
below a threshold set from benign traffic: the ``fpr`` quantile (0.001: the 0.1th percentile) of the kNN mean
distances of a benign stream (:meth:`KNNDetector.calibrate`). With fewer than k past queries the mean runs over
those there are; with none the score is inf (never flagged). Batched torch on the embeddings' device: the rows of
one account in one call are compared with its history and with each other (earlier rows only) in one ``cdist``.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import nn

from rfd.data.checks import check_images
from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect.base import Detector

__all__ = ["KNNDetector"]


class _History:
    """An account's past embeddings in a buffer that doubles (the oldest dropped beyond ``cap``)."""

    def __init__(self, dim: int, device: torch.device, cap: int | None) -> None:
        self.buf = torch.empty(64, dim, device=device)
        self.n = 0
        self.cap = cap

    def view(self) -> torch.Tensor:
        return self.buf[: self.n]

    def add(self, rows: torch.Tensor) -> None:
        if self.n + rows.shape[0] > self.buf.shape[0]:
            size = max(2 * self.buf.shape[0], self.n + rows.shape[0])
            grown = torch.empty(size, self.buf.shape[1], device=self.buf.device)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n: self.n + rows.shape[0]] = rows
        self.n += rows.shape[0]
        if self.cap is not None and self.n > self.cap:
            keep = self.buf[self.n - self.cap: self.n].clone()
            self.buf[: self.cap] = keep
            self.n = self.cap


class KNNDetector(Detector):
    """kNN similarity detector (see the module docstring).

    Args:
        spec: a :class:`~rfd.defenses.detector_spec.DetectorSpec` of kind ``"knn"`` (k, fpr, cap).
        encoder: maps images (B, C, H, W) to embeddings (B, ...); None embeds the raw pixels.
        threshold: the distance below which a query is flagged; None until :meth:`calibrate` sets it.
    """

    def __init__(self, spec: DetectorSpec, *, encoder: nn.Module | None = None,
                 threshold: float | None = None) -> None:
        if spec.kind != "knn":
            raise ValueError(f"KNNDetector needs a knn spec, got {spec.kind!r}")
        super().__init__(spec)
        self.encoder = encoder
        self.threshold = threshold
        self._hist: dict[Hashable, _History] = {}

    @torch.no_grad()
    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings float32 (B, D) of images x (B, C, H, W) in [0, 1]."""
        check_images(x)
        e = x if self.encoder is None else self.encoder(x)
        return e.flatten(1).float()

    def _scores(self, account: Hashable, sig: torch.Tensor) -> torch.Tensor:
        """Mean distance to the k nearest earlier queries (history, then earlier rows), float64 (b,); adds rows."""
        h = self._hist.get(account)
        if h is None:
            h = self._hist[account] = _History(sig.shape[1], sig.device, self.spec.cap)
        past = h.view()
        b = sig.shape[0]
        both = torch.cat([past, sig])
        d = torch.cdist(sig, both)  # (b, n + b)
        n = past.shape[0]
        later = torch.arange(b, device=sig.device).view(1, b) >= torch.arange(b, device=sig.device).view(b, 1)
        d[:, n:] = d[:, n:].masked_fill(later, float("inf"))  # row i sees only rows < i of this call
        avail = (n + torch.arange(b, device=sig.device)).clamp(max=self.spec.k)  # neighbours that exist
        k = min(self.spec.k, n + b - 1) if n + b > 1 else 0
        h.add(sig)
        if k == 0:
            return torch.full((b,), float("inf"), dtype=torch.float64)
        near = torch.topk(d, k, dim=1, largest=False).values  # inf where fewer than k exist
        near = torch.where(torch.isinf(near), torch.zeros_like(near), near)
        mean = near.sum(1).double() / avail.clamp(min=1).double()
        return torch.where(avail > 0, mean, torch.full_like(mean, float("inf"))).cpu()

    def _observe_account(self, account: Hashable, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.threshold is None:
            raise ValueError("the kNN detector has no threshold: calibrate it on benign images first "
                             "(KNNDetector.calibrate, or build_detector(..., benign=images))")
        s = self._scores(account, sig)
        return s < self.threshold, s

    def calibrate(self, benign: torch.Tensor, *, batch: int = 256) -> float:
        """Set the threshold from benign images (N, C, H, W), sent in order as one fresh account: the ``fpr``
        quantile of their kNN mean distances, leaving out the first k queries (their neighbourhoods are not yet
        full). Returns it; other accounts are untouched."""
        key = ("__calibration__", id(benign))
        try:
            parts = [self._scores(key, self.signatures(benign[i: i + batch])) for i in range(0, benign.shape[0], batch)]
        finally:
            self._hist.pop(key, None)
        s = torch.cat(parts)[self.spec.k:]
        if s.numel() < 10:
            raise ValueError(f"kNN calibration needs more than k + 10 = {self.spec.k + 10} benign images, got "
                             f"{benign.shape[0]}")
        self.threshold = float(torch.quantile(s, self.spec.fpr))
        return self.threshold

    def restore(self, account: Hashable, sig: torch.Tensor) -> None:
        h = self._hist.get(account)
        if h is None:
            h = self._hist[account] = _History(sig.shape[1], sig.device, self.spec.cap)
        h.add(sig)

    def reset(self, account: Hashable | None = None) -> None:
        if account is None:
            self._hist.clear()
        else:
            self._hist.pop(account, None)

    def history_size(self, account: Hashable) -> int:
        h = self._hist.get(account)
        return 0 if h is None else h.n

    def info(self) -> dict[str, object]:
        return {**self.spec.to_dict(), "threshold": self.threshold}
