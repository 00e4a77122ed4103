"""The study runner: stored rows, calibration stored once, resume after a partial run and after SIGKILL, and
sharding + merging, each compared with an uninterrupted run (same rows, same tables)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rfd.cli.main import main
from rfd.eval.merge import merge_stores
from rfd.eval.plan import Shard, parse_shard, plan_status, plan_study
from rfd.eval.results import load_results
from rfd.eval.runner import run_study
from rfd.eval.schema import parse_study
from rfd.eval.specs import StudyError
from rfd.eval.tables import build_table, render
from tests.helpers.tiny_eval import tiny_study


def rows_by_key(db: Path) -> list[tuple]:
    """Every stored sample with its run's key (row ids may differ between stores; keys may not)."""
    with sqlite3.connect(db) as c:
        return c.execute("SELECT r.key, s.sample, s.chunk, s.dataset_index, s.label, s.clean_correct, s.success, "
                         "s.queries, s.linf, s.l2 FROM samples s JOIN runs r USING (run_id) ORDER BY 1, 2").fetchall()


def tables(db: Path) -> str:
    res = load_results(db)
    return render(build_table(res, "robust"), "md") + render(build_table(res, "runs"), "csv")


def test_run_stores_every_sample_once_with_its_settings(tiny_eval: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt, defenses=["none", {"family": "feature", "drops": [0.05]}]))
    db = tmp_path / "r.sqlite"
    s = run_study(st, db, progress=False)
    assert s.complete and s.units_run == 2 * 4 and s.samples_written == 2 * 40
    assert s.calibrations_run == 1
    rows = rows_by_key(db)
    assert len(rows) == 80 and len({(r[0], r[1]) for r in rows}) == 80
    res = load_results(db)
    feat = res.runs[res.runs.family == "feature"].iloc[0]
    assert feat.sigma == pytest.approx(s.calibrations[0]["sigma"]) and feat.sigma > 0
    # every cell attacks the same images, in the same order
    plan = plan_study(st)
    for run_id in res.runs.run_id:
        got = res.samples[res.samples.run_id == run_id].sort_values("sample")
        assert got.dataset_index.tolist() == plan.data.dataset_index.tolist()
        assert got.label.tolist() == plan.data.labels.tolist()
    # the attack respected its budget and eps on every stored sample
    assert (res.samples.queries <= 60).all() and (res.samples.linf <= 0.1 + 1e-5).all()
    assert (res.samples.success <= res.samples.clean_correct).all()


def test_class_balanced_selection_is_seeded(tiny_eval: tuple[Path, Path]) -> None:
    _, ckpt = tiny_eval
    a = plan_study(parse_study(tiny_study(ckpt, n=30))).data
    b = plan_study(parse_study(tiny_study(ckpt, n=30, seed=4))).data
    assert a.labels.bincount(minlength=10).tolist() == [3] * 10
    assert a.dataset_index.tolist() != b.dataset_index.tolist()
    assert plan_study(parse_study(tiny_study(ckpt, n=30))).data.dataset_index.tolist() == a.dataset_index.tolist()
    # calibration from the same split as evaluation: drawn from the images NOT selected for evaluation
    same = plan_study(parse_study(tiny_study(ckpt, n=30, data={"eval_split": "eval", "calib_split": "eval",
                                                                "calib_images": 200}))).data
    assert same.calib_images.shape[0] == 200
    flat_eval = same.images.flatten(1)
    overlap = (same.calib_images.flatten(1)[:, None, :] == flat_eval[None]).all(-1).any()
    assert not bool(overlap)


def test_resume_after_partial_run_equals_uninterrupted(tiny_eval: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt, defenses=["none", {"family": "feature", "drops": [0.05]}]))
    full, part = tmp_path / "full.sqlite", tmp_path / "part.sqlite"
    run_study(st, full, progress=False)
    first = run_study(st, part, max_units=3, progress=False)
    assert first.units_run == 3 and not first.complete
    second = run_study(st, part, progress=False)
    assert second.units_done_before == 3 and second.units_run == 5 and second.complete
    assert second.calibrations_run == 0 and second.calibrations_reused == 1
    third = run_study(st, part, progress=False)
    assert third.units_run == 0 and third.samples_written == 0
    assert rows_by_key(part) == rows_by_key(full)
    assert tables(part) == tables(full)


def test_shards_partition_the_work_and_merge_to_the_single_run(tiny_eval: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt))
    plan = plan_study(st)
    parts = [plan.shard(Shard(i, 3)) for i in range(3)]
    assert sorted(u for p in parts for u in p) == sorted(plan.units)
    assert not set(parts[0]) & set(parts[1])
    single = tmp_path / "single.sqlite"
    run_study(st, single, progress=False)
    shards = []
    for i in range(3):
        p = tmp_path / f"s{i}.sqlite"
        run_study(st, p, shard=Shard(i, 3), progress=False)
        shards.append(p)
    merged = tmp_path / "merged.sqlite"
    summary = merge_stores(merged, shards)
    assert summary.chunks_added == len(plan.units) and summary.chunks_identical == 0
    assert rows_by_key(merged) == rows_by_key(single)
    assert tables(merged) == tables(single)
    assert parse_shard("2/3") == Shard(2, 3)
    with pytest.raises(ValueError):
        parse_shard("3/3")


def test_plan_status_and_bad_attack_parameters(tiny_eval: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt, defenses=["none", {"family": "feature", "drops": [0.05]}]))
    db = tmp_path / "r.sqlite"
    run_study(st, db, max_units=5, progress=False)
    status = plan_status(st, db)
    assert (status["units_total"], status["units_done"], status["units_pending"]) == (8, 5, 3)
    assert status["calibrations_needed"] == 0 and status["calibrations_stored"] == 1
    # a misspelt setting of a user's own attack fails when the study is read, before anything runs
    with pytest.raises(StudyError, match=r"attacks\[0\]: 'rfd_tiny:RandomSign' has no setting 'stp'; its settings: .*step"):
        parse_study(tiny_study(ckpt, attacks=[{"name": "rfd_tiny:RandomSign", "eps": 0.1, "params": {"stp": 1}}]))
    assert not (tmp_path / "bad.sqlite").exists()


def _write_study(folder: Path, ckpt: Path, **kw) -> Path:  # type: ignore[no-untyped-def]
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(ckpt, **kw)))
    return path


KILL_STUDY = {"n": 60, "budget": 400, "chunk_size": 10, "verify": 3,
              "defenses": ["none", {"family": "feature", "drops": [0.05]}, {"family": "input", "sigmas": [0.05]}]}


def test_sigkill_midway_then_resume_equals_uninterrupted(tiny_eval: tuple[Path, Path], tmp_path: Path) -> None:
    folder, ckpt = tiny_eval
    study_file = _write_study(tmp_path, ckpt, **KILL_STUDY)
    killed = tmp_path / "killed.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "rfd.cli.main", "run", str(study_file), "--db", str(killed),
                             "--threads", "1", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    total = 3 * 60
    count = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if killed.exists():
                try:
                    with sqlite3.connect(killed, timeout=1) as c:
                        count = c.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
                except sqlite3.OperationalError:  # schema not created yet
                    count = 0
                if count >= 20:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()[1][-2000:]!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(killed) as c:
        n_after_kill = c.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        # only whole chunks are stored: every chunk row has exactly its samples
        per_chunk = c.execute("SELECT c.n_samples, COUNT(s.sample) FROM chunks c LEFT JOIN samples s "
                              "ON s.run_id = c.run_id AND s.chunk = c.chunk GROUP BY c.run_id, c.chunk").fetchall()
    assert 20 <= n_after_kill < total
    assert all(a == b for a, b in per_chunk) and sum(a for a, _ in per_chunk) == n_after_kill

    st = parse_study(tiny_study(ckpt, **KILL_STUDY))
    resumed = run_study(st, killed, progress=False)
    assert resumed.complete and resumed.units_done_before == n_after_kill // 10
    assert resumed.calibrations_run == 0  # the sigma calibrated before the kill is re-used
    reference = tmp_path / "reference.sqlite"
    run_study(st, reference, progress=False)
    got, want = rows_by_key(killed), rows_by_key(reference)
    assert len(got) == total and len({(r[0], r[1]) for r in got}) == total  # nothing lost, nothing twice
    assert got == want
    assert tables(killed) == tables(reference)


def test_cli_run_dry_run_resume_and_summary(tiny_eval: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, ckpt = tiny_eval
    study_file = _write_study(tmp_path, ckpt)
    db = tmp_path / "cli.sqlite"
    assert main(["run", str(study_file), "--db", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 cells x 4 chunks" in out and "0 of 12 chunks stored" in out
    assert main(["run", str(study_file), "--db", str(db), "--quiet", "--max-units", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 run now" in out and "INCOMPLETE" in out
    assert main(["run", str(study_file), "--db", str(db), "--quiet", "--shard", "1/2"]) == 0
    assert main(["run", str(study_file), "--db", str(db), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("complete") and "Feature" in out
    assert main(["run", str(study_file), "--db", str(db), "--quiet", "--shard", "5/2"]) == 2
    assert "shard" in capsys.readouterr().err


def test_local_worker_processes_match_the_in_process_run(tiny_eval: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt, defenses=["none", {"family": "feature", "drops": [0.05]}]))
    single, multi = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    run_study(st, single, progress=False)
    s = run_study(st, multi, workers=2, executor_options={"threads": 1}, progress=False)
    assert s.executor == "processes" and s.complete and s.calibrations_run == 1
    assert rows_by_key(multi) == rows_by_key(single)


def test_changed_calibration_settings_conflict_clearly(tiny_eval: tuple[Path, Path], tmp_path: Path) -> None:
    from rfd.eval.store import StoreConflict

    _, ckpt = tiny_eval
    kw = {"defenses": [{"family": "feature", "drops": [0.05]}]}
    db = tmp_path / "r.sqlite"
    run_study(parse_study(tiny_study(ckpt, **kw)), db, max_units=1, progress=False)
    other = parse_study(tiny_study(ckpt, calibration={"draws": 3, "tol": 0.002}, **kw))
    with pytest.raises(StoreConflict, match="stored with another noise level.*new --db"):
        run_study(other, db, progress=False)
