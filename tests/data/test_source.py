"""DataSpec and select_data: one data path for studies and every command; calibration never meets evaluation."""

from __future__ import annotations

import pytest
import torch

from rfd.data import DataSpec, calibration_indices, select_data


def test_bundled_defaults_and_disjoint_splits() -> None:
    spec = DataSpec()
    assert (spec.dataset, spec.eval_split, spec.calib_split, spec.calib_images) == ("bundled", "eval", "calib", 1000)
    d = select_data(spec, 50, seed=3)
    assert d.images.shape == (50, 1, 28, 28) and d.calib_images.shape[0] == 1000
    assert torch.bincount(d.labels, minlength=10).tolist() == [5] * 10  # class-balanced
    assert d.name == "bundled/eval" and d.calib_name == "bundled/calib"
    assert select_data(spec, 50, seed=3).identity == d.identity  # content identity: same images, same digest
    assert select_data(spec, 50, seed=4).identity["digest"] != d.identity["digest"]


def test_whole_split_calibration_keeps_file_order() -> None:
    d = select_data(DataSpec(calib_images=None), 20, seed=0)
    cal = DataSpec().load("calib")
    assert torch.equal(d.calib_images, cal.images) and torch.equal(d.calib_labels, cal.labels)


@pytest.mark.parametrize("calib_images", [None, 300])
def test_one_split_for_both_never_overlaps(calib_images: int | None) -> None:
    spec = DataSpec(dataset="bundled", eval_split="eval", calib_split="eval", calib_images=calib_images)
    ev = spec.load("eval")
    d = select_data(spec, 100, seed=1)
    # the calibration images are eval-split images not among the 100 selected ones
    picked = {tuple(x.flatten().tolist()) for x in d.images}
    assert not any(tuple(x.flatten().tolist()) in picked for x in d.calib_images)
    assert d.calib_images.shape[0] == (len(ev) - 100 if calib_images is None else 300)
    cal, cidx = calibration_indices(spec, d.dataset_index, seed=1, ev=ev)
    assert cal is ev and not set(cidx.tolist()) & set(d.dataset_index.tolist())


def test_fashion_mnist_defaults_to_its_test_split_for_both() -> None:
    spec = DataSpec(dataset="fashion-mnist")
    assert (spec.eval_split, spec.calib_split) == ("test", "test")
    assert DataSpec(dataset="fashion-mnist", eval_split="train").calib_split == "train"


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "mnist"}, "dataset: unknown dataset 'mnist'; known datasets:"),
    ({"eval_split": "test"}, "eval_split: dataset 'bundled' has splits eval, calib"),
    ({"calib_images": 0}, "calib_images must be >= 1"),
])
def test_bad_data_specs_fail_clearly(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DataSpec(**kwargs)


def test_too_many_images_and_wrong_shape_fail_clearly() -> None:
    with pytest.raises(ValueError, match="n=5000 images asked for, but bundled/eval has 1000"):
        select_data(DataSpec(), 5000, seed=0)
    with pytest.raises(ValueError, match=r"model expects images of shape \(3, 32, 32\)"):
        select_data(DataSpec(), 10, seed=0, input_shape=(3, 32, 32))
