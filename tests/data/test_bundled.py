"""The bundled Fashion-MNIST eval/calib set shipped inside the package."""

from __future__ import annotations

import pytest
import torch

from rfd.data.bundled import bundled_path, load_bundled
from rfd.data.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist_dir


def test_sizes_and_balance(bundled_eval, bundled_calib) -> None:
    for ds in (bundled_eval, bundled_calib):
        assert ds.images.shape == (1000, 1, 28, 28) and ds.images.dtype == torch.float32
        assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
        assert torch.bincount(ds.labels, minlength=10).tolist() == [100] * 10
        assert ds.classes == FASHION_MNIST_CLASSES
        # uint8 storage: every value is an exact multiple of 1/255
        assert torch.equal((ds.images * 255).round() / 255, ds.images)


def test_splits_are_disjoint_test_images(bundled_eval, bundled_calib) -> None:
    ev, cal = bundled_eval.meta["test_index"], bundled_calib.meta["test_index"]
    assert ev.unique().numel() == 1000 and cal.unique().numel() == 1000
    assert set(ev.tolist()).isdisjoint(cal.tolist())
    assert int(torch.cat([ev, cal]).max()) < 10000 and int(torch.cat([ev, cal]).min()) >= 0


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_bundled("train")


def test_license_ships_beside_the_data() -> None:
    text = (bundled_path().parent / "LICENSE-fashion-mnist.txt").read_text()
    assert "MIT" in text and "Zalando" in text


def test_matches_the_fashion_mnist_test_set(bundled_eval, bundled_calib) -> None:
    # the test split is installed by the dataset-fashion-mnist package (CI installs it): its absence is a failure
    folder = fashion_mnist_dir()
    assert any((folder / f).is_file() for f in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte")), (
        f"Fashion-MNIST test files not installed in {folder} (apt-get install dataset-fashion-mnist)")
    from rfd.data.fashion_mnist import load_fashion_mnist

    test = load_fashion_mnist("test")
    for ds in (bundled_eval, bundled_calib):
        idx = ds.meta["test_index"]
        assert torch.equal(ds.images, test.images[idx])
        assert torch.equal(ds.labels, test.labels[idx])
