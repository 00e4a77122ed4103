"""Any timm model as an rfd classifier: built by name, weights from a local file, normalization inside.

No weights are ever downloaded: ``pretrained`` must stay False and trained weights come from a local
checkpoint (safetensors, or a torch file read with ``weights_only=True``). timm is an optional dependency
(``pip install 'rfd[timm]'``); it is imported only when a timm model is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfd.models.classifier import ImageClassifier

__all__ = ["create_timm_classifier", "read_state_dict"]

logger = logging.getLogger(__name__)

# Keys under which training scripts (timm's train.py, DeiT, torchvision references) nest the weights.
_NESTED_KEYS = ("state_dict", "model")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or a torch file (``weights_only=True``, never full pickle).

    A dict nested under ``"state_dict"`` or ``"model"`` is unwrapped, and a ``"module."`` prefix on every key
    (left by DistributedDataParallel) is removed.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is unreadable or does not hold a dict of tensors.
    """
    import pickle

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        obj: Any = load_file(str(p)) if p.suffix == ".safetensors" else torch.load(str(p), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _classifier_name(net: nn.Module) -> str | None:
    """Name (relative to ``net``) of timm's classifier layer: ``get_classifier()``, else ``pretrained_cfg``."""
    getter = getattr(net, "get_classifier", None)
    clf = getter() if callable(getter) else None
    if isinstance(clf, nn.Module) and not isinstance(clf, nn.Identity):
        for name, module in net.named_modules():
            if module is clf and name:
                return name
    cfg_name = (getattr(net, "pretrained_cfg", None) or {}).get("classifier")
    names = dict(net.named_modules())
    if isinstance(cfg_name, str) and cfg_name in names:
        return cfg_name
    return None


def _input_size(net: nn.Module, in_chans: int, cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) the built model expects: a patch embedding's image size wins over the pretrained config,
    because ``img_size=`` changes the model but not its config."""
    patch_embed = getattr(net, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return (in_chans, int(size[0]), int(size[1]))
    cfg_size = cfg.get("input_size")
    if not cfg_size or len(cfg_size) != 3:
        raise ValueError("timm model has no input_size in its config; pass input_size=(C, H, W)")
    return (in_chans, int(cfg_size[1]), int(cfg_size[2]))


def _import_timm() -> Any:
    from rfd.extras import require

    return require("timm", "timm models")


def create_timm_classifier(
    name: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: tuple[int, int, int] | None = None,
    pretrained: bool = False,
    **model_kwargs: Any,
) -> ImageClassifier:
    """Build timm model ``name`` (random weights, or weights from ``checkpoint``) as an :class:`ImageClassifier`.

    Args:
        name: a timm model name, e.g. "vit_base_patch16_224", "deit_small_patch16_224", "resnet50", "vgg19".
        checkpoint: local weights: a timm/torch state dict (``.pth``/``.pt``, read with ``weights_only=True``)
            or safetensors, either of the bare timm model or of an rfd classifier saved with
            :func:`rfd.models.save_checkpoint` (keys ``net.*`` plus its ``mean``/``std``).
        num_classes: classes K of the head (default: timm's, usually 1000).
        mean, std: per-channel normalization in [0, 1] pixel units (default: the timm config's, or the ones
            stored in an rfd checkpoint).
        input_size: (C, H, W) of the input; C is passed to timm as ``in_chans``. H, W default to the model's
            (``img_size`` of a patch embedding, else the timm config). Transformers built for another size
            also need ``img_size=`` in ``model_kwargs``.
        pretrained: must be False; rfd never downloads weights.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=32, patch_size=8, depth=2``).

    Returns:
        An :class:`ImageClassifier` in eval mode taking [0, 1] images (N, C, H, W); ``head`` names timm's
        classifier layer (``net.head``, ``net.fc``, ``net.head.fc`` ...).

    Raises:
        ValueError: for ``pretrained=True``, an unknown timm name, mean/std of the wrong length, conflicting
            normalization, or weights that do not fit the model.
    """
    if pretrained:
        raise ValueError(
            "pretrained=True would download weights, which rfd never does; download them yourself and pass checkpoint=PATH"
        )
    timm = _import_timm()
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        raise ValueError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (a classifier needs logits), got {num_classes}")
        kwargs["num_classes"] = num_classes
    if input_size is not None:
        if "in_chans" in kwargs and int(kwargs["in_chans"]) != int(input_size[0]):
            raise ValueError(f"in_chans={kwargs['in_chans']} contradicts input_size={tuple(input_size)}")
        kwargs["in_chans"] = int(input_size[0])
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:  # an argument this architecture does not take, e.g. img_size for a ResNet
        raise ValueError(f"timm model {name!r} rejected the arguments {kwargs}: {exc}") from exc
    cfg: dict[str, Any] = dict(getattr(net, "pretrained_cfg", None) or {})

    state = read_state_dict(checkpoint) if checkpoint is not None else None
    wrapped = state is not None and any(k.startswith("net.") for k in state)
    if wrapped:
        assert state is not None
        mean = _agree(mean, state.get("mean"), "mean", checkpoint)
        std = _agree(std, state.get("std"), "std", checkpoint)
    in_chans = int(kwargs.get("in_chans", (cfg.get("input_size") or (3,))[0]))
    shape = tuple(int(v) for v in input_size) if input_size is not None else _input_size(net, in_chans, cfg)
    mean = tuple(mean) if mean is not None else tuple(cfg.get("mean") or ())
    std = tuple(std) if std is not None else tuple(cfg.get("std") or ())
    if len(mean) != shape[0] or len(std) != shape[0]:
        raise ValueError(
            f"timm model {name!r} takes {shape[0]} channel(s) but mean/std have {len(mean)}/{len(std)} values "
            f"(config: {cfg.get('mean')}/{cfg.get('std')}); pass mean= and std= with one value per channel"
        )
    model = ImageClassifier(net, mean=mean, std=std, input_shape=shape,  # type: ignore[arg-type]
                            num_classes=int(getattr(net, "num_classes", 0) or 0), head=_classifier_name(net))
    if state is not None:
        target: nn.Module = model if wrapped else net
        try:
            target.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{checkpoint}: weights do not fit timm model {name!r} with {kwargs}: {exc}") from exc
    else:
        logger.info("timm model %s has random weights (no checkpoint given)", name)
    return model.eval()


def _agree(given: Sequence[float] | None, stored: torch.Tensor | None, what: str, path: object) -> Sequence[float] | None:
    """The normalization to use when an rfd checkpoint stores one: the stored values, unless the caller gave
    different ones (an error rather than a silent choice)."""
    if stored is None:
        return given
    values = [float(v) for v in stored.flatten()]
    if given is not None and (len(given) != len(values) or not torch.allclose(
            torch.tensor(list(given), dtype=torch.float32), stored.flatten().float())):
        raise ValueError(f"{path} stores {what}={values} but {what}={list(given)} was given")
    return values
