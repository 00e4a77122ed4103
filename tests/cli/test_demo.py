"""`rfd demo`: a clear error naming a missing checkpoint, and a smoke run of the whole pipeline at tiny size (tiny
model, real Square and RayS, real calibration) that writes the report folder and resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rfd.cli.main import main
from rfd.eval.demo import demo_study, run_demo
from rfd.eval.specs import ModelSpec
from rfd.models import registry


@pytest.fixture
def no_reference_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    entry = registry.get_entry("fmnist-vgg")
    gone = dataclasses.replace(entry, checkpoint="does-not-exist.safetensors")
    monkeypatch.setitem(registry._REGISTRY, "fmnist-vgg", gone)


def test_demo_names_the_missing_checkpoint(no_reference_checkpoint: None, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match="reference checkpoint .* is not installed; train it with `rfd train"):
        run_demo(tmp_path / "d", progress=False)
    assert main(["demo", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "rfd demo: error:" in err and "fmnist-vgg" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "results.sqlite").exists()  # no numbers without the model


def test_demo_study_is_the_main_job() -> None:
    s = demo_study()
    assert s.n == 200 and [m.name for m in s.models] == ["fmnist-vgg"]
    assert [(d.family, d.drop) for d in s.defenses] == [("none", None), ("input", 0.02), ("feature", 0.02)]
    assert [(a.name, a.norm, a.eps, a.budget) for a in s.attacks] == [("square", "linf", 0.05, 1000),
                                                                      ("rays", "linf", 0.05, 1000)]


def test_demo_smoke_tiny(tmp_path: Path, tiny_eval: tuple[Path, Path]) -> None:
    _, ckpt = tiny_eval
    model = ModelSpec(name="tiny", factory="rfd_tiny:build", checkpoint=str(ckpt))
    out = tmp_path / "demo"
    kw = {"n": 20, "budget": 40, "model": model, "chunk_size": 10, "checkpoints": (10, 40),
          "calibration": {"draws": 2, "tol": 0.01}, "progress": False, "workers": 1}
    res = run_demo(out, **kw)  # type: ignore[arg-type]
    for name in ("report.md", "table_robust.csv", "robust_vs_queries.png", "samples.csv", "results.sqlite"):
        assert (out / name).is_file(), name
    assert res.summary.complete and res.summary.samples_written == 3 * 2 * 20
    cal = {c["defense"]["family"]: c for c in res.summary.calibrations}
    assert set(cal) == {"input", "feature"} and all(c["target_drop"] == 0.02 for c in cal.values())
    table = res.table_md
    assert "| tiny | Base |" in table and "| Input | ≈2% |" in table and "| Feature | ≈2% |" in table
    assert "square 10" in table and "rays 40" in table
    report = (out / "report.md").read_text()
    assert "robust_vs_queries.png" in report and "20 class-balanced images" in report
    # paper and strict side by side, and the paired feature-vs-input comparison under both
    assert "square 10 paper" in report and "square 10 strict" in report
    assert "Feature vs input noise, paired" in report and "strict @ 40" in report and "McNemar" in report
    again = run_demo(out, **kw)  # type: ignore[arg-type]
    assert again.summary.units_run == 0 and again.table_md == res.table_md


@pytest.mark.slow
def test_demo_on_the_reference_model_small(tmp_path: Path, shipped_checkpoint) -> None:  # type: ignore[no-untyped-def]
    shipped_checkpoint("fmnist-vgg")  # fails, never skips, when the shipped checkpoint is missing
    res = run_demo(tmp_path / "demo", n=20, budget=100, checkpoints=(100,), chunk_size=20,
                   calibration={"draws": 2, "tol": 0.005}, progress=False)
    assert res.summary.complete and res.summary.samples_written == 6 * 20
    assert "fmnist-vgg" in res.table_md
