"""Fashion-MNIST IDX reading: raw and gzip, bad magic, truncation, shape mismatches, missing files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from rfd.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    stem = "t10k" if split == "test" else "train"
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in ((f"{stem}-images-idx3-ubyte", images), (f"{stem}-labels-idx1-ubyte", labels)):
        data = _idx(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def _sample(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_raw_and_gzip(tmp_path: Path, gz: bool) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "a.idx"
    p.write_bytes(gzip.compress(_idx(arr)) if gz else _idx(arr))
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, arr)


@pytest.mark.parametrize("gz", [True, False])
def test_load_split(tmp_path: Path, gz: bool) -> None:
    images, labels = _sample()
    _write(tmp_path, "test", images, labels, gz=gz)
    ds = load_fashion_mnist("test", tmp_path)
    assert ds.images.shape == (5, 1, 28, 28) and ds.images.dtype == torch.float32
    assert torch.equal(ds.images[:, 0] * 255, torch.from_numpy(images).float())
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert ds.classes == FASHION_MNIST_CLASSES and ds.name == "fashion-mnist/test"


def test_environment_variable_sets_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = _sample(3)
    _write(tmp_path, "train", images, labels)
    monkeypatch.setenv("RFD_FASHION_MNIST_DIR", str(tmp_path))
    assert len(load_fashion_mnist("train")) == 3


def test_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")  # type code 0x0d (float), not ubyte
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(p)
    p.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="magic 12340801"):
        read_idx(p)


@pytest.mark.parametrize("cut", [2, 7, 20])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    data = _idx(np.zeros((2, 28, 28), np.uint8))
    p = tmp_path / "t"
    p.write_bytes(data[:-cut] if cut == 20 else data[:cut])
    with pytest.raises(ValueError, match="too short|truncated|promises shape"):
        read_idx(p)


def test_corrupt_gzip(tmp_path: Path) -> None:
    p = tmp_path / "c.gz"
    p.write_bytes(gzip.compress(_idx(np.zeros((4,), np.uint8)))[:-6])
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(p)


def test_shape_mismatches(tmp_path: Path) -> None:
    images, labels = _sample(4)
    _write(tmp_path / "a", "test", images[:, :27], labels)  # 27 rows: not 28x28
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        load_fashion_mnist("test", tmp_path / "a")
    _write(tmp_path / "b", "test", images, labels[:3])  # 4 images, 3 labels
    with pytest.raises(ValueError, match="4 images but labels"):
        load_fashion_mnist("test", tmp_path / "b")
    _write(tmp_path / "c", "test", images, np.array([0, 1, 10, 2], np.uint8))
    with pytest.raises(ValueError, match="label 10 outside 0..9"):
        load_fashion_mnist("test", tmp_path / "c")


def test_missing_folder_says_how_to_get_the_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist("val", tmp_path)
