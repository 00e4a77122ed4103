"""One entry point for "a model by name": registry names (``fmnist-vgg``) or timm names (``timm:resnet50``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rfd.models.classifier import ImageClassifier
from rfd.models.registry import create_model, list_models

__all__ = ["TIMM_PREFIX", "load_model"]

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"


def load_model(
    spec: str,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: tuple[int, int, int] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ImageClassifier:
    """Build the classifier ``spec`` in eval mode on ``device``.

    Args:
        spec: a registry name (see :func:`rfd.models.list_models`), loaded with its shipped weights or
            ``checkpoint``; or ``"timm:<name>"``, built by :func:`rfd.models.timm_adapter.create_timm_classifier`
            with weights from ``checkpoint`` (random weights without one, logged as a warning).
        checkpoint: local weights file (safetensors, or torch with ``weights_only=True``).
        num_classes, mean, std, input_size, model_kwargs: timm models only (registry models fix them).

    Raises:
        ValueError: unknown name, or timm-only options given for a registry model.
        FileNotFoundError: missing checkpoint.
    """
    if spec.startswith(TIMM_PREFIX):
        from rfd.models.timm_adapter import create_timm_classifier

        name = spec[len(TIMM_PREFIX):]
        if not name:
            raise ValueError("timm model spec needs a name after 'timm:', e.g. timm:resnet50")
        if checkpoint is None:
            logger.warning("%s: no checkpoint given, the model has random weights", spec)
        model = create_timm_classifier(name, checkpoint=checkpoint, num_classes=num_classes, mean=mean, std=std,
                                       input_size=input_size, **(model_kwargs or {}))
        return model.to(device)
    timm_only = {"num_classes": num_classes, "mean": mean, "std": std, "input_size": input_size,
                 "model_kwargs": model_kwargs or None}
    given = [k for k, v in timm_only.items() if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply only to timm: models; registry model {spec!r} defines its own")
    if spec not in list_models():
        raise ValueError(f"unknown model {spec!r}; registered models: {', '.join(list_models())}, "
                         "or timm:<name> for any timm model")
    return create_model(spec, checkpoint=Path(checkpoint) if checkpoint is not None else None, device=device)
