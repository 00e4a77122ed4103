"""Executors: where a run's calibrations and chunks are computed. Every executor takes task descriptions and
yields (task, result) pairs as they finish; the driver alone writes the store.

* :class:`LocalExecutor`: one after another in this process (the default);
* :class:`ProcessExecutor`: in local worker processes;
* :class:`~rfd.eval.ray_executor.RayExecutor`: as Ray tasks (optional extra).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from rfd.eval.worker import (
    CalibrationTask,
    ChunkOutput,
    ChunkTask,
    WorkerContext,
    execute_calibration,
    execute_chunk,
)

__all__ = ["Executor", "LocalExecutor", "ProcessExecutor", "make_executor"]


class Executor(Protocol):
    """What the runner needs of an executor. ``name`` is ``"local"`` only when chunks finish in task order."""

    name: str

    def calibrations(self, tasks: list[CalibrationTask]) -> Iterator[tuple[CalibrationTask, dict[str, Any]]]:
        """Each calibration task with its record (``sigma``, accuracies, ...), in the order they finish."""
        ...

    def chunks(self, tasks: list[ChunkTask]) -> Iterator[tuple[ChunkTask, ChunkOutput]]:
        """Each chunk task with its output, in the order they finish."""
        ...

    def close(self) -> None:
        """Release workers (and a Ray instance this executor started)."""
        ...


class LocalExecutor:
    """Runs tasks one after another in this process (the default; no extra service)."""

    name = "local"

    def __init__(self, *, progress: bool = False) -> None:
        self.ctx = WorkerContext()
        self.progress = progress

    def calibrations(self, tasks: list[CalibrationTask]) -> Iterator[tuple[CalibrationTask, dict[str, Any]]]:
        for t in tasks:
            yield t, execute_calibration(t, self.ctx, progress=self.progress)

    def chunks(self, tasks: list[ChunkTask]) -> Iterator[tuple[ChunkTask, ChunkOutput]]:
        for t in tasks:
            yield t, execute_chunk(t, self.ctx, progress=self.progress)

    def close(self) -> None:
        self.ctx = WorkerContext()


def _pool_chunk(task: ChunkTask) -> ChunkOutput:
    return execute_chunk(task)


def _pool_calibration(task: CalibrationTask) -> dict[str, Any]:
    return execute_calibration(task)


class ProcessExecutor:
    """Runs tasks in ``workers`` local processes (spawned, ``threads`` torch threads each): on a multi-core CPU,
    several single-threaded workers beat one multi-threaded process for small models and shrinking attack
    batches. Results equal a local run at the same thread count. No extra service needed."""

    name = "processes"

    def __init__(self, *, workers: int, threads: int = 1) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from rfd.eval.worker import set_threads

        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be >= 1, got {workers}, {threads}")
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=set_threads, initargs=(threads,))

    def _stream(self, fn: Callable[[Any], Any], tasks: list[Any]) -> Iterator[tuple[Any, Any]]:
        from concurrent.futures import as_completed

        futures = {self.pool.submit(fn, t): t for t in tasks}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        finally:
            for f in futures:
                f.cancel()

    def calibrations(self, tasks: list[CalibrationTask]) -> Iterator[tuple[CalibrationTask, dict[str, Any]]]:
        yield from self._stream(_pool_calibration, tasks)

    def chunks(self, tasks: list[ChunkTask]) -> Iterator[tuple[ChunkTask, ChunkOutput]]:
        yield from self._stream(_pool_chunk, tasks)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_executor(name: str, *, progress: bool, address: str | None = None, workers: int = 1,
                  **options: Any) -> Executor:
    """The executor called ``name``: ``"local"`` (this process, or ``workers`` > 1 local processes; ``options``
    e.g. ``threads``) or ``"ray"`` (``address`` of a cluster; ``options`` as :class:`RayExecutor` takes)."""
    if name == "local":
        if address is not None:
            raise ValueError("--address applies to --executor ray only")
        if workers > 1:
            return ProcessExecutor(workers=workers, **options)
        return LocalExecutor(progress=progress)
    if name == "ray":
        from rfd.eval.ray_executor import RayExecutor

        return RayExecutor(address=address, **options)
    raise ValueError(f"unknown executor {name!r} (allowed: local, ray)")
