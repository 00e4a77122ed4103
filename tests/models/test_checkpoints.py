"""Checkpoints: bit-identical round trips, metadata, wrong architectures, and safe torch loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rfd.models import create_model, load_checkpoint, read_checkpoint_meta, save_checkpoint


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x)


def _trained_like(name: str, seed: int) -> torch.nn.Module:
    """A model with non-default weights and batch-norm statistics, so buffers are tested too."""
    torch.manual_seed(seed)
    model = create_model(name, pretrained=False)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28))  # updates running mean/var
    return model.eval()


@pytest.mark.parametrize("name", ["fmnist-vgg", "fmnist-resnet", "fmnist-vit"])
def test_safetensors_round_trip_is_bit_identical(tmp_path: Path, name: str) -> None:
    src = _trained_like(name, 1)
    path = save_checkpoint(src, tmp_path / "m.safetensors", meta={"model": name, "acc": 0.5})
    dst = _trained_like(name, 2)
    assert not torch.equal(_outputs(src), _outputs(dst))
    load_checkpoint(dst, path)
    assert torch.equal(_outputs(src), _outputs(dst))
    assert read_checkpoint_meta(path) == {"model": name, "acc": 0.5}
    again = create_model(name, checkpoint=path)
    assert torch.equal(_outputs(src), _outputs(again))


def test_torch_file_round_trip(tmp_path: Path) -> None:
    src = _trained_like("fmnist-resnet", 1)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "nested.pt")
    for f in ("plain.pt", "nested.pt"):
        dst = load_checkpoint(_trained_like("fmnist-resnet", 2), tmp_path / f)
        assert torch.equal(_outputs(src), _outputs(dst))


def test_wrong_architecture_is_a_value_error(tmp_path: Path) -> None:
    path = save_checkpoint(create_model("fmnist-vgg", pretrained=False), tmp_path / "vgg.safetensors")
    with pytest.raises(ValueError, match="weights do not fit"):
        load_checkpoint(create_model("fmnist-resnet", pretrained=False), path)
    with pytest.raises(ValueError, match="weights do not fit"):
        create_model("fmnist-vit", checkpoint=path)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    model = create_model("fmnist-vgg", pretrained=False)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(model, tmp_path / "junk.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a dict of tensors"):
        load_checkpoint(model, tmp_path / "list.pt")


_CALLED: list[str] = []


def _side_effect() -> None:
    _CALLED.append("ran")


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_side_effect, ())


def test_torch_files_load_with_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": _Payload()}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(create_model("fmnist-vgg", pretrained=False), path)
    assert _CALLED == []  # the pickled callable never ran

    seen: list[object] = []
    real_load = torch.load

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = create_model("fmnist-vgg", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    load_checkpoint(model, tmp_path / "ok.pt")
    assert seen == [True]
