"""Where the server's time goes: per-stage wall-clock seconds and counts, kept by the service for the operator.

The stages of one predict request, in order (each timed where it runs):

* ``decode``: body -> checked image tensor (:func:`rfd.serve.decode.decode_images`), in a worker thread;
* ``admission``: key ban, budget and rate checks (and, with batching, the reservation), under the state lock;
* ``queue``: from admission to the start of the request's forward step (batching: the wait for company and for
  the batch before it; without batching: 0, the request runs at once under the model lock);
* ``detector``: the stateful detector's signatures and history checks, per forward step;
* ``forward``: the defended model's forward, per forward step (one coalesced forward with batching);
* ``log``: the SQLite transaction that commits the step's log rows (and detector state);
* ``encode``: building the JSON answer (output setting, refused rows) and rendering it to bytes.

Decode, admission, queue and encode are per request; detector, forward and log per forward step, which serves
one request without batching and several with it (``rows`` / ``forwards`` is the mean coalesced batch size).
HTTP parsing and the event loop's own work are not a stage: they are what the client's latency holds beyond
these. ``process_cpu_s`` (all threads of the server process) lets a benchmark see how busy the server was, and
the forward's ``cpu_seconds`` (its thread's CPU time) against its wall seconds how long the forward thread waited
for the CPU or for Python's GIL, which it needs between torch ops.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["STAGES", "StageStats"]

STAGES = ("decode", "admission", "queue", "detector", "forward", "log", "encode")


class StageStats:
    """Thread-safe running totals: seconds and count per stage, forwards and rows forwarded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(STAGES, 0.0)
        self._cpu = dict.fromkeys(STAGES, 0.0)
        self._counts = dict.fromkeys(STAGES, 0)
        self._forwards = 0
        self._rows = 0  # images forwarded to the model (refused ones are not)
        self._requests = 0  # requests answered (200)
        self._started = time.monotonic()

    def add(self, stage: str, seconds: float, count: int = 1, cpu: float = 0.0) -> None:
        """Add ``seconds`` (wall clock) spent in ``stage`` by ``count`` requests or steps, and the ``cpu`` seconds
        its thread ran meanwhile (time.thread_time; measured for the forward only)."""
        with self._lock:
            self._seconds[stage] += seconds
            self._cpu[stage] += cpu
            self._counts[stage] += count

    def forward_done(self, rows: int, requests: int) -> None:
        """One forward step done: ``rows`` images forwarded, ``requests`` requests answered by it."""
        with self._lock:
            self._forwards += 1
            self._rows += rows
            self._requests += requests

    def snapshot(self) -> dict[str, Any]:
        """Totals since start: ``uptime_s``, ``process_cpu_s``, ``requests``, ``forwards``, ``rows``,
        ``mean_rows_per_forward`` and ``stages`` {name: {seconds, cpu_seconds, count}}; differences of two snapshots time a
        window."""
        with self._lock:
            return {
                "uptime_s": time.monotonic() - self._started, "process_cpu_s": time.process_time(),
                "requests": self._requests, "forwards": self._forwards, "rows": self._rows,
                "mean_rows_per_forward": self._rows / self._forwards if self._forwards else 0.0,
                "stages": {s: {"seconds": self._seconds[s], "cpu_seconds": self._cpu[s], "count": self._counts[s]}
                           for s in STAGES},
            }
