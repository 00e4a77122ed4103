"""The SQLite results store: WAL, one transaction per chunk, uniqueness, conflicts, and merging stores."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from rfd.eval.merge import merge_stores
from rfd.eval.store import ChunkInfo, ResultStore, SampleRow, StoreConflict


def rows(start: int, n: int, *, success: bool = False) -> list[SampleRow]:
    return [SampleRow(sample=start + i, dataset_index=100 + start + i, label=i % 10, clean_correct=True,
                      success=success, queries=7 * (i + 1), linf=0.05, l2=1.25) for i in range(n)]


def info(chunk: int, n: int, seed: int = 11) -> ChunkInfo:
    return ChunkInfo(chunk=chunk, seed=seed, n_samples=n, queries=10 * n, verification_forwards=9 * n, elapsed_s=0.5)


CONFIG = {"identity": {"n": 4}, "sigma": 0.5}


def test_wal_mode_and_schema(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as s:
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.meta()["schema_version"] == "3"
    with pytest.raises(FileNotFoundError):
        ResultStore(tmp_path / "absent.sqlite", create=False)


_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE calibrations (key TEXT PRIMARY KEY, sigma REAL NOT NULL, record TEXT NOT NULL,
    rfd_version TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE runs (run_id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, config TEXT NOT NULL,
    labels TEXT NOT NULL, rfd_version TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE chunks (run_id INTEGER NOT NULL REFERENCES runs(run_id), chunk INTEGER NOT NULL,
    seed INTEGER NOT NULL, n_samples INTEGER NOT NULL, queries INTEGER NOT NULL,
    verification_forwards INTEGER NOT NULL, elapsed_s REAL NOT NULL, finished TEXT NOT NULL,
    PRIMARY KEY (run_id, chunk));
CREATE TABLE samples (run_id INTEGER NOT NULL REFERENCES runs(run_id), sample INTEGER NOT NULL,
    chunk INTEGER NOT NULL, dataset_index INTEGER NOT NULL, label INTEGER NOT NULL,
    clean_correct INTEGER NOT NULL, success INTEGER NOT NULL, queries INTEGER NOT NULL, linf REAL NOT NULL,
    l2 REAL NOT NULL, UNIQUE (run_id, sample));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO runs VALUES (1, 'old', '{"identity":{"model":{"name":"m"},"defense":{"family":"none","layers":[],
    "drop":null,"sigma":null,"scaled":false,"params":{}},"attack":{"name":"square","norm":"linf","eps":0.1,
    "budget":10,"eot":1,"verify":9,"params":{}},"n":2,"seed":0},"sigma":null}', '{}', '0.1.0', 'then');
INSERT INTO chunks VALUES (1, 0, 7, 2, 20, 18, 0.5, 'then');
INSERT INTO samples VALUES (1, 0, 0, 10, 3, 1, 1, 5, 0.05, 1.0);
INSERT INTO samples VALUES (1, 1, 0, 11, 4, 1, 0, 10, 0.05, 1.0);
"""


def test_a_schema_1_store_is_migrated_and_stays_readable(tmp_path: Path) -> None:
    from rfd.eval.results import load_results

    db = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(_V1)
    conn.close()
    res = load_results(db)  # migrates: new columns NULL
    with ResultStore(db) as s:
        assert s.meta()["schema_version"] == "3" and s.meta()["migrated_from"] == "1"
        assert s.chunk_info(1)[0].reevaluation_forwards is None
    assert res.samples.success.tolist() == [True, False]
    assert res.runs.seeding.tolist() == ["per-run (rfd 0.1)"]
    from rfd.eval.results import robust_accuracy

    run = res.samples
    assert robust_accuracy(run, 10, "paper") == 0.5
    assert math.isnan(robust_accuracy(run, 10, "strict"))  # no re-evaluation stored: unknown, not guessed


def test_chunk_written_once_and_identical_rewrite_is_a_noop(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as s:
        rid = s.ensure_run("k1", CONFIG, {"model": "m"})
        assert s.ensure_run("k1", CONFIG, {"model": "M"}) == rid  # labels may change, id stays
        assert s.runs()[0]["labels"] == {"model": "M"}
        assert s.write_chunk(rid, info(0, 2), rows(0, 2)) is True
        assert s.write_chunk(rid, info(0, 2), rows(0, 2)) is False
        assert s.count_samples(rid) == 2
        assert s.finished_chunks(rid) == {0}
        with pytest.raises(StoreConflict, match="chunk 0 is already stored with different results"):
            s.write_chunk(rid, info(0, 2), rows(0, 2, success=True))
        with pytest.raises(StoreConflict, match="seed"):
            s.write_chunk(rid, info(0, 2, seed=12), rows(0, 2))
        assert s.count_samples() == 2


def test_run_config_is_immutable(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as s:
        s.ensure_run("k1", CONFIG)
        with pytest.raises(StoreConflict, match=r"\.sigma: stored 0.5, new 0.6"):
            s.ensure_run("k1", {**CONFIG, "sigma": 0.6})


def test_samples_are_unique_per_run(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as s:
        rid = s.ensure_run("k1", CONFIG)
        s.write_chunk(rid, info(0, 2), rows(0, 2))
        with pytest.raises(sqlite3.IntegrityError):
            s.conn.execute("INSERT INTO samples (run_id, sample, chunk, dataset_index, label, clean_correct, success,"
                           " queries, linf, l2) VALUES (?, 1, 5, 0, 0, 1, 0, 3, 0.1, 0.1)", (rid,))
        # a chunk whose rows collide with stored samples fails as a whole: neither its chunk row nor any sample
        with pytest.raises(StoreConflict, match="already exists"):
            s.write_chunk(rid, info(1, 3), rows(1, 3))
        assert s.finished_chunks(rid) == {0}
        assert s.count_samples(rid) == 2


def test_failed_chunk_transaction_leaves_nothing(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as s:
        rid = s.ensure_run("k1", CONFIG)
        dup = rows(0, 2) + rows(0, 1)  # a sample twice inside one chunk
        with pytest.raises(StoreConflict):
            s.write_chunk(rid, info(0, 3), dup)
        assert s.finished_chunks(rid) == set() and s.count_samples() == 0
        with pytest.raises(ValueError, match="n_samples"):
            s.write_chunk(rid, info(0, 5), rows(0, 2))


def test_calibrations_store_once(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as s:
        assert s.get_calibration("c") is None
        s.put_calibration("c", {"sigma": 0.25, "accuracy": 0.9})
        s.put_calibration("c", {"sigma": 0.25, "accuracy": 0.9})
        assert s.get_calibration("c")["sigma"] == 0.25
        with pytest.raises(StoreConflict, match="sigma"):
            s.put_calibration("c", {"sigma": 0.3})
        assert len(s.calibrations()) == 1


def _store(path: Path, chunks: dict[int, list[SampleRow]], *, key: str = "k1", sigma: float = 0.5) -> Path:
    with ResultStore(path) as s:
        s.put_calibration("cal", {"sigma": sigma})
        rid = s.ensure_run(key, {**CONFIG, "sigma": sigma}, {"model": "m"})
        for c, r in chunks.items():
            s.write_chunk(rid, info(c, len(r)), r)
    return path


def test_merge_combines_and_accepts_identical_duplicates(tmp_path: Path) -> None:
    a = _store(tmp_path / "a.sqlite", {0: rows(0, 2), 1: rows(2, 2)})
    b = _store(tmp_path / "b.sqlite", {1: rows(2, 2), 2: rows(4, 1)})
    c = _store(tmp_path / "c.sqlite", {0: rows(0, 3)}, key="k2")
    summary = merge_stores(tmp_path / "out.sqlite", [a, b, c])
    assert (summary.chunks_added, summary.chunks_identical, summary.samples_added) == (4, 1, 8)
    assert summary.runs == 2 and summary.calibrations == 1
    with ResultStore(tmp_path / "out.sqlite", create=False) as s:
        assert s.count_samples() == 8
        assert s.finished_by_key() == {"k1": {0, 1, 2}, "k2": {0}}


def test_merge_conflicts_are_clear_errors(tmp_path: Path) -> None:
    a = _store(tmp_path / "a.sqlite", {0: rows(0, 2)})
    b = _store(tmp_path / "b.sqlite", {0: rows(0, 2, success=True)})
    with pytest.raises(StoreConflict, match=r"b\.sqlite: run k1 chunk 0 is already stored with different results"):
        merge_stores(tmp_path / "out.sqlite", [a, b])
    c = _store(tmp_path / "c.sqlite", {0: rows(0, 2)}, sigma=0.7)
    with pytest.raises(StoreConflict, match=r"c\.sqlite: calibration cal"):
        merge_stores(tmp_path / "out2.sqlite", [a, c])
    with pytest.raises(ValueError, match="also an input"):
        merge_stores(a, [a])
