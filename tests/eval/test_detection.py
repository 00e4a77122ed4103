"""Studies with stateful detectors: the defense entry's ``detector:``, OARS as an attack setting, the stored
per-sample detector counts, the detection table, and a schema-2 store gaining the detector columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rfd.eval.layouts import build_table
from rfd.eval.results import load_results
from rfd.eval.runner import run_study
from rfd.eval.schema import StudyError, parse_study
from rfd.eval.store import ResultStore
from tests.helpers.tiny_eval import tiny_study


def test_detector_entries_expand_and_share_calibration(tiny_eval: tuple[Path, Path]) -> None:
    _, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt, defenses=[{"family": "feature", "drops": [0.02],
                                                 "detector": ["none", "blacklight", "knn:action=ban"]}],
                                attacks=[{"name": "square", "eps": 0.1}, {"name": "nes", "eps": 0.1,
                                                                          "params": {"oars": True}}]))
    labels = [d.method for d in st.defenses]
    assert labels == ["Feature", "Feature+Blacklight", "Feature+kNN (ban)"]
    assert len({str(d.calibration_dict()) for d in st.defenses}) == 1
    with pytest.raises(StudyError, match="unknown detector"):
        parse_study(tiny_study(ckpt, defenses=[{"family": "none", "detector": "blackligt"}]))
    with pytest.raises(StudyError, match="no OARS form"):
        parse_study(tiny_study(ckpt, attacks=[{"name": "signhunt", "eps": 0.1, "params": {"oars": True}}]))


def test_a_study_stores_detector_counts_and_reports_them(tiny_eval: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt, n=10, budget=40, checkpoints=[40], chunk_size=10,
                                defenses=["none", {"family": "none", "detector": "blacklight"}],
                                attacks=[{"name": "square", "eps": 0.1}]))
    db = tmp_path / "det.sqlite"
    run_study(st, db, progress=False)
    res = load_results(db)
    runs = res.runs.set_index("method")
    plain = res.samples[res.samples.run_id == runs.loc["Base", "run_id"]]
    guarded = res.samples[res.samples.run_id == runs.loc["Blacklight", "run_id"]]
    assert plain.flagged.isna().all() and guarded.flagged.notna().all()
    att = guarded[guarded.clean_correct]
    assert (att.rejected <= att.queries).all() and (att.flagged <= att.queries).all()
    assert (att.first_flag > 0).any()  # Square's near-duplicate proposals are flagged
    t = build_table(res, "detection", readings=["strict"]).frame
    row = t.xs("Blacklight", level="Method").iloc[0]
    assert row["detected %"] > 0 and 0 < row["queries flagged %"] <= 100


def test_schema_2_store_gains_detector_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    with ResultStore(db):
        pass
    con = sqlite3.connect(db)
    for col in ("flagged", "rejected", "first_flag"):
        con.execute(f"ALTER TABLE samples DROP COLUMN {col}")
    con.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    con.commit()
    con.close()
    with ResultStore(db) as s:
        assert s.meta()["schema_version"] == "3" and s.meta()["migrated_from"] == "2"
    cols = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(samples)")}
    assert {"flagged", "rejected", "first_flag"} <= cols
