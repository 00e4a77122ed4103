"""The image/label contract: float32 (N, C, H, W) in [0, 1] and int64 (N,) labels, rejected clearly otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rfd.data import ImageDataset, check_images, check_images_labels, check_labels


def test_valid_images_pass_unchanged() -> None:
    x = torch.rand(2, 3, 4, 4)
    assert check_images(x) is x
    lo, hi = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)  # the range ends are valid pixel values
    assert check_images(lo) is lo and check_images(hi) is hi


@pytest.mark.parametrize("x, match", [
    (np.zeros((1, 1, 2, 2), np.float32), "must be a torch.Tensor"),
    (torch.zeros(1, 1, 2, 2, dtype=torch.float64), "dtype float32"),
    (torch.zeros(1, 1, 2, 2, dtype=torch.uint8), r"x\.float\(\) / 255"),
    (torch.zeros(1, 2, 2), "4 dimensions"),
    (torch.zeros(0, 1, 2, 2), "empty"),
    (torch.tensor([[[[0.5, float("nan")]]]]), "1 NaN or infinite"),
    (torch.tensor([[[[0.5, float("inf")]]]]), "NaN or infinite"),
    (torch.tensor([[[[-0.1, 0.5]]]]), r"\[0, 1\].*-0\.1"),
    (torch.tensor([[[[0.2, 1.5]]]]), r"\[0, 1\].*1\.5"),
])
def test_bad_images_rejected(x: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_images(x, name="batch")


def test_error_names_the_argument() -> None:
    with pytest.raises(ValueError, match="^x_adv must"):
        check_images(torch.zeros(1, 1, 2, 2, dtype=torch.float16), name="x_adv")


@pytest.mark.parametrize("y, kw, match", [
    (torch.tensor([0, 1], dtype=torch.int32), {}, "int64"),
    (torch.zeros(2, 1, dtype=torch.int64), {}, r"shape \(N,\)"),
    (torch.tensor([0, 1, 2]), {"n": 2}, "3 entries but there are 2 images"),
    (torch.tensor([0, -1]), {}, "non-negative"),
    (torch.tensor([0, 10]), {"num_classes": 10}, "must be < 10"),
    ([0, 1], {}, "torch.Tensor"),
])
def test_bad_labels_rejected(y: object, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_labels(y, **kw)


def test_images_labels_together_and_dataset() -> None:
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 1])
    assert check_images_labels(x, y, num_classes=2)[1] is y
    with pytest.raises(ValueError, match="3 entries but there are 2 images"):
        check_images_labels(x[:2], y)
    with pytest.raises(ValueError, match="must be < 1"):
        ImageDataset(x, y, ("only",))
    ds = ImageDataset(x, y, ("a", "b"))
    sub = ds.subset(torch.tensor([2, 0]))
    assert len(sub) == 2 and torch.equal(sub.images, x[[2, 0]]) and sub.labels.tolist() == [1, 0]
