"""Registry of named reference models (timm-style): ``list_models``, ``create_model``, ``register_model``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from rfd.models.checkpoints import load_checkpoint
from rfd.models.classifier import ImageClassifier
from rfd.models.resnet import SmallResNet
from rfd.models.vgg import SmallVGG
from rfd.models.vit import SmallViT

__all__ = ["FMNIST_MEAN", "FMNIST_STD", "ModelEntry", "create_model", "get_entry", "list_models", "register_model"]

FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)


@dataclass(frozen=True)
class ModelEntry:
    """One registered model."""

    name: str  # registry key, e.g. "fmnist-vgg"
    build: Callable[[], ImageClassifier]  # builds the architecture with random weights
    checkpoint: str | None  # file name under rfd/assets/models, shipped with the package
    dataset: str  # dataset the weights were trained on
    description: str  # one line for `rfd models`
    members: tuple[str, ...] = ()  # a model set (rfd.models.model_set): registered members, each with its weights

    def checkpoint_path(self) -> Path | None:
        if self.checkpoint is None:
            return None
        return Path(str(resources.files("rfd") / "assets" / "models" / self.checkpoint))


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
    """Add ``entry`` to the registry (``overwrite=True`` to replace an existing name)."""
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(filter: str = "*") -> list[str]:
    """Registered names matching the shell pattern ``filter``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, filter))


def get_entry(name: str) -> ModelEntry:
    """The entry for ``name``; unknown names fail with the list of known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def create_model(
    name: str, *, pretrained: bool = True, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"
) -> ImageClassifier:
    """Build model ``name`` in eval mode on ``device``.

    With ``pretrained=True`` the weights come from ``checkpoint`` if given, else from the checkpoint shipped
    inside the package (no download ever happens).
    """
    entry = get_entry(name)
    if entry.members:
        if checkpoint is not None:
            raise ValueError(f"{name!r} is a model set: its members load their own weights; no checkpoint applies")
        from rfd.models.model_set import ModelSet

        members = [create_model(m, pretrained=pretrained, device=device) for m in entry.members]
        return ModelSet(members).eval().to(device)  # type: ignore[return-value]
    model = entry.build()
    path = Path(checkpoint) if checkpoint is not None else (entry.checkpoint_path() if pretrained else None)
    if pretrained:
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"no weights for {name!r} at {path}; train them with `rfd train {name} --out PATH` "
                "and pass checkpoint=PATH"
            )
        load_checkpoint(model, path)
    return model.eval().to(device)


def _fmnist(net: torch.nn.Module, head: str) -> ImageClassifier:
    return ImageClassifier(net, mean=FMNIST_MEAN, std=FMNIST_STD, input_shape=(1, 28, 28), num_classes=10, head=head)


register_model(ModelEntry(
    "fmnist-vgg", lambda: _fmnist(SmallVGG(), "classifier.4"), "fmnist-vgg.safetensors", "fashion-mnist",
    "VGG-style CNN, 4 conv + 2 FC layers",
))
register_model(ModelEntry(
    "fmnist-vgg-at", lambda: _fmnist(SmallVGG(), "classifier.4"), "fmnist-vgg-at.safetensors", "fashion-mnist",
    "fmnist-vgg architecture, PGD adversarially trained (l_inf eps 0.1, 3 steps, 3 epochs)",
))
register_model(ModelEntry(
    "fmnist-resnet", lambda: _fmnist(SmallResNet(), "fc"), "fmnist-resnet.safetensors", "fashion-mnist",
    "ResNet, stem + 3 basic blocks",
))
register_model(ModelEntry(
    "fmnist-vit", lambda: _fmnist(SmallViT(), "head"), "fmnist-vit.safetensors", "fashion-mnist",
    "ViT, 7x7 patches, 6 blocks of width 64",
))
def _set_of(*names: str) -> Callable[[], ImageClassifier]:
    """The build of a model set: its members with random weights (create_model loads each member's own)."""

    def build() -> ImageClassifier:
        from rfd.models.model_set import ModelSet

        return ModelSet([get_entry(n).build() for n in names])  # type: ignore[return-value]

    return build


register_model(ModelEntry(
    "fmnist-set", _set_of("fmnist-vgg", "fmnist-resnet", "fmnist-vit"), None, "fashion-mnist",
    "model set: each query answered by fmnist-vgg, fmnist-resnet or fmnist-vit, drawn uniformly (seeded)",
    members=("fmnist-vgg", "fmnist-resnet", "fmnist-vit"),
))
