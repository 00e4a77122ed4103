"""The specs of a study: models, attack settings and the study itself (frozen, hashable dataclasses).

Defenses are :class:`rfd.defenses.DefenseSpec` and data :class:`rfd.data.DataSpec`, the same specs the API and
the CLI use. A study file (YAML, :mod:`rfd.eval.schema`) is parsed into a :class:`Study`; :mod:`rfd.eval.cells`
expands it into runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from rfd.attacks.base import Attack
from rfd.attacks.registry import get_attack_class, make_attack
from rfd.blackbox.outputs import parse_output
from rfd.data.source import DataSpec
from rfd.defenses.spec import DefenseSpec
from rfd.jsonable import Frozen, thaw

__all__ = ["CHECK_MODES", "SEEDING", "AttackSpec", "ModelSpec", "Study", "StudyError"]

CHECK_MODES = ("free", "charged")  # success checks not paid for (the paper) or paid from the budget
# How attack seeds are derived, stored in every run's identity: "paired" = by attack and chunk only (the same
# draws for every defense). Runs without it (rfd <= 0.1 stores) derived them from the whole run key.
SEEDING = "paired"


class StudyError(ValueError):
    """A study file or dict is invalid; the message says where (e.g. ``attacks[1].eps``) and what is allowed."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A model to evaluate.

    ``name`` is a registry name (``fmnist-vgg``), ``timm:<name>``, or any label when ``factory`` is given.
    ``factory`` ("package.module:function") builds the classifier for models outside the registry; it must
    return a module mapping [0, 1] images (N, C, H, W) to logits. ``checkpoint`` is a local weights file
    (safetensors, or a torch file loaded with ``weights_only=True``); registry models default to the
    checkpoint shipped with rfd. ``options`` go to ``rfd.models.loading.load_model`` (timm models: num_classes,
    mean, std, input_size, model_kwargs) or to the factory as keyword arguments.
    """

    name: str
    checkpoint: str | None = None
    factory: str | None = None
    label: str | None = None  # name shown in tables (default: name)
    options: Frozen = ()

    @property
    def display(self) -> str:
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "factory": self.factory, "label": self.label,
                "options": thaw(self.options)}


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """One attack configuration of a cell: the attack (a registry name or ``package.module:Class``) with its
    settings, and the black box's check settings. Unknown attacks and settings fail here, naming the valid ones."""

    name: str  # registry name (square, nes, signhunt, rays, signflip, hsja, pgd, cw) or "module:Class"
    norm: str = "linf"
    eps: float = 0.05
    budget: int = 10000  # queries per image
    eot: int = 1  # forwards averaged per query (paid for)
    verify: int = 9  # forwards of the majority-vote success check; 1 = "lucky" mode, 100 = the "strict check"
    check: str = "free"  # "free" (the paper: checks not paid for) or "charged" (each vote costs one query)
    reevaluate: int = 100  # R: fresh uncounted forwards classifying each final image (strict/expected readings)
    params: Frozen = ()  # attack-specific config fields (e.g. p_init)
    label: str | None = None
    output: str = "logits"  # what the attacker sees (rfd.blackbox.outputs): logits, probs, topk:K, top1, rounded:D, labels

    def __post_init__(self) -> None:
        cls = get_attack_class(self.name)
        if self.norm not in cls.norms:
            raise StudyError(f"{self.name!r} supports norms {', '.join(cls.norms)}, not {self.norm!r}")
        settings = cls.settings()
        for k, _ in self.params:
            if k not in settings:
                raise StudyError(f"{self.name!r} has no setting {k!r}; its settings: {', '.join(settings)}")
        if self.check not in CHECK_MODES:
            raise StudyError(f"attack {self.name!r}: check must be one of {', '.join(CHECK_MODES)}, got {self.check!r}")
        if self.reevaluate < 1 or self.verify < 1:
            raise StudyError(f"attack {self.name!r}: verify and reevaluate must be >= 1 forwards, got "
                             f"{self.verify}, {self.reevaluate}")
        try:
            out = parse_output(self.output)
        except ValueError as exc:
            raise StudyError(f"attack {self.name!r}: {exc}") from None
        object.__setattr__(self, "output", str(out))  # canonical text: "TopK:5" and "topk:5" are one setting
        if out.kind != "logits":
            problem = self.make_attack(seed=0).output_problem(out)
            if problem:
                raise StudyError(problem)
        elif dict(self.params).get("oars"):  # OARS exists for some attacks only: say so when the study is read
            try:
                self.make_attack(seed=0)
            except ValueError as exc:
                raise StudyError(f"attack {self.name!r}: {exc}") from None

    def make_attack(self, seed: int) -> Attack:
        """The attack this setting describes, with ``seed`` (unknown settings fail naming the valid ones)."""
        return make_attack(self.name, norm=self.norm, eps=self.eps, budget=self.budget, seed=seed, eot=self.eot,
                           **thaw(self.params))

    @property
    def display(self) -> str:
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "norm": self.norm, "eps": self.eps, "budget": self.budget, "eot": self.eot,
             "verify": self.verify, "check": self.check, "reevaluate": self.reevaluate,
             "params": thaw(self.params), "label": self.label}
        if self.output != "logits":  # absent = logits: the run keys of stores written before output settings hold
            d["output"] = self.output
        return d


@dataclass(frozen=True, kw_only=True)
class Study:
    """A whole study: every model x defense x attack combination is one cell."""

    name: str = "study"
    description: str = ""
    models: tuple[ModelSpec, ...]
    defenses: tuple[DefenseSpec, ...]
    attacks: tuple[AttackSpec, ...]
    n: int = 1000  # images per cell
    seed: int = 0  # seeds the image selection, calibration, and (with the cell and chunk) every attack
    checkpoints: tuple[int, ...] = (1000, 10000)  # budgets reported in tables
    chunk_size: int = 50  # images per work unit: a killed run loses at most one chunk in flight per worker
    data: DataSpec = field(default_factory=DataSpec)
    calibration: Frozen = ()  # extra keyword arguments of rfd.defenses.calibrate

    def __post_init__(self) -> None:
        if not self.models or not self.defenses or not self.attacks:
            raise StudyError("a study needs at least one model, one defense and one attack")
        if self.n < 1 or self.chunk_size < 1:
            raise StudyError(f"n and chunk_size must be >= 1, got n={self.n}, chunk_size={self.chunk_size}")

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.chunk_size)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Sample positions [start, stop) of ``chunk`` (fixed by index: the same on every run)."""
        if not 0 <= chunk < self.n_chunks:
            raise ValueError(f"chunk {chunk} out of range 0..{self.n_chunks - 1}")
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the YAML schema (every entry fully expanded); ``parse_study(s.to_dict())`` equals ``s``."""
        return {
            "name": self.name, "description": self.description, "n": self.n, "seed": self.seed,
            "checkpoints": list(self.checkpoints), "chunk_size": self.chunk_size, "data": self.data.to_dict(),
            "calibration": thaw(self.calibration),
            "models": [m.to_dict() for m in self.models],
            "defenses": [_defense_entry(d) for d in self.defenses],
            "attacks": [_attack_entry(a) for a in self.attacks],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> Study:
        return dataclasses.replace(self, **changes)


def _defense_entry(d: DefenseSpec) -> dict[str, Any]:
    e: dict[str, Any] = {"family": d.family}
    if d.layers and d.info.layers:
        e["layers"] = list(d.layers)
    if d.drop is not None:
        e["drops"] = [d.drop]
    if d.sigma is not None:
        e["sigmas"] = [d.sigma]
    if d.scaled:
        e["scaled"] = True
    aaa = d.to_dict()["params"].get("aaa")
    if aaa:
        e["aaa"] = aaa
    if d.gate is not None:
        e["gate"] = d.gate
    if d.detector is not None:
        e["detector"] = str(d.detector)
    return e


def _attack_entry(a: AttackSpec) -> dict[str, Any]:
    e = a.to_dict()
    if not a.params:
        e.pop("params")
    if a.label is None:
        e.pop("label")
    return e
