"""Defense specifications: frozen, keyword-only dataclasses that round-trip through plain dicts.

A spec says *what* defense to apply (kind, noise level, layers, seed); :func:`rfd.defenses.defend` turns it
into a module. Specs are stored in configs and in the results store, hence ``to_dict`` / ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "NOISE_KINDS", "PENULTIMATE", "AAAConfig", "DefenseSpec"]

# "none": the model as is; "input": RND/SND (noise on the [0, 1] image); "feature": the paper's randomized
# feature defense (noise on hidden features); "logits": noise on the logits; "aaa": Chen et al. 2022.
KINDS = ("none", "input", "feature", "logits", "aaa")
NOISE_KINDS = ("input", "feature", "logits")
# Special layer name: the input of the model's final classifier layer (the paper's default layer).
PENULTIMATE = "penultimate"


@dataclass(frozen=True, kw_only=True)
class AAAConfig:
    """Settings of AAA (Chen et al. 2022, "Adversarial Attack on Attackers", NeurIPS), defaults as in the paper."""

    interval: float = 6.0  # attractor interval: attractors sit at (k - dev) * interval on the logit margin
    reverse_step: float = 1.0  # how far past the attractor the margin is pushed: target = a - step * (m - a)
    calibration_weight: float = 5.0  # weight of the "keep the top probability" term in the loss
    steps: int = 100  # Adam steps on the logits
    lr: float = 0.1  # Adam learning rate
    temperature: float = 1.0  # softmax temperature of the calibration term
    dev: float = 0.5  # offset of the attractor grid (in units of the interval)

    def __post_init__(self) -> None:
        for name in ("interval", "lr", "temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"AAAConfig.{name} must be a positive finite number, got {v!r}")
        for name in ("reverse_step", "calibration_weight", "dev"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"AAAConfig.{name} must be a non-negative finite number, got {v!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"AAAConfig.steps must be a non-negative int, got {self.steps!r}")


@dataclass(frozen=True, kw_only=True)
class DefenseSpec:
    """What defense to apply.

    Attributes:
        kind: one of ``"none"``, ``"input"``, ``"feature"``, ``"logits"``, ``"aaa"``.
        sigma: noise standard deviation. Input noise: pixel units of the [0, 1] image. Feature noise: units of
            the layer's output, or multiples of its per-feature clean std with ``scaled=True``. Logits: logit units.
        layers: module names as in ``model.named_modules()`` for ``kind="feature"``; ``"penultimate"`` is the
            input of the final classifier layer. Several layers get independent noise of the same sigma.
        scaled: feature noise ``N(0, sigma^2 s^2)`` with ``s`` the per-feature std on clean calibration images.
        seed: seed of the defended module's own noise generator (same seed, same outputs).
        aaa: AAA settings (used only with ``kind="aaa"``).
    """

    kind: str = "none"
    sigma: float = 0.0
    layers: tuple[str, ...] = (PENULTIMATE,)
    scaled: bool = False
    seed: int = 0
    aaa: AAAConfig = field(default_factory=AAAConfig)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown defense kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not math.isfinite(self.sigma):
            raise ValueError(f"sigma must be a finite number, got {self.sigma!r}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if isinstance(self.layers, str):  # a lone string would be split into characters
            object.__setattr__(self, "layers", (self.layers,))
        layers = tuple(self.layers)
        if not all(isinstance(n, str) and n for n in layers):
            raise ValueError(f"layers must be non-empty module names, got {list(layers)!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers lists a module twice: {list(layers)!r}")
        if self.kind == "feature" and not layers:
            raise ValueError("feature noise needs at least one layer (e.g. layers=('penultimate',))")
        object.__setattr__(self, "layers", layers)
        if self.scaled and self.kind != "feature":
            raise ValueError(f"scaled=True applies to feature noise only, not kind={self.kind!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not isinstance(self.aaa, AAAConfig):
            raise ValueError(f"aaa must be an AAAConfig, got {type(self.aaa).__name__}")

    @property
    def is_noise(self) -> bool:
        """True for the randomized defenses (input, feature, logits noise)."""
        return self.kind in NOISE_KINDS

    @property
    def is_identity(self) -> bool:
        """True when the defended model computes exactly the undefended model (no defense, or zero noise)."""
        return self.kind == "none" or (self.is_noise and self.sigma == 0.0)

    def replace(self, **changes: Any) -> DefenseSpec:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``DefenseSpec.from_dict(spec.to_dict()) == spec``."""
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DefenseSpec:
        """Inverse of :meth:`to_dict`; unknown keys fail (a typo must not be ignored silently)."""
        if not isinstance(d, dict):
            raise ValueError(f"DefenseSpec.from_dict needs a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DefenseSpec keys {unknown}; allowed: {sorted(names)}")
        kw = dict(d)
        if "layers" in kw:
            kw["layers"] = (kw["layers"],) if isinstance(kw["layers"], str) else tuple(kw["layers"])
        if "aaa" in kw and isinstance(kw["aaa"], dict):
            anames = {f.name for f in dataclasses.fields(AAAConfig)}
            bad = sorted(set(kw["aaa"]) - anames)
            if bad:
                raise ValueError(f"unknown AAAConfig keys {bad}; allowed: {sorted(anames)}")
            kw["aaa"] = AAAConfig(**kw["aaa"])
        return cls(**kw)
