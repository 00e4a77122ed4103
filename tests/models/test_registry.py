"""The model registry: names, filters, clear errors, the classifier contract of every reference model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rfd.models import (
    ImageClassifier,
    ModelEntry,
    create_model,
    evaluate_accuracy,
    get_entry,
    list_models,
    register_model,
)

REFERENCE = ("fmnist-vgg", "fmnist-resnet", "fmnist-vit")
# Issue targets on the full 10k test set; the bundled 1000-image eval split may sit a little lower
# (standard error ~0.9 points), hence the margin.
TARGETS = {"fmnist-vgg": 0.92, "fmnist-resnet": 0.92, "fmnist-vit": 0.88}
MARGIN = 0.015


def test_list_models_sorted_and_filtered() -> None:
    names = list_models()
    assert names == sorted(names) and set(REFERENCE) <= set(names)
    assert "fmnist-vgg" in list_models("fmnist-v*") and "fmnist-vit" in list_models("fmnist-v*")
    assert "fmnist-resnet" not in list_models("fmnist-v*")
    assert list_models("*resnet") == ["fmnist-resnet"]
    assert list_models("imagenet-*") == []


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'fmnist-mlp'; registered models: .*fmnist-resnet.*fmnist-vgg"):
        create_model("fmnist-mlp", pretrained=False)


def test_register_twice_needs_overwrite(monkeypatch: pytest.MonkeyPatch) -> None:
    from rfd.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    entry = get_entry("fmnist-vgg")
    with pytest.raises(ValueError, match="already registered"):
        register_model(entry)
    register_model(ModelEntry("fmnist-vgg", entry.build, None, "x", "replaced"), overwrite=True)
    assert get_entry("fmnist-vgg").description == "replaced"


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_model_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, pretrained=False)
    assert isinstance(model, ImageClassifier) and not model.training
    assert model.input_shape == (1, 28, 28) and model.num_classes == 10
    head = dict(model.named_modules())[model.head]
    assert isinstance(head, nn.Linear) and head.out_features == 10
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    # normalization lives inside: the wrapped net sees (x - mean) / std
    with torch.no_grad():
        assert torch.allclose(logits, model.net((x - model.mean) / model.std))


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="rfd train fmnist-vgg"):
        create_model("fmnist-vgg", checkpoint=tmp_path / "absent.safetensors")


def test_every_registered_checkpoint_is_shipped_and_loads(shipped_checkpoint) -> None:  # type: ignore[no-untyped-def]
    # an entry that names a checkpoint under rfd/assets/models promises it ships with the package
    declared = [n for n in list_models() if get_entry(n).checkpoint is not None]
    assert set(declared) >= {*REFERENCE, "fmnist-vgg-at"}
    for name in declared:
        model = create_model(name, checkpoint=shipped_checkpoint(name))
        assert isinstance(model, ImageClassifier) and not model.training


@pytest.mark.slow
@pytest.mark.parametrize("name", REFERENCE)
def test_shipped_model_accuracy_on_bundled_eval(name: str, bundled_eval,  # type: ignore[no-untyped-def]
                                                reference_model) -> None:
    acc = evaluate_accuracy(reference_model(name), bundled_eval.images, bundled_eval.labels)
    assert acc >= TARGETS[name] - MARGIN, f"{name}: {acc:.4f} on bundled eval"
