"""The study file: YAML (or a dict) validated into a :class:`rfd.eval.specs.Study`, every error naming its place.

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
      - {family: feature, drops: [0.02], detector: [none, blacklight]}  # noise alone, and behind a detector
      - {family: none, detector: knn}        # a stateful detector alone (rfd.defenses.detector_spec)
    attacks:
      - {name: square, norm: linf, eps: 0.05}
      - {name: square, verify: 100}          # the "strict check": 100 votes decide a claim (its stop rule)
      - {name: square, check: charged}       # the check's votes are paid from the budget
      - {name: nes, output: [probs, topk:3, rounded:2]}  # what the attacker sees (rfd.blackbox.outputs)
      - {name: nes, params: {oars: true}}    # OARS, the adaptive attack on stateful detectors
      - rays
    reevaluate: 100             # fresh forwards re-classifying every final image (strict/expected readings)
    output: logits              # the default output setting of every attack entry

Every defense of a study meets the same attack draws on the same images (the attack's seed depends on the
attack and the chunk, not on the defense, the check or the output setting): comparisons between defenses, and
between output settings, are paired. An attack that cannot run on an output setting (a score attack on
``labels``, the cross-entropy on ``topk``) fails when the study is read, naming the setting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rfd.attacks.registry import get_attack_class
from rfd.data.source import DataSpec
from rfd.defenses.families import FAMILIES
from rfd.defenses.spec import DefenseSpec, aaa_config
from rfd.eval.presets import default_eps
from rfd.eval.specs import CHECK_MODES, AttackSpec, ModelSpec, Study, StudyError
from rfd.jsonable import freeze

__all__ = ["load_study", "parse_study"]


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
             "verify", "check", "reevaluate", "eot", "output", "chunk_size", "data", "calibration")
_MODEL_KEYS = ("name", "checkpoint", "factory", "label", "options")
_DATA_KEYS = ("dataset", "eval_split", "calib_split", "path", "calib_images", "options")
_DEFENSE_KEYS = ("family", "layer", "layers", "drop", "drops", "sigma", "sigmas", "scaled", "aaa", "gate",
                 "detector")
_ATTACK_KEYS = ("name", "norm", "eps", "budget", "eot", "verify", "check", "reevaluate", "output", "params",
                "sweep", "label")


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
    output = top.get_str("output", "logits")
    assert budget is not None and verify is not None and eot is not None and output is not None
    assert check is not None and reevaluate is not None

    models_raw = top.get_list("models")
    if models_raw is None:
        raise StudyError(f"{top._at('models')}: required (a list of model names or mappings)")
    models = tuple(_parse_model(m, f"{top._at('models')}[{i}]", base) for i, m in enumerate(models_raw))
    names = [m.display for m in models]
    if len(set(names)) != len(names):
        raise StudyError(f"{top._at('models')}: two models share a name/label ({names}); give them distinct labels")

    defenses_raw = top.get_list("defenses") or ["none"]
    defenses: list[DefenseSpec] = []
    for i, d in enumerate(defenses_raw):
        defenses.extend(_parse_defense(d, f"{top._at('defenses')}[{i}]"))
    if len(set(defenses)) != len(defenses):
        raise StudyError(f"{top._at('defenses')}: the same defense setting is listed twice")

    data = _parse_data(top.raw.get("data") or {}, top._at("data"), base)
    attacks_raw = top.get_list("attacks")
    if attacks_raw is None:
        raise StudyError(f"{top._at('attacks')}: required (a list of attack names or mappings)")
    attacks: list[AttackSpec] = []
    for i, a in enumerate(attacks_raw):
        attacks.extend(_parse_attack(a, f"{top._at('attacks')}[{i}]", budget=budget, verify=verify, eot=eot,
                                     check=check, reevaluate=reevaluate, output=output, dataset=data.dataset))
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
        checkpoints=checkpoints, chunk_size=chunk_size, data=data, calibration=freeze(calibration),
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
                     label=e.get_str("label"), options=freeze(e.get_mapping("options")))


def _parse_data(raw: Any, where: str, base: Path | None) -> DataSpec:
    e = _Entry(raw, where, _DATA_KEYS)
    calib_images = e.get_int("calib_images", 1000, minimum=1)
    try:
        return DataSpec(dataset=e.get_str("dataset", "bundled") or "bundled", eval_split=e.get_str("eval_split") or "",
                        calib_split=e.get_str("calib_split") or "", path=_resolve_path(e.get_str("path"), base),
                        calib_images=calib_images, options=freeze(e.get_mapping("options")))
    except ValueError as exc:  # "key: problem" from DataSpec names the key
        key, sep, problem = str(exc).partition(": ")
        raise StudyError(f"{where}.{key}: {problem}" if sep and key in _DATA_KEYS else f"{where}: {exc}") from None


def _parse_defense(raw: Any, where: str) -> list[DefenseSpec]:
    """A defense entry: one DefenseSpec per (layer set, level); plural keys list several."""
    if isinstance(raw, str):
        raw = {"family": raw}
    e = _Entry(raw, where, _DEFENSE_KEYS)
    family = e.get_str("family")
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
        layer_sets = [()]
    for single, plural in (("drop", "drops"), ("sigma", "sigmas")):
        if e.has(single) and e.has(plural):
            raise StudyError(f"{where}: give either {single!r} or {plural!r}, not both")
    drops = [_as_float(v, f"{where}.drops") for v in e.get_list("drops") or e.get_list("drop") or []]
    sigmas = [_as_float(v, f"{where}.sigmas") for v in e.get_list("sigmas") or e.get_list("sigma") or []]
    levels: list[tuple[float | None, float | None]] = [(d, None) for d in drops] + [(None, s) for s in sigmas]
    scaled = e.get_bool("scaled", False)
    gate = _as_float(e.raw["gate"], f"{where}.gate") if e.has("gate") else None
    raw_det = e.raw.get("detector") if e.has("detector") else None
    detectors = raw_det if isinstance(raw_det, list) else [raw_det]  # a list: one defense per detector
    detectors = [None if d is None or (isinstance(d, str) and d.strip().lower() == "none") else d for d in detectors]
    try:
        aaa = aaa_config(e.get_mapping("aaa"))
        return [DefenseSpec(family=family, layers=ls, drop=d, sigma=s, scaled=scaled, aaa=aaa, gate=gate,
                            detector=det)
                for det in detectors for ls in layer_sets for d, s in levels or [(None, None)]]
    except ValueError as exc:  # "key: problem" from DataSpec names the key
        key, sep, problem = str(exc).partition(": ")
        raise StudyError(f"{where}.{key}: {problem}" if sep and key in _DATA_KEYS else f"{where}: {exc}") from None


def _layer_name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise StudyError(f"{where}: layer names are non-empty strings (as in model.named_modules()), got {v!r}")
    return v


def _parse_attack(raw: Any, where: str, *, budget: int, verify: int, eot: int, check: str = "free",
                  reevaluate: int = 100, output: str = "logits", dataset: str = "bundled") -> list[AttackSpec]:
    if isinstance(raw, str):
        raw = {"name": raw}
    e = _Entry(raw, where, _ATTACK_KEYS)
    name = e.get_str("name")
    if name is None:
        raise StudyError(f"{where}.name: required")
    try:
        get_attack_class(name)
    except ValueError as exc:
        raise StudyError(f"{where}.name: {exc}") from None
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
    outputs = [str(v) for v in e.get_list("output") or [output]]
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
    try:
        return [
            AttackSpec(name=name, norm=norm, eps=eps, budget=b, eot=m, verify=k, check=ch, reevaluate=reeval,
                       params=freeze({**params, **combo}), label=label, output=out)
            for eps in eps_list for b in budgets for m in eots for k in verifies for ch in checks for out in outputs
            for combo in combos
        ]
    except StudyError as exc:
        raise StudyError(f"{where}: {exc}") from None


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


