"""`rfd models`: the registry listing with parameter counts, checkpoint presence and measured accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rfd.cli.main import main
from rfd.models import ModelEntry, get_entry, list_models, save_checkpoint


def test_models_json_lists_the_registry(run_json) -> None:  # type: ignore[no-untyped-def]
    payload = run_json(["models", "--json", "--no-accuracy"])
    rows = {r["name"]: r for r in payload["models"]}
    assert sorted(rows) == list_models()
    for name, r in rows.items():
        entry = get_entry(name)
        assert r["parameters"] == sum(p.numel() for p in entry.build().parameters())
        paths = [get_entry(m).checkpoint_path() for m in entry.members] or [entry.checkpoint_path()]
        assert r["checkpoint_present"] == all(p is not None and p.is_file() for p in paths)
        assert r["clean_accuracy"] is None and r["note"]


def test_filter(capsys: pytest.CaptureFixture[str], run_json) -> None:  # type: ignore[no-untyped-def]
    payload = run_json(["models", "--json", "--no-accuracy", "--filter", "*resnet"])
    assert [r["name"] for r in payload["models"]] == ["fmnist-resnet"]
    assert main(["models", "--filter", "nothing-*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err


class _LocalEntry(ModelEntry):
    """An entry whose checkpoint lives in a test folder rather than in the package."""

    def checkpoint_path(self) -> Path | None:
        return Path(self.checkpoint) if self.checkpoint else None


def test_accuracy_is_measured_on_the_bundled_eval_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                         run_json, bundled_eval) -> None:
    from rfd.models import registry

    base = get_entry("fmnist-resnet")
    torch.manual_seed(0)
    model = base.build().eval()
    path = save_checkpoint(model, tmp_path / "t.safetensors")
    monkeypatch.setitem(registry._REGISTRY, "test-resnet",
                        _LocalEntry("test-resnet", base.build, str(path), "fashion-mnist", "test entry"))
    monkeypatch.setitem(registry._REGISTRY, "test-absent",
                        _LocalEntry("test-absent", base.build, str(tmp_path / "none.safetensors"), "fashion-mnist", "x"))
    payload = run_json(["models", "--json", "--filter", "test-*"])
    rows = {r["name"]: r for r in payload["models"]}
    with torch.no_grad():
        want = (model(bundled_eval.images).argmax(1) == bundled_eval.labels).double().mean().item()
    assert rows["test-resnet"]["clean_accuracy"] == pytest.approx(want, abs=1e-12)
    assert rows["test-absent"]["clean_accuracy"] is None
    assert "checkpoint absent" in rows["test-absent"]["note"]
    assert payload["eval_set"] == {"name": "bundled/eval", "size": 1000}


def test_models_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--no-accuracy", "--filter", "fmnist-vgg"]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in get_entry("fmnist-vgg").build().parameters())
    assert "fmnist-vgg" in out and f"{params:,}" in out


@pytest.mark.slow
def test_shipped_models_report_accuracy(run_json, bundled_eval, reference_model) -> None:  # type: ignore[no-untyped-def]
    # every entry that declares a checkpoint ships it: `rfd models` measures each on the bundled eval split
    shipped = [n for n in list_models() if get_entry(n).checkpoint is not None]
    assert shipped
    payload = run_json(["models", "--json"])
    rows = {r["name"]: r for r in payload["models"]}
    for name in shipped:
        r = rows[name]
        assert r["checkpoint_present"] is True, r
        with torch.no_grad():
            want = (reference_model(name)(bundled_eval.images).argmax(1) == bundled_eval.labels).double().mean()
        assert r["clean_accuracy"] == pytest.approx(want.item(), abs=1e-12), r
        assert r["clean_accuracy"] > 0.5, r  # a trained model, not chance (10%)
