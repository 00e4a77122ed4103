"""Building a detector from its spec (the one place the API, studies and the server turn a spec into one)."""

from __future__ import annotations

import torch
from torch import nn

from rfd.defenses.detector_spec import DetectorSpec, parse_detector
from rfd.defenses.layers import resolve_layers
from rfd.detect.base import Detector
from rfd.detect.blacklight import BlacklightDetector
from rfd.detect.knn import KNNDetector

__all__ = ["PenultimateEncoder", "build_detector"]


class PenultimateEncoder(nn.Module):
    """The input of a model's final classifier layer ("penultimate" features, as
    :func:`rfd.defenses.layers.resolve_layers` finds it), flattened to (B, D), captured by a forward pre-hook
    installed only during this module's own forward (the model is shared, e.g. with its defended copy, and must
    be the clean one, in eval mode). Images are moved to the model's device."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.target = resolve_layers(model, ("penultimate",))[0].module

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        got: list[torch.Tensor] = []

        def grab(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            got.append(args[0].detach())

        param = next(self.model.parameters(), None)
        handle = self.target.register_forward_pre_hook(grab)
        try:
            self.model(x if param is None else x.to(param.device))
        finally:
            handle.remove()
        return got[0].flatten(1)


def build_detector(spec: DetectorSpec | str, *, seed: int, model: nn.Module | None = None,
                   benign: torch.Tensor | None = None) -> Detector:
    """The detector of ``spec``. Blacklight: salted with ``seed`` (the deployment's secret). kNN: embeds pixels or
    the *clean* ``model``'s penultimate features (``embedding``), with its threshold calibrated on ``benign``
    images (N, C, H, W), which it needs."""
    spec = parse_detector(spec)
    if spec.kind == "blacklight":
        return BlacklightDetector(spec, salt_seed=seed)
    if benign is None:
        raise ValueError("the kNN detector needs benign images (N, C, H, W) to set its threshold (benign=...)")
    encoder: nn.Module | None = None
    if spec.embedding == "penultimate":
        if model is None:
            raise ValueError("the kNN detector on penultimate features needs the (clean) model (model=...)")
        encoder = PenultimateEncoder(model)
    det = KNNDetector(spec, encoder=encoder)
    det.calibrate(benign)
    return det
