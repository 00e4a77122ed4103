"""Feature noise on timm models built without any download: a ViT (token tensors) and a ResNet (stages)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from rfd.defenses import DefenseSpec, classifier_name, defend


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=10).eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()


def _x(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("layer", ["blocks.1", "blocks.0.mlp", "penultimate"])
def test_timm_vit_feature_noise(vit: nn.Module, layer: str) -> None:
    x = _x()
    before = _hooks(vit)
    with torch.no_grad():
        ref = vit(x)
        with defend(vit, DefenseSpec(family="feature", sigma=0.5, layers=(layer,)), seed=1) as d:
            a, b = d(x), d(x)
            assert d.injections == {layer: 2}
            if layer == "penultimate":
                assert d.targets[0].module_name == "head" and d.targets[0].pre
        with defend(vit, DefenseSpec(family="feature", sigma=0.5, layers=(layer,)), seed=1) as d2:
            assert torch.equal(d2(x), a)
    assert a.shape == ref.shape == (3, 10)
    assert not torch.equal(a, ref) and not torch.equal(a, b)
    assert _hooks(vit) == before
    with torch.no_grad():
        assert torch.equal(vit(x), ref)


@pytest.mark.parametrize("layer", ["layer2", "layer3.1", "penultimate"])
def test_timm_resnet_feature_noise(resnet: nn.Module, layer: str) -> None:
    # block outputs, not convs inside a block: timm zero-initialises the last BN of each residual branch
    x = _x()
    with torch.no_grad():
        ref = resnet(x)
        with defend(resnet, DefenseSpec(family="feature", sigma=0.5, layers=(layer,))) as d:
            out = d(x)
            assert d.injections == {layer: 1}
    assert out.shape == ref.shape and not torch.equal(out, ref)
    with torch.no_grad():
        assert torch.equal(resnet(x), ref)


def test_timm_penultimate_uses_get_classifier(vit: nn.Module, resnet: nn.Module) -> None:
    assert classifier_name(vit) == "head"
    assert classifier_name(resnet) == "fc"


def test_timm_scaled_noise_on_vit_tokens(vit: nn.Module) -> None:
    calib = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with defend(vit, DefenseSpec(family="feature", sigma=1.0, layers=("blocks.0",), scaled=True),
                calib_images=calib) as d:
        assert d.scale_0.shape == (1 + 16, 192)  # class token + 4x4 patches, width 192
        with torch.no_grad():
            assert d(_x()).shape == (3, 10)


def test_timm_adapter_classifier_with_feature_noise() -> None:
    from rfd.models.timm_adapter import create_timm_classifier

    torch.manual_seed(0)
    m = create_timm_classifier("resnet18", num_classes=10, input_size=(3, 32, 32))
    assert classifier_name(m) == "net.fc"
    x = _x(2)
    with torch.no_grad(), defend(m, DefenseSpec(family="feature", sigma=0.3, layers=("net.layer3", "penultimate"))) as d:
        assert d(x).shape == (2, 10) and dict(d.injections) == {"net.layer3": 1, "penultimate": 1}


def test_timm_unknown_block_name(vit: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"closest: .*blocks\.1"):
        defend(vit, DefenseSpec(family="feature", sigma=1.0, layers=("block.1",)))
