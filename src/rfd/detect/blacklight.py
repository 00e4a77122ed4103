"""Blacklight (Li, Shan, Wenger, Zhang, Zheng & Zhao, "Blacklight: Scalable Defense for Neural Networks against
Query-Based Black-Box Attacks", USENIX Security 2022, https://arxiv.org/abs/2006.14042).

A query's fingerprint: its pixels on the 0-255 scale plus a secret per-deployment salt image (mod 256), quantized
with step ``step`` (50), flattened; a window of ``window`` values slides over it with stride ``stride``; each
window is hashed with SHA-256 (windows of a flat background left out unless ``skip_flat`` is off: see
:class:`~rfd.defenses.detector_spec.DetectorSpec`), the digests are deduplicated and the ``top`` (50) smallest (byte order) are kept.
A query is flagged when at least ``match`` (25) of its hashes equal hashes of one past query of the account.
Attack queries differ from their predecessors in a few pixels, so most windows, and so most kept hashes, repeat;
distinct images share almost none. The salt keeps an attacker from predicting which windows collide.

In memory a hash is the first 8 bytes of its digest (an int64): two different windows share them with
probability 2^-64 per pair, far below any rate measured here. An image with fewer than ``top`` distinct windows
is padded with the values ``-2^63 + k`` (a real hash lands there with probability ~2^-58); padding is not
indexed, so it never matches.

The index, per account: hash -> the (increasing) ids of the past queries holding it, in growable numpy arrays.
Matching a query touches only the postings of its 50 hashes and counts them with ``np.bincount``; its cost grows
with how many past queries share its hashes (an attack's near-duplicates), not with the history size. ``cap``
bounds the history: the oldest queries are evicted (their postings are dropped lazily, as a prefix, since ids
increase), and the index is rebuilt from the live fingerprints when the dead entries reach the live ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

import numpy as np
import torch

from rfd.data.checks import check_images
from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect.base import Detector

__all__ = ["BlacklightDetector", "blacklight_fingerprints"]

_PAD = np.int64(-(2**63))  # padding hashes are _PAD + k (never indexed: see _Account._insert)
_PAD_END = -(2**63) + 64


def blacklight_fingerprints(x: torch.Tensor, salt: torch.Tensor, *, window: int, stride: int, step: int,
                            top: int, skip_flat: bool = False) -> torch.Tensor:
    """Fingerprints int64 (B, top) of images x (B, C, H, W) in [0, 1] with ``salt`` (C, H, W) int64 in 0..255:
    each row the ``top`` smallest distinct SHA-256 window hashes (first 8 bytes, as int64, in byte order)."""
    raw = torch.round(x.detach().float() * 255).to(torch.int64)
    q = ((raw + salt.to(x.device)) % 256) // step
    flat = q.flatten(1).to(torch.uint8).cpu().numpy()
    d = flat.shape[1]
    if window > d:
        raise ValueError(f"Blacklight window {window} is wider than the image ({d} values)")
    starts = np.arange(0, d - window + 1, stride)
    if skip_flat:  # windows whose raw pixels are all equal (a flat background) say nothing about the image
        r = raw.flatten(1).cpu()
        win = r.unfold(1, window, stride)
        informative = (win.amax(2) != win.amin(2)).numpy()
    out = np.empty((flat.shape[0], top), dtype=np.int64)
    sha = hashlib.sha256
    for i in range(flat.shape[0]):  # SHA-256 per window: hashlib has no batched form
        buf = flat[i].tobytes()
        js = starts[informative[i]].tolist() if skip_flat else starts.tolist()
        digests = {sha(buf[j: j + window]).digest()[:8] for j in js}
        keys = np.frombuffer(b"".join(sorted(digests)[:top]), dtype=">u8")  # byte order = unsigned big-endian
        row = keys.astype(np.uint64).view(np.int64)
        out[i, : row.size] = row
        if row.size < top:
            out[i, row.size:] = _PAD + np.arange(top - row.size, dtype=np.int64)
    return torch.from_numpy(out)


class _Account:
    """One account's history: the live fingerprints and the inverted index hash -> [ids, used]."""

    def __init__(self, top: int, cap: int | None) -> None:
        self.top = top
        self.cap = cap
        self.fps = np.empty((16, top), dtype=np.int64)  # fps[i]: fingerprint of query id base + i
        self.base = 0
        self.first = 0  # id of the oldest live query
        self.next = 0  # id of the next query
        self.index: dict[int, list] = {}  # type: ignore[type-arg]  # hash -> [int64 ids array, used length]
        self.dead = 0  # evicted queries whose postings may remain

    def __len__(self) -> int:
        return self.next - self.first

    def score(self, fp: np.ndarray) -> int:
        """Most hashes of ``fp`` (top,) shared with one live past query."""
        parts = []
        for h in fp.tolist():
            post = self.index.get(h)
            if post is not None:
                parts.append(post[0][: post[1]])
        if not parts:
            return 0
        cat = np.concatenate(parts) - self.first
        if self.dead:
            cat = cat[cat >= 0]  # postings of evicted queries
        if cat.size == 0:
            return 0
        if cat.size * 4 >= len(self):  # dense: one count per live query
            return int(np.bincount(cat).max())
        return int(np.unique(cat, return_counts=True)[1].max())

    def add(self, fp: np.ndarray) -> None:
        self._insert(fp)
        if self.cap is not None and len(self) > self.cap:
            k = len(self) - self.cap
            self.first += k
            self.dead += k
            if self.dead >= max(len(self), 64):  # as many dead postings as live: rebuild (bounded memory)
                self._rebuild()

    def _insert(self, fp: np.ndarray) -> None:
        qid = self.next
        pos = qid - self.base
        if pos >= self.fps.shape[0]:
            grown = np.empty((2 * self.fps.shape[0], self.top), dtype=np.int64)
            grown[: self.fps.shape[0]] = self.fps
            self.fps = grown
        self.fps[pos] = fp
        for h in set(fp.tolist()):
            if h < _PAD_END:  # padding of an image with fewer distinct windows than top
                continue
            post = self.index.get(h)
            if post is None:
                ids = np.empty(4, dtype=np.int64)
                ids[0] = qid
                self.index[h] = [ids, 1]
                continue
            ids, used = post
            if used == ids.size:
                ids = post[0] = np.concatenate([ids, np.empty_like(ids)])
            ids[used] = qid
            post[1] = used + 1
        self.next += 1

    def _rebuild(self) -> None:
        live = self.fps[self.first - self.base: self.next - self.base].copy()
        self.base = self.next = self.first
        self.fps = np.empty((max(16, 2 * live.shape[0]), self.top), dtype=np.int64)
        self.index = {}
        self.dead = 0
        for fp in live:
            self._insert(fp)


class BlacklightDetector(Detector):
    """Blacklight with a secret salt drawn from ``salt_seed`` (see the module docstring).

    Args:
        spec: a :class:`~rfd.defenses.detector_spec.DetectorSpec` of kind ``"blacklight"``.
        salt_seed: the deployment's secret: the seed of the salt image (0..255 per pixel). Keep it secret; a
            different seed gives different fingerprints of the same image.
    """

    def __init__(self, spec: DetectorSpec, *, salt_seed: int) -> None:
        if spec.kind != "blacklight":
            raise ValueError(f"BlacklightDetector needs a blacklight spec, got {spec.kind!r}")
        super().__init__(spec)
        self._salt_seed = int(salt_seed)
        self._salt: torch.Tensor | None = None
        self._accounts: dict[Hashable, _Account] = {}

    def _salt_for(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self._salt is None or tuple(self._salt.shape) != shape:
            g = torch.Generator().manual_seed(self._salt_seed)
            self._salt = torch.randint(0, 256, shape, generator=g, dtype=torch.int64)
        return self._salt

    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        """Fingerprints int64 (B, top) of images x (B, C, H, W) in [0, 1]."""
        check_images(x)
        s = self.spec
        return blacklight_fingerprints(x, self._salt_for(tuple(x.shape[1:])), window=s.window, stride=s.stride,
                                       step=s.step, top=s.top, skip_flat=s.skip_flat)

    def _account(self, account: Hashable) -> _Account:
        acc = self._accounts.get(account)
        if acc is None:
            acc = self._accounts[account] = _Account(self.spec.top, self.spec.cap)
        return acc

    def _observe_account(self, account: Hashable, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acc = self._account(account)
        fps = sig.cpu().numpy().astype(np.int64, copy=False)
        scores = np.empty(fps.shape[0], dtype=np.float64)
        for i, fp in enumerate(fps):  # in order: row i is compared with the rows before it
            scores[i] = acc.score(fp)
            acc.add(fp)
        sc = torch.from_numpy(scores)
        return sc >= self.spec.match, sc

    def restore(self, account: Hashable, sig: torch.Tensor) -> None:
        acc = self._account(account)
        for fp in sig.cpu().numpy().astype(np.int64, copy=False):
            acc.add(fp)

    def reset(self, account: Hashable | None = None) -> None:
        if account is None:
            self._accounts.clear()
        else:
            self._accounts.pop(account, None)

    def history_size(self, account: Hashable) -> int:
        acc = self._accounts.get(account)
        return 0 if acc is None else len(acc)

    def index_entries(self) -> int:
        """Postings held in all accounts' indexes (a memory measure: 8 bytes each, plus the dict entries)."""
        return sum(int(p[1]) for a in self._accounts.values() for p in a.index.values())
