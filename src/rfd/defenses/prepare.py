"""From a spec to a running defense: calibrate sigma when the spec gives a target drop, then wrap the model."""

from __future__ import annotations

import torch
from torch import nn

from rfd.defenses.calibration import CalibrationResult, calibrate
from rfd.defenses.defended import DefendedModel
from rfd.defenses.spec import DefenseSpec

__all__ = ["prepare_defense"]


def prepare_defense(
    model: nn.Module,
    spec: DefenseSpec,
    *,
    seed: int = 0,
    calib_images: torch.Tensor | None = None,
    calib_labels: torch.Tensor | None = None,
    draws: int = 10,
    progress: bool = False,
) -> tuple[DefendedModel, CalibrationResult | None]:
    """The defended model of ``spec``, calibrating its sigma first when the spec gives only a target ``drop``.

    Args:
        model: the undefended classifier ([0, 1] images (N, C, H, W) -> logits (N, K)), on its device.
        spec: the defense; with ``drop`` and no ``sigma`` it is calibrated on the calibration images.
        seed: seed of the noise (the calibration's draws and the defended module's generator).
        calib_images, calib_labels: the calibration split (never the evaluation images), float32 (M, C, H, W) in
            [0, 1] and int64 (M,); needed for a target drop and for scaled feature noise.
        draws: noise draws per sigma while calibrating.
        progress: show the calibration's progress bar.

    Returns:
        ``(defended, calibration)``; ``calibration`` is None when no calibration ran.
    """
    needs_images = spec.needs_calibration or spec.scaled
    if needs_images:
        if calib_images is None or (spec.needs_calibration and calib_labels is None):
            what = f"a target drop ({spec.drop:g})" if spec.needs_calibration else "scaled feature noise"
            raise ValueError(f"{what} needs calibration images and labels (the calibration split, never the "
                             "evaluation images)")
        shape = getattr(model, "input_shape", None)
        if shape is not None and tuple(calib_images.shape[1:]) != tuple(shape):
            raise ValueError(f"calibration images have shape {tuple(calib_images.shape[1:])} but the model expects "
                             f"{tuple(shape)}; calibrate on images of the model's dataset, or give sigma")
    calibration = None
    if spec.needs_calibration:
        assert calib_images is not None and calib_labels is not None
        calibration = calibrate(model, spec, calib_images, calib_labels, draws=draws, seed=seed, progress=progress)
        spec = calibration.spec
    defended = DefendedModel(model, spec, seed=seed, calib_images=calib_images if spec.scaled else None)
    return defended, calibration
