"""Model-set randomization (a DISCO-style baseline): every query is answered by one member of a set of models of
the same task, drawn uniformly at random per image from a seeded generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ModelSet"]

_STREAM = 0x6D53  # offsets the member draws from a defense's noise stream that shares the same seed


class ModelSet(nn.Module):
    """Members (M classifiers of [0, 1] images to K logits, same input shape and classes) answering at random.

    Args:
        members: the models; ``members.i`` in ``named_modules()``.
        seed: seed of the member draws (:meth:`manual_seed` restarts them).

    ``forward(x)`` (N, C, H, W) -> (N, K): row ``i`` is answered by member ``choice[i] ~ U{0..M-1}``, one draw per
    row and forward, each member forwarding only its rows. ``heads`` names every member's final classifier layer,
    so feature noise at ``"penultimate"`` noises whichever member answers.
    """

    def __init__(self, members: Sequence[nn.Module], *, seed: int = 0) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a model set needs at least 2 members, got {len(members)}")
        shapes = {tuple(getattr(m, "input_shape", ())) for m in members}
        classes = {int(getattr(m, "num_classes", 0)) for m in members}
        if len(shapes) != 1 or len(classes) != 1 or 0 in classes:
            raise ValueError(f"model set members must share input_shape and num_classes, got shapes {sorted(shapes)} "
                             f"and classes {sorted(classes)}")
        self.members = nn.ModuleList(members)
        self.input_shape = shapes.pop()
        self.num_classes = classes.pop()
        self.heads = tuple(f"members.{i}.{m.head}" for i, m in enumerate(members) if isinstance(getattr(m, "head", None), str))
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def manual_seed(self, seed: int | None = None) -> ModelSet:
        """Restart the member draws from ``seed`` (default: the current seed); returns self."""
        if seed is not None:
            self.seed = int(seed)
        self._generators.clear()
        return self

    def draw(self, n: int, device: torch.device) -> torch.Tensor:
        """int64 (n,): the members answering the next n rows (advances the stream)."""
        key = str(device)
        g = self._generators.get(key)
        if g is None:
            g = self._generators[key] = torch.Generator(device=device).manual_seed(self.seed ^ _STREAM)
        return torch.randint(len(self.members), (n,), generator=g, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.draw(x.shape[0], x.device)
        out: torch.Tensor | None = None
        for i, member in enumerate(self.members):
            rows = torch.nonzero(choice == i).flatten()
            if rows.numel() == 0:
                continue
            z = member(x[rows])
            if out is None:
                out = z.new_empty((x.shape[0], z.shape[1]))
            out[rows] = z
        assert out is not None
        return out
