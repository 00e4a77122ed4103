"""CIFAR-10 python batches: layout, splits, safe unpickling, and clear errors (tiny files written here)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from rfd.data.cifar10 import CIFAR10_CLASSES, CIFAR10_FOLDER, load_cifar10, read_cifar_batch

N_PER_BATCH = 3


def _py2_pickle(obj: object) -> bytes:
    """Encode dicts/lists/bytes/ints with the protocol-2 opcodes Python 2 used (str as SHORT_BINSTRING), as in
    the official ``batches.meta``."""

    def enc(o: object) -> bytes:
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, bytes):
            return b"U" + bytes([len(o)]) + o
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        raise TypeError(type(o))

    return b"\x80\x02" + enc(obj) + b"."


def _write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": []}, fh, protocol=2)


def _make_cifar(root: Path, seed: int = 0) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    folder = root / CIFAR10_FOLDER
    folder.mkdir(parents=True)
    meta = {b"num_cases_per_batch": N_PER_BATCH, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_pickle(meta))
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "test": []}
    for name, split in [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]:
        data = rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, N_PER_BATCH).tolist()
        _write_batch(folder / name, data, labels)
        parts[split].append((data, np.array(labels)))
    return folder, {s: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v])) for s, v in parts.items()}


def test_test_split_values_and_layout(tmp_path: Path) -> None:
    folder, truth = _make_cifar(tmp_path)
    ds = load_cifar10(folder, "test")
    data, labels = truth["test"]
    assert ds.images.shape == (N_PER_BATCH, 3, 32, 32) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert ds.classes == CIFAR10_CLASSES and ds.name == "cifar10/test"
    # Row layout: 1024 red, then green, then blue values, each row-major 32x32.
    i, c, r, col = 1, 2, 5, 7
    assert ds.images[i, c, r, col].item() == pytest.approx(data[i, c * 1024 + r * 32 + col] / 255.0)
    assert torch.equal(ds.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255)


def test_train_split_concatenates_five_batches_in_order(tmp_path: Path) -> None:
    folder, truth = _make_cifar(tmp_path)
    ds = load_cifar10(folder, "train")
    assert len(ds) == 5 * N_PER_BATCH
    assert torch.equal(ds.images, torch.from_numpy(truth["train"][0].reshape(-1, 3, 32, 32)).float() / 255)
    assert ds.labels.tolist() == truth["train"][1].tolist()


def test_parent_folder_is_accepted(tmp_path: Path) -> None:
    _make_cifar(tmp_path)
    assert len(load_cifar10(tmp_path, "test")) == N_PER_BATCH


def test_python2_meta_keys_stay_bytes(tmp_path: Path) -> None:
    p = tmp_path / "meta"
    p.write_bytes(_py2_pickle({b"label_names": [b"a", b"b"]}))
    assert read_cifar_batch(p) == {b"label_names": [b"a", b"b"]}


_CALLED: list[str] = []


def _side_effect() -> None:
    _CALLED.append("ran")


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_side_effect, ())


def test_pickle_with_foreign_global_is_refused_without_running_it(tmp_path: Path) -> None:
    folder, _ = _make_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": []}, fh, protocol=2)
    with pytest.raises(ValueError, match="refusing to load global"):
        load_cifar10(folder, "test")
    assert _CALLED == []


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "nope")
    folder, _ = _make_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(folder, "train")
    (folder / "batches.meta").unlink()
    with pytest.raises(FileNotFoundError, match="batches.meta"):
        load_cifar10(folder, "test")


@pytest.mark.parametrize("data, labels, match", [
    (np.zeros((2, 3000), np.uint8), [0, 1], r"shape \(N, 3072\)"),
    (np.zeros((2, 3072), np.float32), [0, 1], "uint8"),
    (np.zeros((2, 3072), np.uint8), [0], "b'labels'"),
    (np.zeros((2, 3072), np.uint8), [0, 10], r"0\.\.9"),
    (np.zeros((2, 3072), np.uint8), [-1, 0], r"0\.\.9"),
])
def test_bad_batches_are_rejected(tmp_path: Path, data: np.ndarray, labels: list[int], match: str) -> None:
    folder, _ = _make_cifar(tmp_path)
    _write_batch(folder / "test_batch", data, labels)
    with pytest.raises(ValueError, match=match):
        load_cifar10(folder, "test")


def test_not_a_pickle_and_wrong_keys(tmp_path: Path) -> None:
    folder, _ = _make_cifar(tmp_path)
    (folder / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR batch file"):
        load_cifar10(folder, "test")
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"fine_labels": [1]}, fh, protocol=2)
    with pytest.raises(ValueError, match="b'data' and b'labels'"):
        load_cifar10(folder, "test")


def test_unknown_split(tmp_path: Path) -> None:
    folder, _ = _make_cifar(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_cifar10(folder, "val")
