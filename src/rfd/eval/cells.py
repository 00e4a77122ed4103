"""Cells: a study expanded into runs, one per (model, defense, attack setting), in a fixed order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rfd.data.source import DataSpec
from rfd.defenses.spec import DefenseSpec
from rfd.eval.specs import SEEDING, AttackSpec, ModelSpec, Study

__all__ = ["Cell", "expand_cells"]


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One run: a model, a defense setting and an attack setting, plus the study-wide settings that change
    its outcome. ``key()`` identifies the run in the results store (resume, shards and merge match on it)."""

    index: int  # position in the study's expansion (stable order)
    model: ModelSpec
    defense: DefenseSpec
    attack: AttackSpec
    n: int
    seed: int
    chunk_size: int
    data: DataSpec

    def identity(self, model_id: Mapping[str, Any], data_id: Mapping[str, Any]) -> dict[str, Any]:
        """Everything the outcome depends on, with the model and data given by content ids (weights hash,
        dataset identity), so the same run on another machine or path gets the same key."""
        return {"model": dict(model_id), "defense": self.defense.to_dict(),
                "attack": {k: v for k, v in self.attack.to_dict().items() if k != "label"},
                "n": self.n, "seed": self.seed, "chunk_size": self.chunk_size, "data": dict(data_id),
                "seeding": SEEDING}


def expand_cells(study: Study) -> list[Cell]:
    """All cells of ``study`` in a fixed order (model, then defense, then attack)."""
    cells: list[Cell] = []
    for m in study.models:
        for d in study.defenses:
            for a in study.attacks:
                cells.append(Cell(index=len(cells), model=m, defense=d, attack=a, n=study.n, seed=study.seed,
                                  chunk_size=study.chunk_size, data=study.data))
    return cells
