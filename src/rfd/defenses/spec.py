"""The defense spec: which defense (a family of :mod:`rfd.defenses.families`) at which level.

One spec serves the Python API, YAML studies, CLI flags, the results store and table labels. A noise defense
needs a level: a fixed ``sigma``, or a target clean-accuracy ``drop`` that :func:`rfd.defenses.calibrate`
turns into a sigma (the calibrated spec keeps the drop it was calibrated to). A noise spec without a level is
refused: it would silently be no defense. :func:`rfd.defenses.defend` needs the sigma.

Example::

    DefenseSpec(family="feature", drop=0.02)            # calibrate to a 2-point clean-accuracy drop
    DefenseSpec(family="input", sigma=0.05)              # a fixed noise level, pixels of the [0, 1] image
    DefenseSpec(family="feature", layers=("net.layer2",), sigma=0.3, scaled=True)
    DefenseSpec(family="logits", sigma=0.1, gate=0.3)   # Aithal & Li's boundary defense
    DefenseSpec(family="feature", drop=0.02, gate=0.99)  # confidence-gated noise (Zimmer et al. 2024)
    DefenseSpec(family="feature", drop=0.02, detector="blacklight")  # noise behind a stateful detector
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rfd.defenses.aaa import AAAConfig
from rfd.defenses.detector_spec import DetectorSpec, parse_detector
from rfd.defenses.families import FAMILIES, PENULTIMATE, Family, family

__all__ = ["DefenseSpec", "aaa_config", "method_label"]

_DICT_KEYS = ("family", "layers", "drop", "sigma", "scaled", "params")
_PARAM_KEYS = ("aaa", "gate", "detector")  # settings beyond family and level, kept under "params" in the dict form


@dataclass(frozen=True, kw_only=True)
class DefenseSpec:
    """What defense to apply, and at which level.

    Attributes:
        family: a name of :data:`rfd.defenses.FAMILIES`: ``"none"``, ``"input"``, ``"feature"``, ``"logits"``,
            ``"aaa"``.
        sigma: noise standard deviation of the noise families. Input noise: pixel units of the [0, 1] image.
            Feature noise: units of the layer's output, or multiples of its per-feature clean std with
            ``scaled=True``. Logits: logit units. None until calibrated when ``drop`` is given.
        drop: target clean-accuracy drop, absolute fraction in (0, 1) (0.02 = two points), that calibration turns
            into ``sigma``.
        layers: feature noise only: module names as in ``model.named_modules()``, noised together with independent
            noise of the same sigma; ``"penultimate"`` (the default) is the input of the final classifier layer.
        scaled: feature noise ``N(0, sigma^2 s^2)`` with ``s`` the per-feature std on clean calibration images.
        aaa: AAA settings (family ``"aaa"`` only).
        gate: noise families only: noise only on queries whose clean top probability (softmax of the undefended
            model) is below ``gate`` in (0, 1]; confident queries get the clean answer. Logits noise with gate 0.3
            and sigma 0.1 is the boundary defense of Aithal & Li (2022); input or feature noise with a gate near 1
            (0.97-0.99) is the confidence-gated defense of Zimmer et al. (2024). Each query then costs one clean
            forward more, and the noisy forward runs on the gated rows only.
        detector: a stateful query-history detector in front of the (noisy) model
            (:class:`~rfd.defenses.detector_spec.DetectorSpec`, or its text such as ``"blacklight"`` or
            ``"knn:action=ban"``); it composes with every family, ``none`` included. It acts at the black box
            (:class:`rfd.blackbox.stateful.StatefulBlackBox`, ``rfd serve --detector``), not in the model, so
            the noise's calibration does not depend on it.
    """

    family: str = "none"
    sigma: float | None = None
    drop: float | None = None
    layers: tuple[str, ...] = ()
    scaled: bool = False
    aaa: AAAConfig = field(default_factory=AAAConfig)
    gate: float | None = None
    detector: DetectorSpec | None = None  # text (e.g. "blacklight") is accepted too and parsed

    def __post_init__(self) -> None:
        fam = family(self.family)
        if self.detector is not None:
            object.__setattr__(self, "detector", parse_detector(self.detector))
        if self.sigma is not None:
            if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) \
                    or not math.isfinite(self.sigma) or self.sigma < 0:
                raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
            object.__setattr__(self, "sigma", float(self.sigma))
        if self.drop is not None:
            if isinstance(self.drop, bool) or not isinstance(self.drop, (int, float)) or not 0 < self.drop < 1:
                raise ValueError(f"drop is an absolute clean-accuracy drop in (0, 1), e.g. 0.02 for two points; "
                                 f"got {self.drop!r}")
            object.__setattr__(self, "drop", float(self.drop))
        if fam.noise and self.sigma is None and self.drop is None:
            raise ValueError(f"the {fam.name} defense needs a level: sigma (a fixed noise std, {fam.units}) or drop "
                             "(a target clean-accuracy drop to calibrate sigma to)")
        if not fam.noise and (self.sigma is not None or self.drop is not None):
            raise ValueError(f"sigma and drop apply to the noise defenses ({', '.join(_noise_names())}), not "
                             f"{fam.name!r}")
        layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)  # a lone string: one name
        if not all(isinstance(n, str) and n for n in layers):
            raise ValueError(f"layers must be non-empty module names, got {list(layers)!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers lists a module twice: {list(layers)!r}")
        if layers and not fam.layers:
            raise ValueError(f"layers apply to the feature defense only, not {fam.name!r}")
        if fam.layers and not layers:
            layers = (PENULTIMATE,)
        object.__setattr__(self, "layers", layers)
        if not isinstance(self.scaled, bool):
            raise ValueError(f"scaled must be true or false, got {self.scaled!r}")
        if self.scaled and not fam.layers:
            raise ValueError(f"scaled applies to the feature defense only, not {fam.name!r}")
        if not isinstance(self.aaa, AAAConfig):
            raise ValueError(f"aaa must be an AAAConfig, got {type(self.aaa).__name__}")
        if self.aaa != AAAConfig() and fam.name != "aaa":
            raise ValueError(f"aaa settings apply to the aaa defense only, not {fam.name!r}")
        if self.gate is not None:
            if not fam.noise:
                raise ValueError(f"gate applies to the noise defenses ({', '.join(_noise_names())}), not {fam.name!r}")
            if isinstance(self.gate, bool) or not isinstance(self.gate, (int, float)) or not 0 < self.gate <= 1:
                raise ValueError(f"gate is a top-probability threshold in (0, 1] (noise below it), got {self.gate!r}")
            object.__setattr__(self, "gate", float(self.gate))

    # ------------------------------------------------------------------------------------------- questions
    @property
    def info(self) -> Family:
        """The family entry (label, units, forward)."""
        return FAMILIES[self.family]

    @property
    def method(self) -> str:
        """Table label: Base, Input, Feature, Logits, AAA; a gated noise defense adds ``p<gate``, a detector
        ``+Blacklight`` / ``+kNN`` (a detector alone: ``Blacklight``)."""
        label = method_label(self.family, self.gate)
        if self.detector is None:
            return label
        return self.detector.label if self.family == "none" else f"{label}+{self.detector.label}"

    @property
    def is_noise(self) -> bool:
        """True for the randomized defenses (input, feature, logits noise)."""
        return self.info.noise

    @property
    def needs_calibration(self) -> bool:
        """True for a noise defense given by its target drop and not yet calibrated (no sigma)."""
        return self.is_noise and self.sigma is None

    @property
    def is_identity(self) -> bool:
        """True when the defended model computes exactly the undefended model (no defense, or zero noise)."""
        return self.family == "none" or (self.is_noise and self.sigma == 0.0)

    def replace(self, **changes: Any) -> DefenseSpec:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------ dict form
    def to_dict(self) -> dict[str, Any]:
        """The plain JSON-able form the results store keys runs by:
        ``{family, layers, drop, sigma, scaled, params}``, with non-default AAA settings in ``params.aaa``.
        ``DefenseSpec.from_dict(spec.to_dict()) == spec``."""
        params: dict[str, Any] = {}
        aaa = {k: v for k, v in dataclasses.asdict(self.aaa).items() if v != getattr(AAAConfig(), k)}
        if aaa:
            params["aaa"] = aaa
        if self.gate is not None:
            params["gate"] = self.gate
        if self.detector is not None:
            params["detector"] = str(self.detector)
        return {"family": self.family, "layers": list(self.layers), "drop": self.drop, "sigma": self.sigma,
                "scaled": self.scaled, "params": params}

    def calibration_dict(self) -> dict[str, Any]:
        """What a calibrated sigma depends on (besides model, data and seed): the spec without its sigma and
        without its detector (which acts in front of the model: noise with and without it share one sigma)."""
        d = self.to_dict()
        d.pop("sigma")
        d["params"].pop("detector", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DefenseSpec:
        """Inverse of :meth:`to_dict`; unknown keys fail (a typo must not be ignored silently)."""
        if not isinstance(d, dict):
            raise ValueError(f"a defense spec must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_DICT_KEYS))
        if unknown:
            raise ValueError(f"unknown defense spec keys {unknown}; allowed: {', '.join(_DICT_KEYS)}")
        kw = {k: v for k, v in d.items() if k != "params"}
        if "layers" in kw:
            kw["layers"] = (kw["layers"],) if isinstance(kw["layers"], str) else tuple(kw["layers"] or ())
        params = d.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"defense params must be a mapping, got {params!r}")
        bad = sorted(set(params) - set(_PARAM_KEYS))
        if bad:
            raise ValueError(f"unknown defense params {bad}; allowed: {', '.join(_PARAM_KEYS)}")
        if "aaa" in params:
            kw["aaa"] = aaa_config(params["aaa"])
        if "gate" in params:
            kw["gate"] = params["gate"]
        if "detector" in params:
            kw["detector"] = params["detector"]
        return cls(**kw)


def method_label(family_name: str, gate: float | None = None) -> str:
    """The table label of a defense: its family's label, with ``p<GATE`` for a confidence-gated one."""
    label = family(family_name).label
    return label if gate is None else f"{label} p<{gate:g}"


def aaa_config(raw: Any) -> AAAConfig:
    """An :class:`AAAConfig` from a mapping of its fields; unknown fields fail naming the valid ones."""
    if isinstance(raw, AAAConfig):
        return raw
    if not isinstance(raw, dict):
        raise ValueError(f"aaa settings must be a mapping, got {raw!r}")
    names = [f.name for f in dataclasses.fields(AAAConfig)]
    bad = sorted(set(raw) - set(names))
    if bad:
        raise ValueError(f"unknown aaa settings {bad}; allowed: {', '.join(names)}")
    return AAAConfig(**raw)


def _noise_names() -> list[str]:
    return [name for name, f in FAMILIES.items() if f.noise]
