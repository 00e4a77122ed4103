"""Study files: a grid of models x defenses x attacks, read from YAML into frozen dataclasses.

A study declares what to evaluate; :func:`expand_cells` turns it into *cells*, one per (model, defense,
attack setting). Each cell is a run in the results store. Defaults follow the paper's protocol: 1000
class-balanced images, budgets 1000 and 10000, success verified by the majority of 9 forwards, noise at the
penultimate layer, calibration on a split disjoint from the evaluation images.

Example (YAML)::

    name: my-study
    n: 200                      # images, class-balanced, seeded; the same for every cell
    budget: 1000                # queries per image (EOT repetitions included)
    checkpoints: [100, 1000]    # budgets reported in tables (robust accuracy at each)
    models: [fmnist-vgg]        # registry names, timm:<name>, or {name:, checkpoint:, factory:}
    defenses:
      - none
      - {family: feature, drops: [0.02]}     # sigma calibrated to a 2% clean-accuracy drop
      - {family: input, sigmas: [0.05]}      # or a fixed sigma
    attacks:
      - {name: square, norm: linf, eps: 0.05}
      - {name: square, verify: 100}          # the "strict check": 100 votes decide a claim (its stop rule)
      - {name: square, check: charged}       # the check's votes are paid from the budget
      - rays
    reevaluate: 100             # fresh forwards re-classifying every final image (strict/expected readings)

Every defense of a study meets the same attack draws on the same images (the attack's seed depends on the
attack and the chunk, not on the defense or the check): comparisons between defenses are paired.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CHECK_MODES",
    "FAMILIES",
    "NOISE_FAMILIES",
    "SEEDING",
    "AttackSetting",
    "Cell",
    "DataSpec",
    "DefenseSetting",
    "ModelSpec",
    "Study",
    "StudyError",
    "default_eps",
    "expand_cells",
    "load_study",
    "parse_study",
]

FAMILIES = ("none", "input", "feature", "logits", "aaa")
NOISE_FAMILIES = ("input", "feature", "logits")  # families whose sigma is set or calibrated
CHECK_MODES = ("free", "charged")  # success checks not paid for (the paper) or paid from the budget
# How attack seeds are derived, stored in every run's identity: "paired" = by attack and chunk only (the same
# draws for every defense). Runs without it (rfd <= 0.1 stores) derived them from the whole run key.
SEEDING = "paired"


class StudyError(ValueError):
    """A study file or dict is invalid; the message says where (e.g. ``attacks[1].eps``) and what is allowed."""


def _canon(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for keys and equality of configs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _freeze(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A dict as a sorted tuple of items (hashable, so dataclasses holding it stay frozen and hashable)."""
    return tuple(sorted((str(k), _freeze_value(v)) for k, v in d.items()))


def _freeze_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return _freeze(v)
    if isinstance(v, list):
        return tuple(_freeze_value(x) for x in v)
    return v


def _thaw(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: _thaw_value(v) for k, v in items}


def _thaw_value(v: Any) -> Any:
    if isinstance(v, tuple) and v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
        return _thaw(v)
    if isinstance(v, tuple):
        return [_thaw_value(x) for x in v]
    return v


# ------------------------------------------------------------------------------------------- dataclasses
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
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def display(self) -> str:
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "factory": self.factory, "label": self.label,
                "options": _thaw(self.options)}


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where the images come from (``rfd.data.load_dataset`` names).

    Attack images are drawn from ``eval_split`` (``n`` class-balanced images, seeded by the study seed);
    calibration uses ``calib_images`` class-balanced images of ``calib_split``. When both splits are the same,
    the calibration images are drawn from the images *not* selected for evaluation, so the two never overlap.
    """

    dataset: str = "bundled"
    eval_split: str = "eval"
    calib_split: str = "calib"
    path: str | None = None
    calib_images: int = 1000
    options: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["options"] = _thaw(self.options)
        return d


@dataclass(frozen=True, kw_only=True)
class DefenseSetting:
    """One defense configuration of a cell (a study's defense entries expand into these).

    Exactly one of ``drop`` (target clean-accuracy drop, absolute, sigma calibrated) and ``sigma`` (fixed) is
    set for the noise families; neither for ``none`` and ``aaa``."""

    family: str
    layers: tuple[str, ...] = ()  # feature noise: module names noised together; () for other families
    drop: float | None = None
    sigma: float | None = None
    scaled: bool = False
    params: tuple[tuple[str, Any], ...] = ()  # extra DefenseSpec fields (e.g. aaa settings)

    @property
    def needs_calibration(self) -> bool:
        return self.family in NOISE_FAMILIES and self.drop is not None

    @property
    def method(self) -> str:
        """Table label: Base, Input, Feature, Logits, AAA."""
        return {"none": "Base", "input": "Input", "feature": "Feature", "logits": "Logits", "aaa": "AAA"}[self.family]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "layers": list(self.layers), "drop": self.drop, "sigma": self.sigma,
                "scaled": self.scaled, "params": _thaw(self.params)}

    def calibration_dict(self) -> dict[str, Any]:
        """What a calibrated sigma depends on (besides model, data and seed): the defense without its level."""
        d = self.to_dict()
        d.pop("sigma")
        return d


@dataclass(frozen=True, kw_only=True)
class AttackSetting:
    """One attack configuration of a cell."""

    name: str  # registry name (square, nes, signhunt, rays, signflip, hsja, pgd, cw) or "module:Class"
    norm: str = "linf"
    eps: float = 0.05
    budget: int = 10000  # queries per image
    eot: int = 1  # forwards averaged per query (paid for)
    verify: int = 9  # forwards of the majority-vote success check; 1 = "lucky" mode, 100 = the "strict check"
    check: str = "free"  # "free" (the paper: checks not paid for) or "charged" (each vote costs one query)
    reevaluate: int = 100  # R: fresh uncounted forwards classifying each final image (strict/expected readings)
    params: tuple[tuple[str, Any], ...] = ()  # attack-specific config fields (e.g. p_init)
    label: str | None = None

    def __post_init__(self) -> None:
        if self.check not in CHECK_MODES:
            raise StudyError(f"attack {self.name!r}: check must be one of {', '.join(CHECK_MODES)}, got {self.check!r}")
        if self.reevaluate < 1 or self.verify < 1:
            raise StudyError(f"attack {self.name!r}: verify and reevaluate must be >= 1 forwards, got "
                             f"{self.verify}, {self.reevaluate}")

    @property
    def display(self) -> str:
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "norm": self.norm, "eps": self.eps, "budget": self.budget, "eot": self.eot,
                "verify": self.verify, "check": self.check, "reevaluate": self.reevaluate,
                "params": _thaw(self.params), "label": self.label}


@dataclass(frozen=True, kw_only=True)
class Study:
    """A whole study: every model x defense x attack combination is one cell."""

    name: str = "study"
    description: str = ""
    models: tuple[ModelSpec, ...]
    defenses: tuple[DefenseSetting, ...]
    attacks: tuple[AttackSetting, ...]
    n: int = 1000  # images per cell
    seed: int = 0  # seeds the image selection, calibration, and (with the cell and chunk) every attack
    checkpoints: tuple[int, ...] = (1000, 10000)  # budgets reported in tables
    chunk_size: int = 50  # images per work unit: a killed run loses at most one chunk in flight per worker
    data: DataSpec = field(default_factory=DataSpec)
    calibration: tuple[tuple[str, Any], ...] = ()  # extra keyword arguments of rfd.defenses.calibrate

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
            "calibration": _thaw(self.calibration),
            "models": [m.to_dict() for m in self.models],
            "defenses": [_defense_entry(d) for d in self.defenses],
            "attacks": [_attack_entry(a) for a in self.attacks],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> Study:
        return dataclasses.replace(self, **changes)


def _defense_entry(d: DefenseSetting) -> dict[str, Any]:
    e: dict[str, Any] = {"family": d.family}
    if d.layers:
        e["layers"] = list(d.layers)
    if d.drop is not None:
        e["drops"] = [d.drop]
    if d.sigma is not None:
        e["sigmas"] = [d.sigma]
    if d.scaled:
        e["scaled"] = True
    if d.params:
        e["params"] = _thaw(d.params)
    return e


def _attack_entry(a: AttackSetting) -> dict[str, Any]:
    e = a.to_dict()
    if not a.params:
        e.pop("params")
    if a.label is None:
        e.pop("label")
    return e


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One run: a model, a defense setting and an attack setting, plus the study-wide settings that change
    its outcome. ``key()`` identifies the run in the results store (resume, shards and merge match on it)."""

    index: int  # position in the study's expansion (stable order)
    model: ModelSpec
    defense: DefenseSetting
    attack: AttackSetting
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


# ------------------------------------------------------------------------------------------------ parsing
class _Entry:
    """A mapping being parsed: typed getters that name the place (``where``) in every error, and a final
    check that no unknown key was left."""

    def __init__(self, raw: Any, where: str, allowed: Sequence[str]) -> None:
        if not isinstance(raw, Mapping):
            raise StudyError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
        unknown = [k for k in raw if k not in allowed]
        if unknown:
            raise StudyError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(repr(k) for k in unknown)} (allowed: {', '.join(allowed)})")
        self.raw = dict(raw)
        self.where = where

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self.raw and self.raw[key] is not None

    def get_str(self, key: str, default: str | None = None, choices: Sequence[str] | None = None) -> str | None:
        v = self.raw.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise StudyError(f"{self._at(key)}: expected a non-empty string, got {v!r}")
        if choices is not None and v not in choices:
            raise StudyError(f"{self._at(key)}: {v!r} is not allowed (allowed: {', '.join(choices)})")
        return v

    def get_int(self, key: str, default: int | None = None, minimum: int | None = None) -> int | None:
        v = self.raw.get(key, default)
        if v is None:
            return None
        return _as_int(v, self._at(key), minimum)

    def get_float(self, key: str, default: float | None = None, positive: bool = False) -> float | None:
        v = self.raw.get(key, default)
        if v is None:
            return None
        return _as_float(v, self._at(key), positive)

    def get_bool(self, key: str, default: bool = False) -> bool:
        v = self.raw.get(key, default)
        if not isinstance(v, bool):
            raise StudyError(f"{self._at(key)}: expected true or false, got {v!r}")
        return v

    def get_mapping(self, key: str) -> dict[str, Any]:
        v = self.raw.get(key) or {}
        if not isinstance(v, Mapping):
            raise StudyError(f"{self._at(key)}: expected a mapping, got {v!r}")
        for k, x in v.items():
            if not isinstance(k, str):
                raise StudyError(f"{self._at(key)}: keys must be strings, got {k!r}")
            _check_json_value(x, f"{self._at(key)}.{k}")
        return dict(v)

    def get_list(self, key: str) -> list[Any] | None:
        """A value that may be given as one item or a list of items."""
        if key not in self.raw or self.raw[key] is None:
            return None
        v = self.raw[key]
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        if not items:
            raise StudyError(f"{self._at(key)}: empty list")
        return items


def _as_int(v: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise StudyError(f"{where}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise StudyError(f"{where}: must be >= {minimum}, got {v}")
    return int(v)


def _as_float(v: Any, where: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise StudyError(f"{where}: expected a finite number, got {v!r}")
    if positive and v <= 0:
        raise StudyError(f"{where}: must be > 0, got {v}")
    return float(v)


def _check_json_value(v: Any, where: str) -> None:
    if isinstance(v, (str, bool, int)) or v is None:
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise StudyError(f"{where}: must be finite, got {v}")
        return
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_json_value(x, f"{where}[{i}]")
        return
    if isinstance(v, Mapping):
        for k, x in v.items():
            _check_json_value(x, f"{where}.{k}")
        return
    raise StudyError(f"{where}: unsupported value {v!r} (use numbers, strings, booleans, lists, mappings)")


_TOP_KEYS = ("name", "description", "models", "defenses", "attacks", "n", "seed", "budget", "checkpoints",
             "verify", "check", "reevaluate", "eot", "chunk_size", "data", "calibration")
_MODEL_KEYS = ("name", "checkpoint", "factory", "label", "options")
_DATA_KEYS = ("dataset", "eval_split", "calib_split", "path", "calib_images", "options")
_DEFENSE_KEYS = ("family", "layer", "layers", "drop", "drops", "sigma", "sigmas", "scaled", "params")
_ATTACK_KEYS = ("name", "norm", "eps", "budget", "eot", "verify", "check", "reevaluate", "params", "sweep",
                "label")


def parse_study(raw: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None,
                where: str = "") -> Study:
    """Validate a study dict (the YAML schema) and build the :class:`Study`.

    Relative checkpoint and data paths are resolved against ``base_dir`` (the YAML file's folder).
    Raises :class:`StudyError` (a ValueError) naming the offending place for any unknown key or bad value."""
    top = _Entry(raw, where, _TOP_KEYS)
    base = Path(base_dir) if base_dir is not None else None
    budget = top.get_int("budget", 10000, minimum=1)
    verify = top.get_int("verify", 9, minimum=1)
    eot = top.get_int("eot", 1, minimum=1)
    check = top.get_str("check", "free", choices=CHECK_MODES)
    reevaluate = top.get_int("reevaluate", 100, minimum=1)
    assert budget is not None and verify is not None and eot is not None
    assert check is not None and reevaluate is not None

    models_raw = top.get_list("models")
    if models_raw is None:
        raise StudyError(f"{top._at('models')}: required (a list of model names or mappings)")
    models = tuple(_parse_model(m, f"{top._at('models')}[{i}]", base) for i, m in enumerate(models_raw))
    names = [m.display for m in models]
    if len(set(names)) != len(names):
        raise StudyError(f"{top._at('models')}: two models share a name/label ({names}); give them distinct labels")

    defenses_raw = top.get_list("defenses") or ["none"]
    defenses: list[DefenseSetting] = []
    for i, d in enumerate(defenses_raw):
        defenses.extend(_parse_defense(d, f"{top._at('defenses')}[{i}]"))
    if len(set(defenses)) != len(defenses):
        raise StudyError(f"{top._at('defenses')}: the same defense setting is listed twice")

    data = _parse_data(top.raw.get("data") or {}, top._at("data"), base)
    attacks_raw = top.get_list("attacks")
    if attacks_raw is None:
        raise StudyError(f"{top._at('attacks')}: required (a list of attack names or mappings)")
    attacks: list[AttackSetting] = []
    for i, a in enumerate(attacks_raw):
        attacks.extend(_parse_attack(a, f"{top._at('attacks')}[{i}]", budget=budget, verify=verify, eot=eot,
                                     check=check, reevaluate=reevaluate, dataset=data.dataset))
    if len(set(attacks)) != len(attacks):
        raise StudyError(f"{top._at('attacks')}: the same attack setting is listed twice")

    cps_raw = top.get_list("checkpoints")
    max_budget = max(a.budget for a in attacks)
    checkpoints = (tuple(sorted({_as_int(c, f"{top._at('checkpoints')}[{i}]", 1) for i, c in enumerate(cps_raw)}))
                   if cps_raw is not None else tuple(c for c in (1000, 10000) if c <= max_budget) or (max_budget,))

    n = top.get_int("n", 1000, minimum=1)
    chunk_size = top.get_int("chunk_size", 50, minimum=1)
    seed = top.get_int("seed", 0, minimum=0)
    calibration = top.get_mapping("calibration")
    assert n is not None and chunk_size is not None and seed is not None
    return Study(
        name=top.get_str("name", "study") or "study", description=_description(top),
        models=models, defenses=tuple(defenses), attacks=tuple(attacks), n=n, seed=seed,
        checkpoints=checkpoints, chunk_size=chunk_size, data=data, calibration=_freeze(calibration),
    )


def _description(top: _Entry) -> str:
    v = top.raw.get("description", "")
    if v is None:
        return ""
    if not isinstance(v, str):
        raise StudyError(f"{top._at('description')}: expected a string, got {v!r}")
    return v


def _resolve_path(p: str | None, base: Path | None) -> str | None:
    if p is None:
        return None
    path = Path(os.path.expanduser(p))
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path)


def _parse_model(raw: Any, where: str, base: Path | None) -> ModelSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    e = _Entry(raw, where, _MODEL_KEYS)
    name = e.get_str("name")
    if name is None:
        raise StudyError(f"{where}.name: required")
    factory = e.get_str("factory")
    if factory is not None and ":" not in factory:
        raise StudyError(f"{where}.factory: expected 'package.module:function', got {factory!r}")
    return ModelSpec(name=name, checkpoint=_resolve_path(e.get_str("checkpoint"), base), factory=factory,
                     label=e.get_str("label"), options=_freeze(e.get_mapping("options")))


def _parse_data(raw: Any, where: str, base: Path | None) -> DataSpec:
    e = _Entry(raw, where, _DATA_KEYS)
    d = DataSpec()
    dataset = e.get_str("dataset", d.dataset)
    eval_split = e.get_str("eval_split", d.eval_split if dataset == "bundled" else "test")
    calib_split = e.get_str("calib_split", d.calib_split if dataset == "bundled" else eval_split)
    calib_images = e.get_int("calib_images", d.calib_images, minimum=1)
    assert dataset is not None and eval_split is not None and calib_split is not None and calib_images is not None
    from rfd.data.registry import DATASETS

    if dataset not in DATASETS:
        raise StudyError(f"{where}.dataset: unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    splits = DATASETS[dataset].splits
    for key, split in (("eval_split", eval_split), ("calib_split", calib_split)):
        if split not in splits:
            raise StudyError(f"{where}.{key}: dataset {dataset!r} has splits {', '.join(splits)}, got {split!r}")
    return DataSpec(dataset=dataset, eval_split=eval_split, calib_split=calib_split,
                    path=_resolve_path(e.get_str("path"), base), calib_images=calib_images,
                    options=_freeze(e.get_mapping("options")))


def _parse_defense(raw: Any, where: str) -> list[DefenseSetting]:
    if isinstance(raw, str):
        raw = {"family": raw}
    e = _Entry(raw, where, _DEFENSE_KEYS)
    family = e.get_str("family", choices=FAMILIES)
    if family is None:
        raise StudyError(f"{where}.family: required (one of {', '.join(FAMILIES)})")
    if e.has("layer") and e.has("layers"):
        raise StudyError(f"{where}: give either 'layer' (one defense per listed layer) or 'layers' (all listed "
                         "layers noised together), not both")
    layer_sets: list[tuple[str, ...]]
    if e.has("layer"):
        layer_sets = [(_layer_name(v, f"{where}.layer"),) for v in e.get_list("layer") or []]
    elif e.has("layers"):
        layer_sets = [tuple(_layer_name(v, f"{where}.layers") for v in e.get_list("layers") or [])]
    else:
        layer_sets = [("penultimate",)] if family == "feature" else [()]
    if family != "feature" and layer_sets != [()]:
        raise StudyError(f"{where}: layer/layers apply to the feature family only, not {family!r}")
    scaled = e.get_bool("scaled", False)
    if scaled and family != "feature":
        raise StudyError(f"{where}.scaled: applies to the feature family only, not {family!r}")
    for single, plural in (("drop", "drops"), ("sigma", "sigmas")):
        if e.has(single) and e.has(plural):
            raise StudyError(f"{where}: give either {single!r} or {plural!r}, not both")
    drops_raw = e.get_list("drops") or e.get_list("drop")
    sigmas_raw = e.get_list("sigmas") or e.get_list("sigma")
    drops = [_as_float(v, f"{where}.drops", positive=True) for v in drops_raw or []]
    sigmas = [_as_float(v, f"{where}.sigmas") for v in sigmas_raw or []]
    if any(d >= 1 for d in drops):
        raise StudyError(f"{where}.drops: a drop is an absolute accuracy fraction in (0, 1) (0.02 = 2 points), "
                         f"got {drops}")
    if any(s < 0 for s in sigmas):
        raise StudyError(f"{where}.sigmas: must be >= 0, got {sigmas}")
    if family in NOISE_FAMILIES:
        if not drops and not sigmas:
            raise StudyError(f"{where}: the {family} family needs 'drops' (target accuracy drops, calibrated on the "
                             "calibration split) or 'sigmas' (fixed noise levels)")
    elif drops or sigmas:
        raise StudyError(f"{where}: the {family} family takes no drop or sigma")
    params = _freeze(e.get_mapping("params"))
    levels: list[tuple[float | None, float | None]] = [(d, None) for d in drops] + [(None, s) for s in sigmas]
    if not levels:
        levels = [(None, None)]
    return [DefenseSetting(family=family, layers=ls, drop=d, sigma=s, scaled=scaled, params=params)
            for ls in layer_sets for d, s in levels]


def _layer_name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise StudyError(f"{where}: layer names are non-empty strings (as in model.named_modules()), got {v!r}")
    return v


def default_eps(dataset: str, norm: str) -> float | None:
    """The preset radius of ``norm`` for ``dataset`` (rfd.eval.presets), or None when there is none."""
    from rfd.eval.presets import EPS_PRESETS, eps_preset

    family = _EPS_FAMILY.get(dataset, dataset)
    if family not in EPS_PRESETS:
        return None
    return eps_preset(family, norm)


# datasets of rfd.data.registry -> the preset family of their eps (the bundled set is Fashion-MNIST)
_EPS_FAMILY = {"bundled": "fashion-mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10"}


def _parse_attack(raw: Any, where: str, *, budget: int, verify: int, eot: int, check: str = "free",
                  reevaluate: int = 100, dataset: str = "bundled") -> list[AttackSetting]:
    if isinstance(raw, str):
        raw = {"name": raw}
    e = _Entry(raw, where, _ATTACK_KEYS)
    name = e.get_str("name")
    if name is None:
        raise StudyError(f"{where}.name: required")
    if ":" not in name:
        from rfd.attacks.registry import ATTACKS

        if name not in ATTACKS:
            raise StudyError(f"{where}.name: unknown attack {name!r} (known: {', '.join(ATTACKS)}; or "
                             "'package.module:Class' for your own Attack subclass)")
    norm = e.get_str("norm", "linf", choices=("linf", "l2"))
    assert norm is not None
    eps_list = [_as_float(v, f"{where}.eps", positive=True) for v in e.get_list("eps") or []]
    if not eps_list:
        eps = default_eps(dataset, norm)
        if eps is None:
            raise StudyError(f"{where}.eps: required (no {norm} radius preset for dataset {dataset!r}; presets: "
                             "rfd.eval.presets)")
        eps_list = [eps]
    eots = [_as_int(v, f"{where}.eot", 1) for v in e.get_list("eot") or [eot]]
    budgets = [_as_int(v, f"{where}.budget", 1) for v in e.get_list("budget") or [budget]]
    verifies = [_as_int(v, f"{where}.verify", 1) for v in e.get_list("verify") or [verify]]
    checks = [str(v) for v in e.get_list("check") or [check]]
    for c in checks:
        if c not in CHECK_MODES:
            raise StudyError(f"{where}.check: {c!r} is not allowed (allowed: {', '.join(CHECK_MODES)})")
    reeval = e.get_int("reevaluate", reevaluate, minimum=1)
    assert reeval is not None
    params = e.get_mapping("params")
    for reserved in ("norm", "eps", "budget", "seed", "eot"):
        if reserved in params:
            raise StudyError(f"{where}.params.{reserved}: set {reserved!r} on the attack entry itself, not in params"
                             if reserved != "seed" else f"{where}.params.seed: seeds are derived from the study seed")
    sweep = e.get_mapping("sweep")
    sweep_lists: list[list[tuple[str, Any]]] = []
    for k, vals in sweep.items():
        if k in params or k in ("norm", "eps", "budget", "seed", "eot"):
            raise StudyError(f"{where}.sweep.{k}: sweep attack parameters only (and not one also set in params); "
                             "list eps/budget/eot values directly on the entry")
        if not isinstance(vals, list) or not vals:
            raise StudyError(f"{where}.sweep.{k}: expected a non-empty list of values, got {vals!r}")
        sweep_lists.append([(k, v) for v in vals])
    combos: list[dict[str, Any]] = [{}]
    for options in sweep_lists:
        combos = [{**c, k: v} for c in combos for k, v in options]
    label = e.get_str("label")
    return [
        AttackSetting(name=name, norm=norm, eps=eps, budget=b, eot=m, verify=k, check=ch, reevaluate=reeval,
                      params=_freeze({**params, **combo}), label=label)
        for eps in eps_list for b in budgets for m in eots for k in verifies for ch in checks for combo in combos
    ]


def load_study(path: str | os.PathLike[str]) -> Study:
    """Read and validate a YAML study file (see the module docstring for the schema)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"study file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise StudyError(f"{p}: not valid YAML: {exc}") from exc
    if raw is None:
        raise StudyError(f"{p}: empty study file")
    try:
        return parse_study(raw, base_dir=p.parent)
    except StudyError as exc:
        raise StudyError(f"{p}: {exc}") from None


def expand_cells(study: Study) -> list[Cell]:
    """All cells of ``study`` in a fixed order (model, then defense, then attack)."""
    cells: list[Cell] = []
    for m in study.models:
        for d in study.defenses:
            for a in study.attacks:
                cells.append(Cell(index=len(cells), model=m, defense=d, attack=a, n=study.n, seed=study.seed,
                                  chunk_size=study.chunk_size, data=study.data))
    return cells


def checkpoints_for(study: Study, budget: int) -> list[int]:
    """The study's reporting budgets up to ``budget``, plus ``budget`` itself."""
    return sorted({*(c for c in study.checkpoints if c <= budget), budget})


def iter_unique(items: Iterable[Any]) -> list[Any]:
    """Items in first-seen order without duplicates."""
    seen: set[Any] = set()
    out = []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
