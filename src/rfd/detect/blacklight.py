"""Blacklight (Li, Shan, Wenger, Zhang, Zheng & Zhao, "Blacklight: Scalable Defense for Neural Networks against
Query-Based Black-Box Attacks", USENIX Security 2022, https://arxiv.org/abs/2006.14042).

A query's fingerprint: its pixels on the 0-255 scale (``round(x * 255)``) plus a secret per-deployment salt image
of integers 0..255 (mod 256), quantized with ``floor(v / step)`` (step 50), flattened (C*H*W values); a window of
``window`` values slides over it with stride ``stride``; each window's quantized values (one byte each) are hashed
with SHA-256 (windows of a flat background left out unless ``skip_flat`` is off: see
:class:`~rfd.defenses.detector_spec.DetectorSpec`), the digests are deduplicated and the ``top`` (50) smallest in
byte order are kept. A query is flagged when at least ``match`` (25) of its hashes equal hashes of one past query
of the account. Attack queries differ from their predecessors in a few pixels, so most windows, and so most kept
hashes, repeat; distinct images share almost none. The salt keeps an attacker from predicting which windows
collide.

In memory a hash is the first 8 bytes of its digest read as a big-endian signed int64 (byte order of digests =
unsigned order of these integers): two different windows share them with probability 2^-64 per pair, far below any
rate measured here. An image with fewer than ``top`` distinct (informative) windows is padded with the sentinels
``-2^63 + k``, k = 0, 1, ... (a real hash lands in that range with probability ``top`` * 2^-64); sentinels are
never indexed, so they never match.

Fingerprinting a batch: all windows are cut out at once (numpy), each window's values are packed exactly into
uint64 words (base ``255 // step + 1``, the number of quantized values), the windows are deduplicated across the whole batch with one sort, and
only the distinct windows are hashed (hashlib has no batched form; this loop is the one left). Near-duplicate
queries (an attack's batch, an EOT query's repeats) share most windows, so their batches hash 4-6 times faster
than batches of distinct images (``benchmarks/bench_detectors.py``).

The index, per account: hash -> the (increasing) ids of the past queries holding it: one int while a single query
holds it (most hashes of distinct images: an int costs a tenth of an array), a growable int64 numpy array once a
second one does (no Python lists: see :class:`_Account` on the garbage collector). A posting costs ~95 bytes while
its hash has one query (the dict entry and two ints), 8 bytes per further query: ~4.9 kB per past query of distinct
images, far less for an attack's near-duplicates. Matching a query touches only the postings of its ``top`` hashes
and counts them at once with ``np.bincount`` (or ``np.unique`` when they are sparse in the id range); the cost grows with how many past queries
share its hashes (an attack's near-duplicates), not with the history size. ``cap`` bounds the history: the oldest
queries are evicted (their postings are skipped, as a prefix, since ids increase) and the index is compacted when
the dead queries reach the live ones, so memory stays proportional to ``cap``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable

import numpy as np
import torch

from rfd.data.checks import check_images
from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect.base import Detector

__all__ = ["BlacklightDetector", "blacklight_fingerprints"]

PAD = -(2**63)  # padding hashes are PAD + k, k < top (never indexed: see _Account._insert)
_NONE = np.uint64(2**64 - 1)  # an empty slot while selecting the smallest digests (sorts last; a real digest
# starting with 8 bytes 0xff, probability 2^-64, would be taken for one and left out)
_DIGEST = np.dtype([("key", ">u8"), ("rest", "V24")])  # a SHA-256 digest: its first 8 bytes, big-endian


def _distinct(words: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the columns ``words`` (each (N,) uint64): (index of one occurrence of each distinct row
    (U,), the distinct row of each row (N,) in 0..U-1). One sort, instead of np.unique's stable one."""
    if len(words) == 1:
        order = np.argsort(words[0])
        s = words[0][order]
        new = np.empty(s.size, dtype=bool)
        new[:1] = True
        np.not_equal(s[1:], s[:-1], out=new[1:])
    else:
        order = np.lexsort(words[::-1])
        new = np.zeros(order.size, dtype=bool)
        new[:1] = True
        for w in words:
            s = w[order]
            new[1:] |= s[1:] != s[:-1]
    group = np.cumsum(new) - 1
    inverse = np.empty_like(group)
    inverse[order] = group
    return order[new], inverse


def blacklight_fingerprints(x: torch.Tensor, salt: torch.Tensor, *, window: int, stride: int, step: int,
                            top: int, skip_flat: bool = False) -> torch.Tensor:
    """Fingerprints int64 (B, top) of images x (B, C, H, W) in [0, 1] with ``salt`` (C, H, W) int64 in 0..255.

    Row b: the ``top`` smallest distinct SHA-256 hashes (first 8 bytes, as big-endian int64, in byte order) of
    the windows (``window`` values, stride ``stride``) of image b's flattened salted quantized values, padded with
    ``PAD + k`` when there are fewer. ``skip_flat`` leaves out windows whose raw (unsalted) 0-255 pixels are all
    equal."""
    raw = torch.round(x.detach().float() * 255).to(torch.int64)
    q = (((raw + salt.to(raw.device)) % 256) // step).flatten(1).to(torch.uint8).cpu().numpy()
    b, d = q.shape
    if window > d:
        raise ValueError(f"Blacklight window {window} is wider than the image ({d} values)")
    starts = np.arange(0, d - window + 1, stride)
    nw = starts.size
    if skip_flat:
        # a window is flat when no two neighbouring raw values inside it differ: count the changes with a
        # cumulative sum (O(d) per image, not O(d * window))
        r = raw.flatten(1).cpu().numpy()
        changes = np.zeros((b, d), dtype=np.int32)
        np.cumsum(r[:, 1:] != r[:, :-1], axis=1, out=changes[:, 1:])
        rows, cols = np.nonzero(changes[:, starts + window - 1] - changes[:, starts] > 0)
    else:
        rows = np.repeat(np.arange(b), nw)
        cols = np.tile(np.arange(nw), b)
    # pack each window's values exactly into uint64 words (base `levels`, Horner over the window's positions):
    # equal windows <=> equal words, so the windows of the whole batch are deduplicated with one integer sort
    levels = 255 // step + 1
    per_word = int(64 // math.log2(levels)) if levels > 1 else window
    span = stride * (nw - 1) + 1
    words = []
    for s0 in range(0, window, per_word):
        acc = np.zeros((b, nw), dtype=np.uint64)
        for j in range(s0, min(window, s0 + per_word)):
            acc *= np.uint64(levels)
            acc += q[:, j: j + span: stride]
        words.append(acc[rows, cols])
    full = np.full((b, max(nw, top)), _NONE, dtype=np.uint64)
    if rows.size:
        first, inverse = _distinct(words)
        buf = q.tobytes()
        sha = hashlib.sha256
        offsets = (rows[first] * d + starts[cols[first]]).tolist()
        digests = b"".join([sha(buf[o: o + window]).digest() for o in offsets])  # SHA-256 per distinct window
        keys = np.frombuffer(digests, dtype=_DIGEST)["key"].astype(np.uint64)
        full[rows, cols] = keys[inverse]
    # per image: sort, blank repeated digests, sort again: the first `top` are the smallest distinct ones
    full.sort(axis=1)
    full[:, 1:][full[:, 1:] == full[:, :-1]] = _NONE
    full.sort(axis=1)
    sel = full[:, :top]
    out = sel.view(np.int64).copy()
    pad = sel == _NONE
    if pad.any():
        out[pad] = PAD + (np.cumsum(pad, axis=1) - 1)[pad]
    return torch.from_numpy(out)


class _Account:
    """One account's history: the inverted index hash -> ids of the past queries holding it.

    Query ids increase from 0; the live queries are ids ``first .. next - 1``. A posting is an int (one query) or
    an int64 array ``p`` with ``p[0]`` the number of ids held and ``p[1 : 1 + p[0]]`` the ids, increasing (spare
    room after them; it doubles when full). Neither an int nor a numpy array is tracked by Python's cyclic
    garbage collector, so neither is the index dict: with a list per posting the collector would walk the whole
    index (10^7 entries and more) at every full collection, which made matching 20 times slower at 10^5-10^6
    queries."""

    def __init__(self, top: int, cap: int | None) -> None:
        self.top = top
        self.cap = cap
        self.first = 0  # id of the oldest live query
        self.next = 0  # id of the next query
        self.index: dict[int, int | np.ndarray] = {}
        self.dead = 0  # evicted queries whose postings may remain

    def __len__(self) -> int:
        return self.next - self.first

    def score(self, fp: np.ndarray) -> int:
        """Most hashes of ``fp`` (top,) shared with one live past query."""
        parts = []
        single = []
        for h in fp.tolist():
            post = self.index.get(h)
            if post is None:
                continue
            if isinstance(post, int):
                single.append(post)
            else:
                parts.append(post[1: 1 + post[0]])
        if single:
            parts.append(np.array(single, dtype=np.int64))
        if not parts:
            return 0
        # every live past query holding c of the hashes appears c times: the score is the largest count
        cat = np.concatenate(parts) - self.first
        if self.dead:
            cat = cat[cat >= 0]  # postings of evicted queries
        if cat.size == 0:
            return 0
        if cat.size * 4 >= len(self):  # dense in the live range (near-duplicates): one counter per live query
            return int(np.bincount(cat).max())
        return int(np.unique(cat, return_counts=True)[1].max())

    def add(self, fp: np.ndarray) -> None:
        self._insert(fp)
        if self.cap is not None and len(self) > self.cap:
            self.first += 1
            self.dead += 1
            if self.dead >= max(len(self), 64):  # as many dead queries as live: compact (bounded memory)
                self._compact()

    def _insert(self, fp: np.ndarray) -> None:
        qid = self.next
        pad_end = PAD + self.top
        index = self.index
        for h in set(fp.tolist()):
            if h < pad_end:  # padding of an image with fewer distinct windows than top
                continue
            post = index.get(h)
            if post is None:
                index[h] = qid
            elif isinstance(post, int):
                index[h] = np.array([2, post, qid, 0], dtype=np.int64)
            else:
                used = int(post[0])
                if used + 1 == post.size:  # full: double (amortized O(1) per id)
                    post = index[h] = np.concatenate([post, np.empty(post.size, dtype=np.int64)])
                post[used + 1] = qid
                post[0] = used + 1
        self.next += 1

    def _compact(self) -> None:
        """Drop the postings of evicted queries (ids < first): each posting keeps its suffix of live ids."""
        first = self.first
        index: dict[int, int | np.ndarray] = {}
        for h, post in self.index.items():
            if isinstance(post, int):
                if post >= first:
                    index[h] = post
                continue
            ids = post[1: 1 + post[0]]
            live = ids[int(np.searchsorted(ids, first)):]
            if live.size == 1:
                index[h] = int(live[0])
            elif live.size > 1:
                index[h] = np.concatenate([[live.size], live, [0]])
        self.index = index
        self.dead = 0

    def entries(self) -> int:
        return sum(1 if isinstance(p, int) else int(p[0]) for p in self.index.values())


class BlacklightDetector(Detector):
    """Blacklight with a secret salt drawn from ``salt_seed`` (see the module docstring).

    Signatures are the fingerprints, int64 (B, top). :meth:`info` gives the spec, never the salt or its seed.

    Args:
        spec: a :class:`~rfd.defenses.detector_spec.DetectorSpec` of kind ``"blacklight"``.
        salt_seed: the deployment's secret: the seed of the salt image (integers 0..255, one per pixel value, drawn
            from a ``torch.Generator``). Keep it secret; a different seed gives different fingerprints of the same
            image, so histories are only comparable under one seed.
    """

    def __init__(self, spec: DetectorSpec, *, salt_seed: int) -> None:
        if spec.kind != "blacklight":
            raise ValueError(f"BlacklightDetector needs a blacklight spec, got {spec.kind!r}")
        super().__init__(spec)
        self._salt_seed = int(salt_seed)
        self._salt: torch.Tensor | None = None
        self._accounts: dict[Hashable, _Account] = {}

    def __repr__(self) -> str:  # not the dataclass-like default: it must not show the salt
        return f"BlacklightDetector({self.spec})"

    def _salt_for(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The salt (C, H, W) int64 in 0..255 for images of ``shape`` (drawn once per shape from the seed)."""
        if self._salt is None or tuple(self._salt.shape) != shape:
            g = torch.Generator().manual_seed(self._salt_seed)
            self._salt = torch.randint(0, 256, shape, generator=g, dtype=torch.int64)
        return self._salt

    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        """Fingerprints int64 (B, top) on the CPU of images x (B, C, H, W) float32 in [0, 1]."""
        check_images(x)
        s = self.spec
        return blacklight_fingerprints(x, self._salt_for(tuple(x.shape[1:])), window=s.window, stride=s.stride,
                                       step=s.step, top=s.top, skip_flat=s.skip_flat)

    def _rows(self, sig: torch.Tensor) -> np.ndarray:
        if sig.dim() != 2 or sig.shape[1] != self.spec.top or sig.dtype != torch.int64:
            raise ValueError(f"Blacklight signatures are int64 (N, top={self.spec.top}), got {sig.dtype} "
                             f"{tuple(sig.shape)}")
        return sig.cpu().numpy()

    def _account(self, account: Hashable) -> _Account:
        acc = self._accounts.get(account)
        if acc is None:
            acc = self._accounts[account] = _Account(self.spec.top, self.spec.cap)
        return acc

    def _observe_account(self, account: Hashable, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fps = self._rows(sig)
        acc = self._account(account)
        scores = np.empty(fps.shape[0], dtype=np.float64)
        for i, fp in enumerate(fps):  # in order: row i is compared with the rows before it
            scores[i] = acc.score(fp)
            acc.add(fp)
        sc = torch.from_numpy(scores)
        return sc >= self.spec.match, sc

    def restore(self, account: Hashable, sig: torch.Tensor) -> None:
        fps = self._rows(sig)
        acc = self._account(account)
        for fp in fps:
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
        """Postings held in all accounts' indexes, dead ones included (a memory measure: roughly 90 bytes each
        while a hash has one query, 8 bytes each in the arrays of shared hashes)."""
        return sum(a.entries() for a in self._accounts.values())
