"""The defended model: a module with the wrapped classifier's call signature and a defense applied.

Feature noise is added by forward hooks on the named layers (or a forward pre-hook on the final classifier
layer for ``"penultimate"``). The hooks are registered when the defended module is built and act only while
*this* module's ``forward`` runs, so calling the original model directly still gives clean outputs; they are
removed by :meth:`DefendedModel.remove`, by leaving a ``with`` block, or when the defended module is garbage
collected. Noise comes from the defended module's own ``torch.Generator`` (one per device, all seeded from
its ``seed``), fresh on every forward and independent per sample. Each family's forward is its entry in
:data:`rfd.defenses.FAMILIES`.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rfd.defenses.hooks import NoiseHook
from rfd.defenses.layers import LayerTarget, resolve_layers
from rfd.defenses.scales import device_of, feature_std
from rfd.defenses.spec import DefenseSpec

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DefendedModel", "defend"]

log = logging.getLogger(__name__)


class _Runtime:
    """Per-forward switches, kept off nn.Module attribute handling (its __setattr__ is slow on the hot path)."""

    __slots__ = ("active", "device", "generator", "sign")

    def __init__(self) -> None:
        self.active = False  # True only while the owner's forward runs: the raw model stays clean
        self.sign = 1.0  # -1 during the second half of an antithetic pair
        self.device: torch.device | None = None  # cache of the last generator looked up
        self.generator: torch.Generator | None = None


class DefendedModel(nn.Module):
    """``model`` with the defense ``spec``: images (N, C, H, W) in [0, 1] -> logits (N, K).

    Use :func:`defend` to build one. Attributes: ``model`` (the wrapped model), ``spec``, ``targets`` (the
    resolved feature-noise layers), ``injections`` (Counter: layer name -> noise draws made, for checks).
    ``seed`` (of the noise generator). ``input_shape`` / ``num_classes`` are copied from the model when it has them. Not thread-safe: one forward
    at a time per defended module (the noise stream is shared).
    """

    model: nn.Module
    spec: DefenseSpec

    def __init__(
        self,
        model: nn.Module,
        spec: DefenseSpec,
        *,
        seed: int = 0,
        calib_images: torch.Tensor | None = None,
        batch_size: int = 256,
        _scales: list[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(spec, DefenseSpec):
            raise ValueError(f"spec must be a DefenseSpec, got {type(spec).__name__}")
        if spec.needs_calibration:
            raise ValueError(f"the {spec.family} defense has a target drop ({spec.drop:g}) but no sigma yet: calibrate "
                             "it first (rfd.calibrate(model, spec, calib_images, calib_labels)) and defend with the "
                             "calibrated spec")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.model = model
        self.seed = seed
        self.spec = spec
        for attr in ("input_shape", "num_classes"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))
        self._rt = _Runtime()
        self._generators: dict[str, torch.Generator] = {}
        self._handles: list[Any] = []
        self._removed = False
        self.injections: Counter[str] = Counter()
        self.targets: list[LayerTarget] = resolve_layers(model, spec.layers) if spec.info.layers else []
        self._scale_names: list[str] = []
        if spec.scaled:
            if _scales is None:
                if calib_images is None:
                    raise ValueError(
                        "scaled feature noise needs clean calibration images to measure per-feature std: "
                        "pass calib_images=... (the calib split, never the eval images)"
                    )
                _scales = feature_std(model, self.targets, calib_images, batch_size=batch_size)
            for i, s in enumerate(_scales):
                self.register_buffer(f"scale_{i}", s.detach().clone())
                self._scale_names.append(f"scale_{i}")
        self._install()

    # ----------------------------------------------------------------------------------------------- hooks
    def _install(self) -> None:
        for i, t in enumerate(self.targets):
            hook = NoiseHook(self, i)
            h = t.module.register_forward_pre_hook(hook) if t.pre else t.module.register_forward_hook(hook)
            self._handles.append(h)

    def _uninstall(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def remove(self) -> None:
        """Remove every hook from the wrapped model; afterwards this module refuses to run."""
        self._uninstall()
        self._removed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __del__(self) -> None:
        try:
            self._uninstall()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown: nothing left to clean
            pass

    def __deepcopy__(self, memo: dict[int, Any]) -> DefendedModel:
        # Copy the model without our hooks, then hook the copy: the copy's hooks must point at the copy.
        self._uninstall()
        try:
            model = copy.deepcopy(self.model, memo)
        finally:
            if not self._removed:
                self._install()
        scales = [getattr(self, n).detach().clone() for n in self._scale_names] if self.spec.scaled else None
        new = type(self)(model, self.spec, seed=self.seed, _scales=scales)
        new.training = self.training
        for g in self._generators.values():
            new._generator(g.device).set_state(g.get_state())
        if self._removed:
            new.remove()
        return new

    # ----------------------------------------------------------------------------------------------- noise
    def manual_seed(self, seed: int | None = None) -> DefendedModel:
        """Restart the noise stream from ``seed`` (default: the current ``seed``); returns self."""
        if seed is not None:
            self.seed = int(seed)
        self._generators.clear()
        self._rt.device = self._rt.generator = None
        inner = getattr(self.model, "manual_seed", None)  # a randomized base model (a model set) restarts too
        if callable(inner):
            inner(self.seed)
        return self

    def set_sigma(self, sigma: float) -> DefendedModel:
        """Change the noise level in place (``spec`` is replaced); the noise stream continues. Returns self."""
        self.spec = self.spec.replace(sigma=float(sigma))
        return self

    def _generator(self, device: torch.device) -> torch.Generator:
        rt = self._rt
        if device == rt.device and rt.generator is not None:
            return rt.generator
        key = str(device)
        g = self._generators.get(key)
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[key] = g
        rt.device, rt.generator = device, g
        return g

    def gaussian(self, like: torch.Tensor) -> torch.Tensor:
        """sigma * sign * N(0, 1) noise shaped like ``like``, one independent draw per element and sample."""
        z = torch.empty_like(like, memory_format=torch.contiguous_format)
        assert self.spec.sigma is not None  # refused at construction otherwise
        z.normal_(0.0, self.spec.sigma, generator=self._generator(like.device))
        return z.neg_() if self._rt.sign < 0 else z

    @property
    def noise_active(self) -> bool:
        """True only while this module's forward runs (the hooks add noise then, never on the raw model)."""
        return self._rt.active

    def add_feature_noise(self, index: int, feat: torch.Tensor) -> torch.Tensor:
        """``feat`` plus this module's noise for target layer ``index`` (scaled per feature when the spec says so)."""
        t = self.targets[index]
        if not feat.is_floating_point():
            raise ValueError(f"layer {t.name!r} yields a {feat.dtype} tensor; noise needs floating point features")
        self.injections[t.name] += 1
        noise = self.gaussian(feat)
        if self.spec.scaled:
            scale = getattr(self, self._scale_names[index])
            if tuple(feat.shape[1:]) != tuple(scale.shape):
                raise ValueError(
                    f"layer {t.name!r} now yields features of shape {tuple(feat.shape[1:])}, but its std was "
                    f"measured on shape {tuple(scale.shape)}; use inputs of the calibration size"
                )
            noise = noise.mul_(scale.to(device=feat.device, dtype=feat.dtype))
        return noise.add_(feat)  # in place into the fresh noise buffer: one allocation less per forward

    # --------------------------------------------------------------------------------------------- forward
    def _check_input(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"defended model input must be a torch.Tensor (N, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"defended model input must have shape (N, C, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"defended model input must be floating point in [0, 1], got dtype {x.dtype}")
        shape = getattr(self, "input_shape", None)
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"defended model expects images of shape (N, {', '.join(map(str, shape))}), "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of images ``x`` (N, C, H, W) in [0, 1], with the defense applied."""
        if self._removed:
            raise RuntimeError("this defended model was removed (its hooks are gone); build a new one with defend()")
        self._check_input(x)
        if self.spec.is_identity:
            return self.model(x)
        if self.spec.gate is not None:
            return self._gated(x)
        return self.spec.info.forward(self, x)

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        # Noise only where the undefended model is unsure (top probability below the gate): confident queries get
        # the clean logits; the noisy forward (and its draws) covers the gated rows only.
        clean = self.model(x)
        assert self.spec.gate is not None
        low = clean.detach().float().softmax(1).amax(1) < self.spec.gate
        if not bool(low.any()):
            return clean
        out = clean.clone()
        out[low] = self.spec.info.forward(self, x[low]).to(out.dtype)
        return out

    @contextmanager
    def hooks_active(self) -> Iterator[None]:
        """The feature-noise hooks add noise only inside this block (the raw model stays clean outside it)."""
        self._rt.active = True
        try:
            yield
        finally:
            self._rt.active = False

    def antithetic_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two forwards whose noise is ``+delta`` and ``-delta`` (antithetic sampling, Ilyas et al. 2018).

        The generator state is saved before the first forward and restored before the second, which runs with
        the sign flipped, so every noise draw (input, feature, logits) is exactly negated. Returns two logits
        tensors (N, K). The noise stream ends where one ordinary forward would have left it.
        """
        # Create the generators a forward will use (input device, model device) before saving their states.
        self._generator(x.device)
        self._generator(device_of(self.model))
        states = {k: g.get_state() for k, g in self._generators.items()}
        plus = self.forward(x)
        after = {k: g.get_state() for k, g in self._generators.items()}
        for k, s in states.items():
            self._generators[k].set_state(s)
        self._rt.sign = -1.0
        try:
            minus = self.forward(x)
        finally:
            self._rt.sign = 1.0
            for k, s in after.items():
                self._generators[k].set_state(s)
        return plus, minus

    def extra_repr(self) -> str:
        s = self.spec
        sigma = "None" if s.sigma is None else f"{s.sigma:g}"
        return f"family={s.family}, sigma={sigma}, layers={list(s.layers) or None}, scaled={s.scaled}, seed={self.seed}"


def defend(
    model: nn.Module,
    spec: DefenseSpec | dict[str, Any],
    *,
    seed: int = 0,
    calib_images: torch.Tensor | None = None,
    batch_size: int = 256,
) -> DefendedModel:
    """Wrap ``model`` with the defense ``spec``; the result maps [0, 1] images (N, C, H, W) to logits (N, K).

    Args:
        model: a classifier taking [0, 1] images (normalization inside), e.g. from ``rfd.models.create_model``.
        spec: a :class:`DefenseSpec` with its sigma (or its ``to_dict()``); a spec given by a target drop must be
            calibrated first (:func:`rfd.defenses.calibrate`).
        seed: seed of the defended module's noise generator (same seed, same outputs).
        calib_images: clean calibration images (N, C, H, W) in [0, 1]; needed only for ``scaled=True``, where
            the per-feature std of each noisy layer is measured once on them. Use the calibration split.
        batch_size: images per forward while measuring that std.

    The model itself is not modified beyond hooks that act only inside the defended module's forward and are
    removed by ``.remove()`` / a ``with`` block. With family ``"none"`` or ``sigma=0`` the outputs are
    bit-identical to ``model(x)``.
    """
    if isinstance(spec, dict):
        spec = DefenseSpec.from_dict(spec)
    return DefendedModel(model, spec, seed=seed, calib_images=calib_images, batch_size=batch_size)
