"""Progress bars of a run (tqdm on stderr, with ETA): one for all images of the run, and, when chunks finish
in task order (the local executor), one for the cell being computed; otherwise the overall bar names the cell
of the last finished chunk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType

from tqdm.auto import tqdm

from rfd.eval.plan import PlannedCell, cell_label
from rfd.eval.specs import Study
from rfd.eval.worker import ChunkTask

__all__ = ["ChunkProgress"]


class ChunkProgress:
    """Bars over the chunk ``tasks`` of a run; a context manager (bars closed on exit).

    Args:
        cells: planned cell by cell index (for the bars' labels).
        done: images already stored per cell index (a cell bar starts there).
        ordered: chunks finish in task order, so a cell bar can lead.
        enabled: False: no bars (the overall bar is created disabled).
    """

    def __init__(self, study: Study, tasks: Sequence[ChunkTask], *, cells: Mapping[int, PlannedCell],
                 done: Mapping[int, int], ordered: bool, enabled: bool) -> None:
        self.study = study
        self.tasks = tasks
        self.cells = cells
        self.done = dict(done)
        self.ordered = ordered
        self.enabled = enabled
        total = sum(study.chunk_bounds(t.chunk)[1] - study.chunk_bounds(t.chunk)[0] for t in tasks)
        self.overall = tqdm(total=total, desc=f"{study.name}", unit="img", disable=not enabled, position=0,
                            dynamic_ncols=True)
        self.cell_bar: tqdm | None = None
        self.bar_cell = -1

    def __enter__(self) -> ChunkProgress:  # noqa: PYI034 - final in practice; Self needs Python 3.11
        try:
            if self.ordered and self.tasks:
                self._open_cell_bar(self.tasks[0].cell_index)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _open_cell_bar(self, ci: int) -> None:
        if not self.enabled or ci == self.bar_cell:
            return
        if self.cell_bar is not None:
            self.cell_bar.close()
        self.bar_cell = ci
        self.cell_bar = tqdm(total=self.study.n, initial=self.done[ci], desc=cell_label(self.cells[ci])[:70],
                             unit="img", position=1, leave=False, dynamic_ncols=True)

    def chunk_done(self, i: int, task: ChunkTask, n: int) -> None:
        """The ``i``-th finished chunk (``task``, ``n`` images) is stored."""
        self.done[task.cell_index] += n
        self.overall.update(n)
        if not self.enabled:
            return
        if self.ordered:
            if self.cell_bar is not None:
                self.cell_bar.update(n)
            if i + 1 < len(self.tasks):
                self._open_cell_bar(self.tasks[i + 1].cell_index)
        else:
            self.overall.set_postfix_str(f"last: {cell_label(self.cells[task.cell_index])[:50]}", refresh=False)

    def close(self) -> None:
        if self.cell_bar is not None:
            self.cell_bar.close()
        self.overall.close()
