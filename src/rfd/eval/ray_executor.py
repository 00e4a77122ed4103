"""Run a study's work units as Ray tasks (optional extra: ``pip install 'rfd[ray]'``).

The driver plans, calibrates and writes the store; workers only compute. Each task is small (the study
settings, a cell index, a chunk number, sigma): workers rebuild the images and models themselves and keep
them cached between tasks, so the dataset and checkpoint files must exist on every worker (the bundled set
always does). Results come back as plain rows and are written by the driver in one transaction per chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from rfd.eval.worker import (
    CalibrationTask,
    ChunkOutput,
    ChunkTask,
    execute_calibration,
    execute_chunk,
    set_threads,
)

__all__ = ["RayExecutor"]

log = logging.getLogger(__name__)


def _chunk_job(task: ChunkTask, threads: int | None) -> ChunkOutput:
    set_threads(threads)
    return execute_chunk(task)


def _calibration_job(task: CalibrationTask, threads: int | None) -> dict[str, Any]:
    set_threads(threads)
    return execute_calibration(task)


class RayExecutor:
    """Submit work units to a Ray cluster (``address``) or a local Ray instance started here.

    Args:
        address: Ray cluster address (``"auto"``, ``"ray://host:10001"``, ...); None starts a local instance
            unless Ray is already initialized in this process (then that one is used).
        num_cpus, num_gpus: resources per task (``num_gpus=1`` with ``--device cuda``).
        threads: torch threads inside each task (results are bit-identical to a local run at the same count).
        max_in_flight: tasks submitted ahead of their results (bounds memory); default 4 x cluster CPUs.
        init_options: extra keyword arguments of ``ray.init`` when this executor starts Ray.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 threads: int | None = None, max_in_flight: int | None = None,
                 init_options: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError("the Ray executor needs Ray: pip install 'rfd[ray]' (or pip install ray)") from exc
        self.ray = ray
        self._owns = False
        if not ray.is_initialized():
            ray.init(address=address, **(init_options or {}))
            self._owns = True
        elif address is not None:
            log.info("Ray is already initialized in this process; ignoring address %s", address)
        self.threads = threads
        # no retries: a failed chunk should fail the run loudly, not be recomputed silently
        self._chunk = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_chunk_job)
        self._calibration = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_calibration_job)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_in_flight = max_in_flight or max(4, 4 * cpus)

    def _stream(self, remote: Any, tasks: list[Any]) -> Iterator[tuple[Any, Any]]:
        ray = self.ray
        queue = list(reversed(tasks))
        in_flight: dict[Any, Any] = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < self.max_in_flight:
                    t = queue.pop()
                    in_flight[remote.remote(t, self.threads)] = t
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    t = in_flight.pop(ref)
                    yield t, ray.get(ref)
        finally:
            for ref in in_flight:  # stopped early (error, interrupt): do not leave work running
                ray.cancel(ref, force=True)

    def calibrations(self, tasks: list[CalibrationTask]) -> Iterator[tuple[CalibrationTask, dict[str, Any]]]:
        yield from self._stream(self._calibration, tasks)

    def chunks(self, tasks: list[ChunkTask]) -> Iterator[tuple[ChunkTask, ChunkOutput]]:
        yield from self._stream(self._chunk, tasks)

    def close(self) -> None:
        if self._owns:
            self.ray.shutdown()
            self._owns = False
