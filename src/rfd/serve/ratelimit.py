"""Sliding-window rate limits in images per window, per client.

A limit of L images per W seconds means: in any W-second window, at most L images are answered. Unlike a
token bucket (which lets 2L through across a window boundary) this is exact, and the time to wait is known
exactly: until enough of the oldest answered requests leave the window.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["WINDOWS", "RateDecision", "RateLimiter", "SlidingWindow"]

WINDOWS: dict[str, float] = {"per_second": 1.0, "per_minute": 60.0}


class SlidingWindow:
    """Images answered in the last ``seconds`` seconds, for one client and one limit."""

    def __init__(self, limit: int, seconds: float) -> None:
        if limit < 1 or seconds <= 0:
            raise ValueError(f"a rate limit needs limit >= 1 and seconds > 0, got {limit} per {seconds}s")
        self.limit = limit
        self.seconds = seconds
        self._events: deque[tuple[float, int]] = deque()  # (time, images), oldest first
        self._total = 0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.seconds:
            self._total -= self._events.popleft()[1]

    def wait(self, n: int, now: float) -> float:
        """Seconds until ``n`` more images fit in the window (0.0: they fit now; inf: they never fit)."""
        if n > self.limit:
            return math.inf
        self._expire(now)
        excess = self._total + n - self.limit
        if excess <= 0:
            return 0.0
        freed = 0
        for t, k in self._events:  # the oldest requests leave the window first
            freed += k
            if freed >= excess:
                return max(t + self.seconds - now, 0.0)
        return math.inf  # unreachable: the events hold _total >= excess images

    def add(self, n: int, now: float) -> None:
        self._events.append((now, n))
        self._total += n

    def remove(self, n: int, at: float) -> None:
        """Take back ``n`` images added at time ``at`` (a reservation that was not answered); nothing if that
        event has left the window already."""
        try:
            self._events.remove((at, n))
        except ValueError:
            return
        self._total -= n


@dataclass(frozen=True)
class RateDecision:
    """Outcome of :meth:`RateLimiter.check`: ``wait`` seconds (0: allowed now; inf: the batch never fits),
    and which limit decided (window name and its images per window)."""

    wait: float
    window: str | None = None
    limit: int | None = None


class RateLimiter:
    """Per-client sliding windows. Not thread-safe: the caller holds its lock around check + add."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], SlidingWindow] = {}

    def _get(self, client: str, window: str, limit: int) -> SlidingWindow:
        w = self._windows.get((client, window))
        if w is None or w.limit != limit:
            w = self._windows[(client, window)] = SlidingWindow(limit, WINDOWS[window])
        return w

    def check(self, client: str, limits: dict[str, int | None], n: int, now: float) -> RateDecision:
        """May ``client`` have ``n`` images answered at time ``now`` under ``limits`` ({window: images})?"""
        worst = RateDecision(0.0)
        for window, limit in limits.items():
            if limit is None:
                continue
            wait = self._get(client, window, limit).wait(n, now)
            if wait > worst.wait:
                worst = RateDecision(wait, window, limit)
        return worst

    def add(self, client: str, limits: dict[str, int | None], n: int, now: float) -> None:
        """Record ``n`` images answered (or reserved) for ``client`` at ``now``."""
        for window, limit in limits.items():
            if limit is not None:
                self._get(client, window, limit).add(n, now)

    def remove(self, client: str, limits: dict[str, int | None], n: int, at: float) -> None:
        """Take back ``n`` images recorded for ``client`` at ``at`` (see :meth:`SlidingWindow.remove`)."""
        for window, limit in limits.items():
            if limit is not None:
                self._get(client, window, limit).remove(n, at)
