"""The detector spec: which stateful (query-history) detector guards a deployment, and what it does on a flag.

One spec serves the Python API, YAML studies (``detector: blacklight`` in a defense entry), the CLI
(``--detector``), the server, the results store and table labels. It is pure configuration; the detectors
themselves live in :mod:`rfd.detect`. The canonical text form is ``KIND`` or ``KIND:key=value,...`` with the
settings that differ from the defaults, e.g. ``blacklight``, ``blacklight:window=20,stride=1``,
``knn:action=ban``; :func:`parse_detector` reads it (or a mapping) back.

========== ==============================================================================================
kind       flags a query when
========== ==============================================================================================
blacklight at least ``match`` of its ``top`` salted window hashes equal those of one past query of the
           account (Li et al., USENIX Security 2022)
knn        the mean l_2 distance of its embedding to the ``k`` nearest past queries of the account is below
           a threshold set from benign traffic (Chen, Carlini & Wagner, 2019)
========== ==============================================================================================

Actions: ``reject`` (no answer; the query is still charged and logged), ``ban`` (reject and end the account's
session: further queries are refused until the account is reset), ``log`` (answer, record the flag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DETECTOR_ACTIONS", "DETECTOR_KINDS", "DetectorSpec", "parse_detector"]

DETECTOR_KINDS: tuple[str, ...] = ("blacklight", "knn")
DETECTOR_ACTIONS: tuple[str, ...] = ("reject", "ban", "log")
_EMBEDDINGS = ("pixels", "penultimate")
_LABELS = {"blacklight": "Blacklight", "knn": "kNN"}
_KIND_FIELDS = {
    "blacklight": ("window", "stride", "step", "top", "match", "skip_flat", "cap"),
    "knn": ("k", "fpr", "embedding", "cap"),
}


@dataclass(frozen=True, kw_only=True)
class DetectorSpec:
    """What detector, with which settings, and the action on a flag.

    Attributes:
        kind: ``"blacklight"`` or ``"knn"``.
        action: ``"reject"``, ``"ban"`` or ``"log"`` (see the module docstring).
        window: Blacklight: width of the sliding window over the flattened quantized image, in pixel values.
            Default 20 (Li et al.'s CIFAR-10 setting; for 28x28 images see the README's measurement).
        stride: Blacklight: step between windows (default 1).
        step: Blacklight: quantization step on the 0-255 scale (default 50).
        top: Blacklight: hashes kept per fingerprint (default 50).
        match: Blacklight: shared hashes with one past query that flag (default 25, half of ``top``).
        skip_flat: Blacklight: leave out windows whose raw pixels are all equal (a flat background). Li et al.
            hash every window; on Fashion-MNIST's black backgrounds that makes distinct images share up to 38 of
            50 hashes and flags 12.7% of benign queries (window 20, stride 1); skipping flat windows gives 0% with
            every Square-like query still flagged (README, "Stateful detectors"). Default True.
        k: kNN: neighbours averaged (default 50).
        fpr: kNN: benign false-positive rate the threshold is set to (default 0.001, the 0.1th percentile of
            benign kNN mean distances).
        embedding: kNN: ``"pixels"`` (the raw image) or ``"penultimate"`` (the clean model's penultimate
            features).
        cap: both: most past queries kept per account (oldest evicted); None = unbounded.
    """

    kind: str
    action: str = "reject"
    window: int = 20
    stride: int = 1
    step: int = 50
    top: int = 50
    match: int = 25
    skip_flat: bool = True
    k: int = 50
    fpr: float = 0.001
    embedding: str = "pixels"
    cap: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DETECTOR_KINDS:
            raise ValueError(f"unknown detector {self.kind!r}; allowed: {', '.join(DETECTOR_KINDS)}")
        if self.action not in DETECTOR_ACTIONS:
            raise ValueError(f"unknown detector action {self.action!r}; allowed: {', '.join(DETECTOR_ACTIONS)}")
        for name in ("window", "stride", "step", "top", "match", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"detector {name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.skip_flat, bool):
            raise ValueError(f"detector skip_flat must be true or false, got {self.skip_flat!r}")
        if self.step > 255:
            raise ValueError(f"detector step is a quantization step on the 0-255 scale, in [1, 255]; got {self.step}")
        if self.match > self.top:
            raise ValueError(f"detector match ({self.match}) cannot exceed top ({self.top}), the hashes kept")
        if isinstance(self.fpr, bool) or not isinstance(self.fpr, (int, float)) or not 0 < self.fpr < 1:
            raise ValueError(f"detector fpr is a false-positive rate in (0, 1), e.g. 0.001; got {self.fpr!r}")
        object.__setattr__(self, "fpr", float(self.fpr))
        if self.embedding not in _EMBEDDINGS:
            raise ValueError(f"unknown kNN embedding {self.embedding!r}; allowed: {', '.join(_EMBEDDINGS)}")
        if self.cap is not None and (isinstance(self.cap, bool) or not isinstance(self.cap, int) or self.cap < 1):
            raise ValueError(f"detector cap must be a number of past queries >= 1 or None, got {self.cap!r}")
        foreign = [f for f in _changed(self) if f not in ("action", *_KIND_FIELDS[self.kind])]
        if foreign:
            raise ValueError(f"settings {foreign} do not apply to the {self.kind} detector; its settings: "
                             f"action, {', '.join(_KIND_FIELDS[self.kind])}")

    @property
    def label(self) -> str:
        """Table label: ``Blacklight`` or ``kNN`` (the action is added when it is not ``reject``)."""
        base = _LABELS[self.kind]
        return base if self.action == "reject" else f"{base} ({self.action})"

    def __str__(self) -> str:
        changed = _changed(self)
        if not changed:
            return self.kind
        return self.kind + ":" + ",".join(f"{k}={getattr(self, k)}" for k in changed)

    def to_dict(self) -> dict[str, Any]:
        """All settings as a plain mapping (the server's ``/v1/info``); :func:`parse_detector` reads it back."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> DetectorSpec:
        return dataclasses.replace(self, **changes)


def _changed(spec: DetectorSpec) -> list[str]:
    """Fields other than ``kind`` that differ from their defaults, in field order."""
    out = []
    for f in dataclasses.fields(spec):
        if f.name != "kind" and getattr(spec, f.name) != f.default:
            out.append(f.name)
    return out


def parse_detector(raw: str | Mapping[str, Any] | DetectorSpec) -> DetectorSpec:
    """A :class:`DetectorSpec` from its text (``"blacklight"``, ``"knn:k=20,action=ban"``) or a mapping
    (``{kind: blacklight, window: 20}``); unknown settings fail naming the valid ones."""
    if isinstance(raw, DetectorSpec):
        return raw
    names = [f.name for f in dataclasses.fields(DetectorSpec)]
    if isinstance(raw, Mapping):
        d = dict(raw)
    elif isinstance(raw, str):
        kind, _, rest = raw.strip().partition(":")
        d = {"kind": kind.strip()}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"detector setting {part!r} in {raw!r} needs key=value, e.g. blacklight:window=20")
            d[key.strip()] = _value(value.strip())
    else:
        raise ValueError(f"a detector is a name (blacklight, knn) or a mapping, got {raw!r}")
    bad = sorted(set(d) - set(names))
    if bad:
        raise ValueError(f"unknown detector settings {bad}; allowed: {', '.join(names)}")
    if "kind" not in d:
        raise ValueError(f"a detector mapping needs kind ({', '.join(DETECTOR_KINDS)}), got {dict(d)!r}")
    return DetectorSpec(**d)


def _value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text
