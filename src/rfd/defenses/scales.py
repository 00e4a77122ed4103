"""Per-feature standard deviation of a layer's clean output, for the "scaled" feature noise.

The authors' ``--scale_noise`` option scales the noise of each feature by that feature's spread on clean data,
so one sigma means "this many feature standard deviations" at any layer.
"""

from __future__ import annotations

import torch
from torch import nn

from rfd.data.checks import check_images
from rfd.defenses.layers import LayerTarget

__all__ = ["device_of", "feature_std"]


@torch.no_grad()
def feature_std(
    model: nn.Module, targets: list[LayerTarget], images: torch.Tensor, *, batch_size: int = 256
) -> list[torch.Tensor]:
    """Per-feature std over ``images`` of each target's feature, one tensor of the feature's shape per target.

    Args:
        model: the undefended model (its forward is run as is; temporary hooks are always removed).
        targets: where to record (a module's output, or with ``pre=True`` its first input).
        images: clean calibration images, float32 (N, C, H, W) in [0, 1], N >= 2.
        batch_size: images per forward.

    Returns:
        For each target, a float32 tensor of shape ``feature.shape[1:]`` on the model's device (the unbiased
        std over the N images, per feature element: per channel and position for conv maps, per token and
        channel for token tensors).
    """
    check_images(images, "calibration images")
    if images.shape[0] < 2:
        raise ValueError(f"scaled noise needs at least 2 calibration images to measure a std, got {images.shape[0]}")
    n = images.shape[0]
    sums: list[torch.Tensor | None] = [None] * len(targets)
    sqs: list[torch.Tensor | None] = [None] * len(targets)

    def recorder(i: int, pre: bool):  # type: ignore[no-untyped-def]
        def hook(module, inputs, output=None):  # type: ignore[no-untyped-def]
            feat = inputs[0] if pre else output
            if not isinstance(feat, torch.Tensor):
                raise ValueError(f"layer {targets[i].name!r} yields {type(feat).__name__}, not a tensor")
            f = feat.detach().double()
            s, q = f.sum(0), (f * f).sum(0)
            if sums[i] is None:
                sums[i], sqs[i] = s, q
            else:
                if sums[i].shape != s.shape:  # type: ignore[union-attr]
                    raise ValueError(f"layer {targets[i].name!r} changed feature shape between batches")
                sums[i] += s  # type: ignore[operator]
                sqs[i] += q  # type: ignore[operator]

        return hook

    handles = []
    try:
        for i, t in enumerate(targets):
            if t.pre:
                handles.append(t.module.register_forward_pre_hook(recorder(i, True)))
            else:
                handles.append(t.module.register_forward_hook(recorder(i, False)))
        device = device_of(model)
        for start in range(0, n, batch_size):
            model(images[start:start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    out = []
    for t, s, q in zip(targets, sums, sqs):
        if s is None or q is None:
            raise ValueError(f"layer {t.name!r} was never called in a forward pass; it cannot carry noise")
        var = (q - s * s / n) / (n - 1)
        out.append(var.clamp_min(0).sqrt().float())
    return out


def device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
