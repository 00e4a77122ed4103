"""Similarity (kNN) detection (Chen, Carlini & Wagner, "Stateful Detection of Black-Box Adversarial Attacks",
ACM SPAI 2020, https://arxiv.org/abs/1907.05587).

Each query is embedded (raw pixels, or an encoder such as the clean model's penultimate features); a query is
flagged when the mean l_2 distance from its embedding to the ``k`` (50) nearest past queries of its account is
below a threshold set from benign traffic: the ``fpr`` quantile (0.001: the 0.1th percentile) of the kNN mean
distances of a benign stream (:meth:`KNNDetector.calibrate`). With fewer than k past queries the mean runs over
those there are; with none the score is inf (never flagged). Batched torch on the embeddings' device: the rows of
one account in one call are compared with its history by one matrix product (the history's squared norms are
kept) and with each other (earlier rows only) by ``cdist``. In float32 the product form carries a rounding error
of about ``sqrt(eps * |x|^2)`` in a distance, ~0.005 for 28x28 pixel embeddings, far below the thresholds
benign traffic sets (~4.6 for Fashion-MNIST pixels, k 50, fpr 0.001, 1000 calibration images).

The threshold depends on the history length it was calibrated at: a longer benign history has closer neighbours,
so calibrate on a benign stream about as long as the histories the detector will see (or set ``cap``).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import nn

from rfd.data.checks import check_images
from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect.base import Detector

__all__ = ["KNNDetector"]

_CALIBRATION = object()  # the calibration stream's account: equal to no caller's account


class _History:
    """An account's past embeddings (n, D) float32, oldest first, and their squared norms (n,), in buffers that
    grow by doubling.

    With ``cap`` the oldest are dropped by moving the start of the live rows; the live rows are moved to the
    front only when the buffer is full, so a query costs amortized O(D) whatever the cap (copying the whole
    history on every query would cost O(cap * D)). The norms are kept so that a query's distances to the history
    cost one matrix product, not a pass over the history to recompute them."""

    def __init__(self, dim: int, device: torch.device, cap: int | None) -> None:
        self.buf = torch.empty(64, dim, device=device)
        self.sq = torch.empty(64, device=device)
        self.start = 0  # first live row of buf
        self.end = 0  # one past the last live row
        self.cap = cap

    @property
    def n(self) -> int:
        return self.end - self.start

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The live embeddings (n, D) and their squared norms (n,)."""
        return self.buf[self.start: self.end], self.sq[self.start: self.end]

    def add(self, rows: torch.Tensor, sq: torch.Tensor) -> None:
        """Append embeddings (b, D) with their squared norms (b,), dropping the oldest beyond ``cap``."""
        if self.cap is not None and rows.shape[0] > self.cap:
            rows, sq = rows[-self.cap:], sq[-self.cap:]
        b = rows.shape[0]
        if self.end + b > self.buf.shape[0]:
            live = self.n
            old_rows, old_sq = self.view()
            size = max(64, 2 * (live + b))
            if size > self.buf.shape[0]:
                self.buf = torch.empty(size, self.buf.shape[1], device=self.buf.device)
                self.sq = torch.empty(size, device=self.buf.device)
            else:  # room enough once the dropped rows are reclaimed (clone: the ranges may overlap)
                old_rows, old_sq = old_rows.clone(), old_sq.clone()
            self.buf[:live] = old_rows
            self.sq[:live] = old_sq
            self.start, self.end = 0, live
        self.buf[self.end: self.end + b] = rows
        self.sq[self.end: self.end + b] = sq
        self.end += b
        if self.cap is not None and self.n > self.cap:
            self.start = self.end - self.cap


class KNNDetector(Detector):
    """kNN similarity detector (see the module docstring).

    Signatures are the embeddings, float32 (B, D) on the encoder's device (the images' for pixels); scores are
    mean distances in embedding units (pixels: l_2 over [0, 1] values).

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
        """Embeddings float32 (B, D) of images x (B, C, H, W) float32 in [0, 1]: the flattened pixels (D = C*H*W) or
        the encoder's output, flattened."""
        check_images(x)
        e = x if self.encoder is None else self.encoder(x)
        return e.flatten(1).float()

    def _history(self, account: Hashable, sig: torch.Tensor) -> _History:
        if sig.dim() != 2 or not sig.is_floating_point():
            raise ValueError(f"kNN signatures are float embeddings (N, D), got {sig.dtype} {tuple(sig.shape)}")
        h = self._hist.get(account)
        if h is None:
            h = self._hist[account] = _History(sig.shape[1], sig.device, self.spec.cap)
        elif h.buf.shape[1] != sig.shape[1]:
            raise ValueError(f"kNN signatures of {sig.shape[1]} values for an account whose history holds "
                             f"{h.buf.shape[1]} (another embedding or image size?)")
        return h

    def _scores(self, account: Hashable, sig: torch.Tensor) -> torch.Tensor:
        """Scores float64 (b,) on the CPU of rows ``sig`` (b, D) of one account, in order: the mean l_2 distance to
        the k nearest of the queries before each row (the live history, then the earlier rows of this call; with
        ``cap`` only the last ``cap`` of them), inf with none. Adds the rows to the history."""
        h = self._history(account, sig)
        sig = sig.to(h.buf.device, torch.float32)
        past, past_sq = h.view()
        n, b = past.shape[0], sig.shape[0]
        sq = (sig * sig).sum(1)
        # the distances of the whole call: columns 0..n-1 the history (|a - p|^2 = |a|^2 + |p|^2 - 2 a.p with the
        # kept norms: one matrix product), n..n+b-1 this call's rows; row i may see column c when it was sent before
        # row i (c < n + i) and, with a cap, is among the last cap such queries
        to_past = (sq.view(-1, 1) + past_sq.view(1, -1) - 2 * (sig @ past.T)).clamp_min_(0).sqrt_()
        d = torch.cat([to_past, torch.cdist(sig, sig)], 1)  # (b, n + b)
        col = torch.arange(n + b, device=sig.device).view(1, -1)
        before = n + torch.arange(b, device=sig.device).view(-1, 1)  # queries sent before row i
        seen = col < before
        if self.spec.cap is not None:
            seen &= col >= before - self.spec.cap
        d = d.masked_fill(~seen, float("inf"))
        avail = seen.sum(1).clamp(max=self.spec.k)  # neighbours that exist, at most k
        h.add(sig, sq)
        k = min(self.spec.k, n + b - 1)
        if k <= 0:
            return torch.full((b,), float("inf"), dtype=torch.float64)
        near = torch.topk(d, k, dim=1, largest=False).values  # inf past the neighbours that exist
        total = near.masked_fill(torch.isinf(near), 0.0).sum(1).double()
        mean = total / avail.clamp(min=1).double()
        return torch.where(avail > 0, mean, torch.full_like(mean, float("inf"))).cpu()

    def _observe_account(self, account: Hashable, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.threshold is None:
            raise ValueError("the kNN detector has no threshold: calibrate it on benign images first "
                             "(KNNDetector.calibrate, or build_detector(..., benign=images))")
        s = self._scores(account, sig)
        return s < self.threshold, s

    def calibrate(self, benign: torch.Tensor, *, batch: int = 256) -> float:
        """Set and return the threshold from benign images (N, C, H, W) in [0, 1], sent in order as one fresh
        account (in calls of ``batch``): the ``fpr`` quantile (linear interpolation) of their kNN mean distances.
        The first k queries are left out: fewer than k neighbours exist for them, so their means run over fewer,
        closer-to-chance neighbours and would not describe a full history. With N - k < 1 / fpr scores the
        quantile is close to the smallest one (fpr 0.001 wants at least ~1000 + k images). The calibration
        stream's history is dropped afterwards; other accounts are untouched."""
        check_images(benign, "benign images")
        key = _CALIBRATION
        self._hist.pop(key, None)
        try:
            parts = [self._scores(key, self.signatures(benign[i: i + batch])) for i in range(0, benign.shape[0], batch)]
        finally:
            self._hist.pop(key, None)
        s = torch.cat(parts)[self.spec.k:]
        if s.numel() < 10:
            raise ValueError(f"kNN calibration needs at least k + 10 = {self.spec.k + 10} benign images, got "
                             f"{benign.shape[0]}")
        self.threshold = float(torch.quantile(s, self.spec.fpr))
        return self.threshold

    def restore(self, account: Hashable, sig: torch.Tensor) -> None:
        h = self._history(account, sig)
        sig = sig.to(h.buf.device, torch.float32)
        h.add(sig, (sig * sig).sum(1))

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
