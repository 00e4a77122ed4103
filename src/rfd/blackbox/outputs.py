"""What a model answers: the output settings real ML APIs use, one notion shared by every black box, the server
and the studies.

========== =================================================================================================
setting    answer per image
========== =================================================================================================
logits     all K logits
probs      all K softmax probabilities
topk:K     the K highest probabilities with their class indices; nothing about the other classes
top1       the predicted class and its probability
rounded:D  all K probabilities rounded to D decimals (e.g. 2)
labels     the predicted class only
========== =================================================================================================

Every setting also names the predicted class (argmax of the model's logits): an API that returns scores says
which class it predicts. In process, a score answer is a (B, K) tensor; classes a partial setting (``topk``,
``top1``) does not reveal are NaN, so an attack cannot read a hidden value by accident, and
:func:`rfd.blackbox.losses.visible_margin` computes the margin from what is visible. Over HTTP only the visible
values travel (see :meth:`OutputSpec.to_json` / :meth:`OutputSpec.from_json`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OUTPUT_KINDS", "OutputSpec", "parse_output"]

OUTPUT_KINDS: tuple[str, ...] = ("logits", "probs", "topk", "top1", "rounded", "labels")
_FORMS = "logits, probs, topk:K (K >= 1), top1, rounded:D (D >= 0 decimals), labels"
_RENAMED = {"scores": "logits", "label": "labels"}  # the server's names before output settings were shared


@dataclass(frozen=True, eq=False)
class OutputSpec:
    """One output setting. Build it with :func:`parse_output` (``"topk:5"``) or directly
    (``OutputSpec("topk", k=5)``); ``str(spec)`` gives the canonical text back.

    Attributes:
        kind: one of :data:`OUTPUT_KINDS`.
        k: the number of classes ``topk`` reveals (None otherwise).
        digits: the decimals ``rounded`` keeps (None otherwise).
    """

    kind: str
    k: int | None = None
    digits: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown output setting {self.kind!r}; allowed: {_FORMS}")
        if self.kind == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
                raise ValueError(f"output topk needs K >= 1 classes (topk:5), got {self.k!r}")
        elif self.k is not None:
            raise ValueError(f"output {self.kind} takes no K (only topk:K does), got k={self.k!r}")
        if self.kind == "rounded":
            if isinstance(self.digits, bool) or not isinstance(self.digits, int) or not 0 <= self.digits <= 8:
                raise ValueError(f"output rounded needs 0 to 8 decimals (rounded:2), got {self.digits!r}")
        elif self.digits is not None:
            raise ValueError(f"output {self.kind} takes no decimals (only rounded:D does), got {self.digits!r}")

    # A spec equals its canonical text (``spec == "topk:5"``) and hashes like it, so either can key a table.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, (OutputSpec, str)):
            return str(self) == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        if self.kind == "topk":
            return f"topk:{self.k}"
        if self.kind == "rounded":
            return f"rounded:{self.digits}"
        return self.kind

    # -- what the setting gives ---------------------------------------------------------------------------
    @property
    def scores(self) -> bool:
        """Whether the answer holds scores (every setting but ``labels``)."""
        return self.kind != "labels"

    @property
    def probabilities(self) -> bool:
        """Whether the scores are probabilities (softmax), not logits."""
        return self.kind not in ("logits", "labels")

    @property
    def partial(self) -> bool:
        """Whether some classes' scores are hidden (``topk``, ``top1``): hidden entries are NaN."""
        return self.kind in ("topk", "top1")

    def visible_classes(self, num_classes: int) -> int:
        """How many classes' scores one answer reveals."""
        if self.kind == "labels":
            return 0
        if self.kind == "top1":
            return 1
        if self.kind == "topk":
            assert self.k is not None
            return min(self.k, num_classes)
        return num_classes

    # -- answering ----------------------------------------------------------------------------------------
    def answer(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores (B, K) this setting shows for model logits (B, K): logits, probabilities, rounded
        probabilities, or probabilities with the hidden classes set to NaN. ``labels`` has no scores."""
        if self.kind == "labels":
            raise PermissionError("output 'labels' answers the predicted class only: there are no scores")
        if self.kind == "logits":
            return logits
        p = logits.float().softmax(1)
        if self.kind == "probs":
            return p
        if self.kind == "rounded":
            assert self.digits is not None
            return torch.round(p, decimals=self.digits)
        top = self._top(p)
        return torch.full_like(p, math.nan).scatter(1, top.indices, top.values)

    def _top(self, p: torch.Tensor) -> Any:
        """The visible classes of a partial setting: ``topk`` of probabilities (B, K), best first."""
        return p.topk(self.visible_classes(p.shape[1]), dim=1)

    def to_json(self, logits: torch.Tensor) -> dict[str, Any]:
        """The HTTP body fields for model logits (B, K): ``labels`` always; ``scores`` (B x K lists) for logits,
        probs and rounded; ``top`` (per image a list of [class, probability] pairs, best first) for topk and
        top1. Nothing else about the hidden classes is sent."""
        labels = logits.argmax(1).cpu().tolist()
        out: dict[str, Any] = {"labels": labels}
        if self.kind == "labels":
            return out
        if self.partial:
            top = self._top(logits.float().softmax(1))
            out["top"] = [[[int(c), float(v)] for c, v in zip(ci, vi)]
                          for ci, vi in zip(top.indices.cpu().tolist(), top.values.cpu().tolist())]
            return out
        out["scores"] = self.answer(logits).float().cpu().tolist()
        return out

    def from_json(self, body: dict[str, Any], num_classes: int) -> torch.Tensor:
        """Scores (B, K) float32 back from an HTTP body written by :meth:`to_json` (hidden classes NaN)."""
        if self.kind == "labels":
            raise PermissionError("output 'labels' answers the predicted class only: there are no scores")
        if self.partial:
            rows = body.get("top")
            if not isinstance(rows, list):
                raise ValueError(f"an answer of output {self} needs a 'top' list")
            out = torch.full((len(rows), num_classes), math.nan)
            for i, pairs in enumerate(rows):
                for c, v in pairs:
                    out[i, int(c)] = float(v)
            return out
        scores = body.get("scores")
        if not isinstance(scores, list):
            raise ValueError(f"an answer of output {self} needs a 'scores' list")
        nan_row = [math.nan] * num_classes  # a row a stateful server refused comes as null
        return torch.tensor([nan_row if r is None else r for r in scores], dtype=torch.float32).reshape(
            len(scores), num_classes)


def parse_output(text: str | OutputSpec) -> OutputSpec:
    """``"logits"``, ``"probs"``, ``"topk:5"``, ``"top1"``, ``"rounded:2"`` or ``"labels"`` as an
    :class:`OutputSpec` (an :class:`OutputSpec` is returned as is). Anything else raises ``ValueError`` naming
    the allowed forms."""
    if isinstance(text, OutputSpec):
        return text
    if not isinstance(text, str):
        raise ValueError(f"output must be text such as 'topk:5', got {type(text).__name__} {text!r}")
    t = text.strip().lower()
    if t in _RENAMED:
        raise ValueError(f"output {text!r} is now called {_RENAMED[t]!r}; allowed: {_FORMS}")
    m = re.fullmatch(r"(topk|rounded):(\d+)", t)
    if m:
        n = int(m.group(2))
        return OutputSpec("topk", k=n) if m.group(1) == "topk" else OutputSpec("rounded", digits=n)
    if t in ("topk", "rounded"):
        raise ValueError(f"output {text!r} needs a number: {'topk:K' if t == 'topk' else 'rounded:D'}; allowed: {_FORMS}")
    if t not in OUTPUT_KINDS:
        raise ValueError(f"unknown output setting {text!r}; allowed: {_FORMS}")
    return OutputSpec(t)
