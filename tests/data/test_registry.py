"""The dataset catalogue: availability at default and given locations, and loading by name."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rfd.data.registry import DATASETS, dataset_status, list_datasets, load_dataset


def _fmnist(folder: Path, n: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, shape in (("t10k-images-idx3-ubyte", (n, 28, 28)), ("t10k-labels-idx1-ubyte", (n,))):
        header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
        (folder / (stem + ".gz")).write_bytes(gzip.compress(header + bytes(int(np.prod(shape)))))


def _cifar(folder: Path, n: int = 2) -> None:
    folder.mkdir(parents=True)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, fh, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}, fh, protocol=2)


def test_catalogue_lists_every_dataset() -> None:
    rows = {d["name"]: d for d in list_datasets()}
    assert set(rows) == {"fashion-mnist", "bundled", "cifar10", "imagefolder"} == set(DATASETS)
    assert [s["size"] for s in rows["bundled"]["splits"]] == [1000, 1000]
    assert all(s["available"] is None and s["reason"] == "needs --path" for s in rows["cifar10"]["splits"])
    assert rows["imagefolder"]["needs_path"] and not rows["fashion-mnist"]["needs_path"]


def test_fashion_mnist_status(tmp_path: Path) -> None:
    _fmnist(tmp_path)
    rows = {r["split"]: r for r in dataset_status("fashion-mnist", tmp_path)}
    assert rows["test"]["available"] is True and rows["test"]["size"] == 4 and rows["test"]["path"] == str(tmp_path)
    assert rows["train"]["available"] is False and "apt-get" in rows["train"]["reason"]


def test_path_datasets_are_counted(tmp_path: Path) -> None:
    _cifar(tmp_path / "cifar-10-batches-py")
    rows = {r["split"]: r for r in dataset_status("cifar10", tmp_path)}
    assert rows["train"]["size"] == 10 and rows["test"]["size"] == 2
    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (5, 5)).save(tmp_path / "img" / c / f"{i}.png")
    assert dataset_status("imagefolder", tmp_path / "img")[0]["size"] == 6
    missing = dataset_status("cifar10", tmp_path / "nothing")
    assert all(r["available"] is False for r in missing)
    with pytest.raises(ValueError, match="takes no path"):
        dataset_status("bundled", tmp_path)


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    _cifar(tmp_path / "c")
    assert load_dataset("cifar10", "test", tmp_path / "c").images.shape == (2, 3, 32, 32)
    assert len(load_dataset("bundled", "calib")) == 1000
    (tmp_path / "img" / "a").mkdir(parents=True)
    Image.new("RGB", (9, 7)).save(tmp_path / "img" / "a" / "x.png")
    assert load_dataset("imagefolder", "all", tmp_path / "img", size=4).images.shape == (1, 3, 4, 4)


@pytest.mark.parametrize("args, match", [
    (("mnist", "test"), "unknown dataset 'mnist'; known datasets: fashion-mnist"),
    (("cifar10", "val"), "has splits"),
    (("cifar10", "test"), "cifar10 needs a path"),
    (("imagefolder", "all", "/tmp"), "needs size="),
    (("bundled", "eval", "/tmp"), "takes no path"),
])
def test_load_dataset_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_dataset(*args)
