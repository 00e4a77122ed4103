"""`load_model`: registry names vs ``timm:`` names, and the CLI glue for --model and its options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from rfd.cli.model_args import add_model_args, model_from_args
from rfd.models import ImageClassifier, create_model, load_model, save_checkpoint


def test_registry_names_with_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = create_model("fmnist-resnet", pretrained=False)
    path = save_checkpoint(src, tmp_path / "r.safetensors")
    model = load_model("fmnist-resnet", path)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


@pytest.mark.parametrize("spec, kw, match", [
    ("fmnist-vgg", {"num_classes": 10}, "num_classes apply only to timm: models"),
    ("fmnist-vgg", {"mean": (0.5,), "input_size": (1, 28, 28)}, "mean, input_size apply only"),
    ("mnist-cnn", {}, "unknown model 'mnist-cnn'; registered models: .*or timm:<name>"),
    ("timm:", {}, "needs a name after 'timm:'"),
])
def test_bad_specs(spec: str, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_model(spec, **kw)


def test_timm_spec_dispatches_to_the_adapter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = load_model("timm:resnet10t", num_classes=4, input_size=(1, 16, 16), mean=(0.5,), std=(0.5,))
    assert isinstance(src, ImageClassifier) and src.head == "net.fc" and src.num_classes == 4
    path = save_checkpoint(src, tmp_path / "t.safetensors")
    again = load_model("timm:resnet10t", path, num_classes=4, input_size=(1, 16, 16))
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(src(x), again(x))


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_model_args(p)
    return p.parse_args(argv)


def test_cli_glue_builds_a_tiny_timm_vit() -> None:
    args = _parse(["--model", "timm:vit_tiny_patch16_224", "--num-classes", "3", "--timm-arg", "img_size=32",
                   "--timm-arg", "patch_size=8", "--timm-arg", "depth=1", "--mean", "0.5", "0.5", "0.5",
                   "--std", "0.2", "0.2", "0.2"])
    model = model_from_args(args)
    assert model.input_shape == (3, 32, 32) and model.num_classes == 3 and len(model.net.blocks) == 1
    assert model.std.flatten().tolist() == pytest.approx([0.2, 0.2, 0.2])
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_cli_glue_registry_and_errors() -> None:
    assert _parse(["--model", "fmnist-vgg"]).checkpoint is None
    with pytest.raises(SystemExit):
        _parse([])  # --model is required without a default
    args = _parse(["--model", "fmnist-vgg", "--input-size", "1", "28", "28"])
    with pytest.raises(ValueError, match="input_size apply only to timm"):
        model_from_args(args)
    from rfd.cli.common import CLIError

    with pytest.raises(CLIError, match="expected KEY=VALUE"):
        model_from_args(_parse(["--model", "timm:resnet10t", "--timm-arg", "depth"]))
