"""`rfd data`: the dataset listing as JSON and text."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from rfd.cli.main import main


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object on stdout
    return json.loads(out)


def test_data_json_lists_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    payload = _run_json(capsys, ["data", "--json"])
    rows = {d["name"]: d for d in payload["datasets"]}
    assert {"fashion-mnist", "bundled", "cifar10", "imagefolder"} <= set(rows)
    assert {s["split"]: s["size"] for s in rows["bundled"]["splits"]} == {"eval": 1000, "calib": 1000}
    assert [s["split"] for s in rows["fashion-mnist"]["splits"]] == ["train", "test"]
    assert all(isinstance(s["available"], bool) for s in rows["fashion-mnist"]["splits"])
    assert rows["cifar10"]["splits"][0]["reason"] == "needs --path"


def test_data_one_dataset_at_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"x"] * 10}, fh, protocol=2)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2, 3]}, fh, protocol=2)
    payload = _run_json(capsys, ["data", "cifar10", "--path", str(tmp_path), "--json"])
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
