"""ImageFolder trees: class order, colour modes, resize/center-crop geometry, selection, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rfd.data.imagefolder import find_images, load_image_folder

COLORS = {"cat": (255, 0, 0), "dog": (0, 128, 255), "ant": (10, 200, 30)}


def _tree(root: Path, per_class: int = 3, size: tuple[int, int] = (20, 12)) -> Path:
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, color).save(root / name / f"{i:02d}.png")
    return root


def test_classes_sorted_labels_and_values(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t")
    (root / "cat" / "notes.txt").write_text("ignored")
    (root / ".cache").mkdir()
    ds = load_image_folder(root, 8)
    assert ds.classes == ("ant", "cat", "dog")
    assert ds.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert ds.images.shape == (9, 3, 8, 8) and ds.images.dtype == torch.float32
    for label, name in enumerate(ds.classes):
        want = torch.tensor(COLORS[name], dtype=torch.float32) / 255
        got = ds.images[ds.labels == label]
        assert torch.allclose(got, want.view(1, 3, 1, 1).expand_as(got), atol=1 / 255)
    assert ds.meta["files"][0].endswith("ant/00.png")


def test_grayscale_mode(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (10, 10), (100, 100, 100)).save(tmp_path / "a" / "x.png")
    Image.new("P", (10, 10), 0).save(tmp_path / "a" / "y.png")  # palette images are converted too
    ds = load_image_folder(tmp_path, 6, mode="L")
    assert ds.images.shape == (2, 1, 6, 6)
    assert torch.allclose(ds.images[0], torch.full((1, 6, 6), 100 / 255))
    with pytest.raises(ValueError, match="mode must be one of"):
        load_image_folder(tmp_path, 6, mode="CMYK")


def test_center_crop_without_resize_is_exact(tmp_path: Path) -> None:
    # 30 wide x 10 high, column x has value 8x: shorter side already 10, so the crop keeps columns 10..19.
    (tmp_path / "a").mkdir()
    arr = np.repeat((np.arange(30, dtype=np.uint8) * 8)[None, :], 10, axis=0)
    Image.fromarray(arr, "L").save(tmp_path / "a" / "ramp.png")
    ds = load_image_folder(tmp_path, 10, mode="L")
    assert torch.equal(ds.images[0, 0, 0] * 255, torch.arange(10, 20, dtype=torch.float32) * 8)


def test_matches_torchvision_resize_and_center_crop(tmp_path: Path) -> None:
    from torchvision import transforms as tv

    (tmp_path / "a").mkdir()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8), "RGB")
    img.save(tmp_path / "a" / "r.png")
    ds = load_image_folder(tmp_path, 16, resize=20)
    ref = tv.Compose([tv.Resize(20), tv.CenterCrop(16), tv.PILToTensor()])(img).float() / 255
    assert torch.equal(ds.images[0], ref)


def test_balanced_limit_is_exact_and_seeded(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", per_class=4)
    a = load_image_folder(root, 4, limit=6, seed=1)
    b = load_image_folder(root, 4, limit=6, seed=1)
    assert torch.bincount(a.labels, minlength=3).tolist() == [2, 2, 2]
    assert a.meta["files"] == b.meta["files"]
    assert len(set(a.meta["files"])) == 6
    first = load_image_folder(root, 4, limit=5, balanced=False)
    assert first.labels.tolist() == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="only 12 images"):
        load_image_folder(root, 4, limit=13)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_image_folder(root, 4, limit=0)


def test_balanced_limit_needs_enough_images_per_class(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", per_class=4)
    for f in sorted((root / "dog").iterdir())[1:]:
        f.unlink()
    with pytest.raises(ValueError, match="class 2 has 1 available images"):
        load_image_folder(root, 4, limit=9)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_image_folder(tmp_path / "nope", 8)
    (tmp_path / "flat.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(tmp_path, 8)
    _tree(tmp_path / "t")
    (tmp_path / "t" / "empty").mkdir()
    (tmp_path / "t" / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="without images: empty"):
        find_images(tmp_path / "t")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*dog/broken\.png"):
        load_image_folder(root, 8)


def test_bad_size(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t")
    with pytest.raises(ValueError, match="size <= resize"):
        load_image_folder(root, 8, resize=4)
