"""Dynamic batching: one thread coalesces queued requests into forward steps.

Admitted requests are queued in arrival order. The batcher thread takes the oldest, then takes the following ones
while they fit in ``max_rows`` images, waiting for more until ``wait_s`` seconds after the *oldest one's arrival*
(a request that already waited through the previous step adds no new wait). A step closes early when the rows
reach ``max_rows`` or when the next queued request would not fit (it opens the next step); a request is never
split, so one larger than ``max_rows`` runs alone. Steps run one at a time, in queue order, on this thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Batcher", "Queued"]

logger = logging.getLogger(__name__)


class Queued(Protocol):
    """What the batcher needs of a queued item."""

    @property
    def n(self) -> int: ...  # images in the request

    @property
    def enqueued(self) -> float: ...  # time.perf_counter() seconds at admission

    @property
    def future(self) -> Future[Any]: ...  # answered by the step function


Q = TypeVar("Q", bound=Queued)


class Batcher(Generic[Q]):
    """Runs ``step(items)`` on a daemon thread for each coalesced group of queued items (see the module).

    ``step`` must answer every item's future; if it raises, the batcher fails the futures it left unanswered with
    that exception, so no caller waits forever. The thread starts with the first item; ``close()`` lets the
    queued items run, then ends it.
    """

    def __init__(self, step: Callable[[Sequence[Q]], None], *, wait_s: float, max_rows: int,
                 name: str = "rfd-batcher") -> None:
        if not wait_s >= 0 or wait_s == float("inf"):
            raise ValueError(f"wait_s must be finite and >= 0 seconds, got {wait_s}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 image, got {max_rows}")
        self.wait_s = wait_s
        self.max_rows = max_rows
        self._step = step
        self._queue: deque[Q] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._started = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)  # started by the first put

    def put(self, item: Q) -> None:
        """Queue ``item`` (admitted, with its future pending). Raises RuntimeError after ``close()``."""
        with self._cv:
            if self._closing:
                raise RuntimeError("the batcher is closed")
            if not self._started:
                self._thread.start()
                self._started = True
            self._queue.append(item)
            self._cv.notify()

    def close(self) -> None:
        """Run what is queued, then stop the thread (waits for it)."""
        with self._cv:
            self._closing = True
            self._cv.notify()
            started = self._started
        if started:
            self._thread.join()

    def _next(self) -> list[Q] | None:
        """The next step's items (None: closed and drained)."""
        with self._cv:
            while not self._queue and not self._closing:
                self._cv.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            items, rows = [first], first.n
            deadline = first.enqueued + self.wait_s
            while rows < self.max_rows:
                if self._queue:
                    if rows + self._queue[0].n > self.max_rows:
                        break  # it opens the next step: waiting longer cannot make this one larger
                    item = self._queue.popleft()
                    items.append(item)
                    rows += item.n
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or self._closing:
                    break
                self._cv.wait(left)
            return items

    def _loop(self) -> None:
        while (items := self._next()) is not None:
            try:
                self._step(items)
            except Exception as exc:  # handed to the callers instead of ending the thread
                logger.exception("a batched forward step failed")
                for it in items:
                    with contextlib.suppress(InvalidStateError):  # answered or cancelled meanwhile
                        it.future.set_exception(exc)
