"""Per-sample random streams: every image of an attack draws from its own stream, so its draws do not depend on
which other images are still being attacked.

Why: a batched attack that draws ``torch.rand((B, ...), generator=gen)`` for its B *active* images hands image
i a different draw as soon as another image finishes earlier or later, e.g. under another defense. With a stream
per image, the t-th draw of image i is a function of (attack seed, i, t) only: two defenses of a study meet the
same attack randomness on the same image until their answers differ (common random numbers, so comparisons
between defenses are paired), whatever happens to the other images.

The streams are counter based (SplitMix64 of seed, sample and counter, vectorized in int64 torch ops on the
attack's device): no Python loop over images, no numpy, and the same numbers on CPU and CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["RowDraws", "SampleStreams"]

# SplitMix64 constants as signed int64 (torch has no uint64 arithmetic; int64 products wrap modulo 2^64).
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB
_STREAM = 0x5851F42D4C957F2D  # odd multiplier separating the samples' streams
_PER_CALL = 1 << 23  # values per row and counter step (below the 24 bits the element index may use)
_CPU_BLOCK = 1 << 16  # random bits mixed per block on CPU (512 KiB of int64: cache-sized)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (``>>`` is arithmetic for negative values)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix_(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer of ``z`` (int64), in place, with one scratch tensor instead of eleven temporaries (an
    attack mixes millions of values per step: the allocations showed in its profile). Returns ``z``."""
    t = torch.empty_like(z)
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t)
        t.bitwise_and_((1 << (64 - shift)) - 1)  # logical, not arithmetic, shift
        z.bitwise_xor_(t)
        if mult is not None:
            z.mul_(mult)
    return z


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer of a copy of ``z``."""
    return _mix_(z.clone())


class SampleStreams:
    """One random stream per sample of an attack (``n`` samples, seeded by ``seed``).

    Each call of :meth:`rows` for rows ``idx`` advances those samples' counters by one; the values of a call are
    a function of (seed, sample, counter, element), so a sample's draws depend only on how many draws *it* made.
    """

    def __init__(self, n: int, seed: int, device: torch.device | str = "cpu") -> None:
        dev = torch.device(device)
        base = _mix(torch.tensor([seed], dtype=torch.int64) * _GOLDEN + 1)
        self._key = _mix(base + torch.arange(n, dtype=torch.int64) * _STREAM).to(dev)
        self._counter = torch.zeros(n, dtype=torch.int64, device=dev)
        self.device = dev

    def rows(self, idx: torch.Tensor) -> RowDraws:
        """Draws for samples ``idx`` (int64 (B,)); every method of the result is one draw of each row's stream."""
        return RowDraws(self, idx)

    def _draw(self, idx: torch.Tensor, n_bits: int, n_out: int,
              transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """float32 (B, n_out) = ``transform(bits)`` of each row's int64 (., n_bits) random bits, then advance the
        rows' counters (once per 2^23 values: the counter and the element index share one 64-bit input, 24 bits of
        it for the element).

        On CPU the rows go through in blocks of about 2^16 values: the bit mixing and the transform make a dozen
        passes over their tensors, and an NES step draws tens of millions of values at once, so block by block
        they stay in cache (4x faster in NES's draws). The values are the same either way: every operation is
        elementwise."""
        ctrs = []  # one counter per part of 2^23 values, as consecutive draws would use
        for _ in range(0, n_bits, _PER_CALL):
            ctrs.append(self._counter[idx])
            self._counter.index_add_(0, idx, torch.ones_like(idx))
        keys = self._key[idx]
        out = torch.empty(idx.shape[0], n_out, dtype=torch.float32, device=self.device)
        block = max(1, _CPU_BLOCK // n_bits) if self.device.type == "cpu" else max(1, idx.shape[0])
        for r in range(0, idx.shape[0], block):
            parts = [self._mixed(ctr[r: r + block], keys[r: r + block], min(_PER_CALL, n_bits - j * _PER_CALL))
                     for j, ctr in enumerate(ctrs)]
            out[r: r + block] = transform(parts[0] if len(parts) == 1 else torch.cat(parts, 1))
        return out

    def _mixed(self, ctr: torch.Tensor, key: torch.Tensor, per_row: int) -> torch.Tensor:
        """int64 (b, per_row) of 64 random bits for rows at counters ``ctr`` with keys ``key`` (b,): a distinct
        64-bit input per (sample, counter, element), counter and element packed in 40 + 24 bits."""
        elem = torch.arange(per_row, dtype=torch.int64, device=self.device)
        z = (ctr[:, None] * (1 << 24) + elem[None, :] + 1).mul_(_GOLDEN).add_(key[:, None])
        return _mix_(z)


def _unit_float(bits: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1) from the top 24 bits (exactly representable)."""
    return _shr(bits, 40).to(torch.float32) * (1.0 / (1 << 24))


def _box_muller(bits: torch.Tensor) -> torch.Tensor:
    """Standard normals (b, n) from bits (b, 2n): two uniforms in (0, 1) per value, in float64, then
    ``sqrt(-2 log u1) cos(2 pi u2)`` computed in place (the same operations, hence the same values)."""
    per = bits.shape[1] // 2
    u = _shr(bits, 11).double().add_(0.5).mul_(1.0 / (1 << 53))  # (0, 1), never 0
    u1, u2 = u[:, :per], u[:, per: 2 * per]
    return u1.log_().mul_(-2.0).sqrt_().mul_(u2.mul_(2 * math.pi).cos_())


class RowDraws:
    """Random tensors whose first dimension is the rows ``idx`` of a :class:`SampleStreams`."""

    def __init__(self, streams: SampleStreams, idx: torch.Tensor) -> None:
        if idx.dtype != torch.int64 or idx.dim() != 1:
            raise ValueError(f"idx must be int64 (B,), got {idx.dtype} {tuple(idx.shape)}")
        self.streams = streams
        self.idx = idx

    def _per_row(self, shape: tuple[int, ...]) -> int:
        """Values per row of a draw of ``shape``, which must start with the rows."""
        if not shape or shape[0] != self.idx.shape[0]:
            raise ValueError(f"draw shape {shape} must start with the {self.idx.shape[0]} rows")
        return math.prod(shape[1:])

    def _uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        per = self._per_row(shape)
        # one value per element (at least one draw per row, so an empty shape still advances the counters)
        return self.streams._draw(self.idx, max(per, 1), per, lambda bits: _unit_float(bits[:, :per])).view(shape)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) float32 of ``shape`` = (B, ...)."""
        return self._uniform(tuple(shape))

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Uniform integers in [low, high) (int64) of ``shape`` = (B, ...); high - low < 2^24."""
        if high <= low:
            raise ValueError(f"randint needs high > low, got [{low}, {high})")
        u = self._uniform(tuple(shape)).double()
        return (low + torch.floor(u * (high - low))).long().clamp_(max=high - 1)

    def signs(self, *shape: int) -> torch.Tensor:
        """-1.0 or +1.0 with probability 1/2 each, float32 of ``shape`` = (B, ...)."""
        return torch.where(self._uniform(tuple(shape)) < 0.5, -1.0, 1.0)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal float32 of ``shape`` = (B, ...) (Box-Muller on two uniforms of one draw)."""
        shape_t = tuple(shape)
        per = self._per_row(shape_t)
        n_bits = 2 * max(per, 1)
        return self.streams._draw(self.idx, n_bits, per, lambda bits: _box_muller(bits)[:, :per]).view(shape_t)

    def subset(self, rows: torch.Tensor) -> RowDraws:
        """Draws for a subset of these rows (``rows`` indexes into ``idx``: bool mask or int positions)."""
        return RowDraws(self.streams, self.idx[rows])


def draws_for(streams: SampleStreams, samples: torch.Tensor, shape: tuple[int, ...], kind: str = "randn"
              ) -> torch.Tensor:
    """One random tensor of ``shape`` per entry of ``samples`` (int64 (B,), sample numbers that may repeat), each
    from its sample's own stream: a sample that appears c times makes one draw of c tensors, so repeated samples
    get distinct values (a plain :meth:`SampleStreams.rows` call would give repeats the same ones).
    ``kind``: ``"randn"`` (standard normal) or ``"rand"`` (uniform [0, 1)). Returns float32 (B, *shape)."""
    if samples.numel() == 0:
        return torch.zeros(0, *shape, device=streams.device)
    order = torch.argsort(samples, stable=True)
    sorted_s = samples[order]
    uniq, counts = torch.unique_consecutive(sorted_s, return_counts=True)
    rows = RowDraws(streams, uniq)
    per = int(counts.max())
    fresh = rows.randn(uniq.numel(), per, *shape) if kind == "randn" else rows.rand(uniq.numel(), per, *shape)
    group = torch.repeat_interleave(torch.arange(uniq.numel(), device=samples.device), counts)
    slot = torch.arange(samples.numel(), device=samples.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    out = torch.empty(samples.numel(), *shape, device=fresh.device, dtype=fresh.dtype)
    out[order] = fresh[group, slot]
    return out
