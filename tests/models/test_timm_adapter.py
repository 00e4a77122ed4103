"""timm adapter: tiny randomly initialised timm models built offline, [0, 1] contract, checkpoints."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rfd.models import ImageClassifier, save_checkpoint
from rfd.models.timm_adapter import create_timm_classifier, read_state_dict

VIT = {"img_size": 32, "patch_size": 8, "depth": 2}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (e.g. a weight download) fails the test."""

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _vit(seed: int = 0, **kw) -> ImageClassifier:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return create_timm_classifier("vit_tiny_patch16_224", num_classes=10, **VIT, **kw)


def _resnet(seed: int = 0, **kw) -> ImageClassifier:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return create_timm_classifier("resnet10t", num_classes=10, **kw)


def _x(c: int = 3, s: int = 32) -> torch.Tensor:
    return torch.rand(2, c, s, s, generator=torch.Generator().manual_seed(5))


def _out(model: nn.Module, x: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(_x() if x is None else x)


def test_tiny_vit_contract() -> None:
    model = _vit()
    assert isinstance(model, ImageClassifier) and not model.training
    assert model.input_shape == (3, 32, 32) and model.num_classes == 10
    assert model.head == "net.head"
    assert dict(model.named_modules())[model.head] is model.net.get_classifier()
    cfg = model.net.pretrained_cfg
    assert model.mean.flatten().tolist() == pytest.approx(list(cfg["mean"]))
    assert model.std.flatten().tolist() == pytest.approx(list(cfg["std"]))
    x = _x()
    logits = _out(model, x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    with torch.no_grad():
        assert torch.allclose(logits, model.net((x - model.mean) / model.std))


def test_tiny_resnet_contract_and_explicit_normalization() -> None:
    model = _resnet()
    assert model.head == "net.fc" and model.num_classes == 10
    assert model.input_shape == (3, *model.net.pretrained_cfg["input_size"][1:])
    assert model.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert _out(model).shape == (2, 10)
    gray = _resnet(input_size=(1, 32, 32), mean=(0.5,), std=(0.25,))
    assert gray.input_shape == (1, 32, 32) and gray.mean.flatten().tolist() == [0.5]
    x = _x(c=1)
    with torch.no_grad():
        assert torch.allclose(gray(x), gray.net((x - 0.5) / 0.25))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="never does"):
        create_timm_classifier("resnet10t", pretrained=True)
    with pytest.raises(ValueError, match="unknown timm model 'resnet10x'; similar: resnet10t"):
        create_timm_classifier("resnet10x")
    with pytest.raises(ValueError, match="1 channel.*mean/std have 3/3"):
        create_timm_classifier("resnet10t", num_classes=10, input_size=(1, 32, 32))
    with pytest.raises(ValueError, match="contradicts input_size"):
        create_timm_classifier("resnet10t", input_size=(1, 32, 32), in_chans=3, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="rejected the arguments.*img_size"):
        create_timm_classifier("resnet10t", img_size=32)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_timm_classifier("resnet10t", num_classes=0)


def test_rfd_checkpoint_round_trip(tmp_path: Path) -> None:
    src = _vit(seed=1, mean=(0.4, 0.4, 0.4), std=(0.2, 0.3, 0.2))
    path = save_checkpoint(src, tmp_path / "vit.safetensors")
    assert not torch.equal(_out(src), _out(_vit(seed=2)))
    dst = create_timm_classifier("vit_tiny_patch16_224", num_classes=10, checkpoint=path, **VIT)
    assert torch.equal(_out(src), _out(dst))
    assert dst.std.flatten().tolist() == pytest.approx([0.2, 0.3, 0.2])  # normalization comes with the file
    with pytest.raises(ValueError, match="stores mean=.*but mean=.*was given"):
        create_timm_classifier("vit_tiny_patch16_224", num_classes=10, checkpoint=path, mean=(0.5, 0.5, 0.5), **VIT)


def test_plain_timm_state_dicts(tmp_path: Path) -> None:
    src = _resnet(seed=1)
    state = src.net.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "net.safetensors"))
    for f in ("ddp.pth", "net.safetensors"):
        dst = create_timm_classifier("resnet10t", num_classes=10, checkpoint=tmp_path / f)
        assert torch.equal(_out(src), _out(dst)), f
    assert set(read_state_dict(tmp_path / "ddp.pth")) == set(state)


def test_wrong_checkpoints(tmp_path: Path) -> None:
    path = save_checkpoint(_vit(), tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match="weights do not fit timm model 'resnet10t'"):
        create_timm_classifier("resnet10t", num_classes=10, checkpoint=path, mean=_vit().mean.flatten().tolist(),
                               std=_vit().std.flatten().tolist())
    torch.save(_resnet().net.state_dict(), tmp_path / "r10.pth")
    with pytest.raises(ValueError, match="weights do not fit"):
        create_timm_classifier("resnet10t", num_classes=5, checkpoint=tmp_path / "r10.pth")
    with pytest.raises(FileNotFoundError):
        create_timm_classifier("resnet10t", checkpoint=tmp_path / "absent.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="expected a dict of tensors"):
        read_state_dict(tmp_path / "odd.pth")
