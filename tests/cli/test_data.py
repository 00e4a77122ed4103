"""`rfd data`: the dataset listing as JSON and text."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from rfd.cli.main import main


def test_data_json_lists_datasets(run_json) -> None:  # type: ignore[no-untyped-def]
    payload = run_json(["data", "--json"])
    rows = {d["name"]: d for d in payload["datasets"]}
    assert {"fashion-mnist", "bundled", "cifar10", "imagefolder"} <= set(rows)
    assert {s["split"]: s["size"] for s in rows["bundled"]["splits"]} == {"eval": 1000, "calib": 1000}
    assert [s["split"] for s in rows["fashion-mnist"]["splits"]] == ["train", "test"]
    # CI installs the dataset-fashion-mnist package (as the README says): both splits are found, at full size
    assert {s["split"]: (s["available"], s.get("size")) for s in rows["fashion-mnist"]["splits"]} == {
        "train": (True, 60000), "test": (True, 10000)}
    assert rows["cifar10"]["splits"][0]["reason"] == "needs --path"


def test_data_one_dataset_at_a_path(tmp_path: Path, run_json) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"x"] * 10}, fh, protocol=2)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2, 3]}, fh, protocol=2)
    payload = run_json(["data", "cifar10", "--path", str(tmp_path), "--json"])
    (row,) = payload["datasets"]
    splits = {s["split"]: s for s in row["splits"]}
    assert splits["test"]["available"] is True and splits["test"]["size"] == 3
    assert splits["train"]["available"] is False and "data_batch_1" in splits["train"]["reason"]


def test_data_text_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "bundled" in out and "needs --path" in out
    assert main(["data", "--path", "/tmp"]) == 2
    assert "--path needs a dataset NAME" in capsys.readouterr().err
