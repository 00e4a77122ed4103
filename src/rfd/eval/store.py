"""The results store: one SQLite file per study (WAL mode), written chunk by chunk in transactions.

Tables:

* ``runs``: one row per run (a cell: model, defense + sigma, attack, eps, seed), keyed by a content key;
  ``config`` is the run's JSON config, ``rfd_version`` the version that created it.
* ``calibrations``: one sigma per (model, defense, target drop, calibration data, seed), re-used on resume.
* ``chunks``: one row per finished chunk of a run, with its seed and cost; written in the *same*
  transaction as the chunk's samples, so a chunk is either fully stored or absent.
* ``samples``: one row per attacked image, ``UNIQUE(run_id, sample)``: the attack's outcome, its success checks
  (count, forwards, the query count of every claim) and the final re-evaluation (``p_wrong``: the fraction of R
  fresh forwards that misclassify the final image of a broken sample; ``clean_p_wrong``: the same on the clean
  image).

Schema version 2 added the per-sample checks and re-evaluation; a version-1 store is migrated in place when
opened (new columns NULL: its strict and expected readings are unknown, its paper reading unchanged). Version 3
added the stateful detector's per-sample counts (``flagged``, ``rejected``, ``first_flag``; NULL for runs without a
detector); older stores gain the columns (NULL) when opened.

A killed process loses at most the chunk it was computing; a finished chunk is never written twice (a second
write of identical rows is a no-op, of different rows a :class:`StoreConflict`).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rfd import __version__

__all__ = ["SAMPLE_COLUMNS", "SCHEMA_VERSION", "ChunkInfo", "ResultStore", "SampleRow", "StoreConflict", "StoreError",
           "canonical", "row_from_tuple"]

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calibrations (
    key TEXT PRIMARY KEY,
    sigma REAL NOT NULL,
    record TEXT NOT NULL,          -- JSON: model, defense, drop, accuracy, accuracy_se, base_accuracy, forwards, ...
    rfd_version TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,          -- JSON: what the outcome depends on (identity, sigma, calibration)
    labels TEXT NOT NULL,          -- JSON: display names (model/attack labels, study); may change
    rfd_version TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    chunk INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    n_samples INTEGER NOT NULL,
    queries INTEGER NOT NULL,              -- queries charged, all samples of the chunk
    verification_forwards INTEGER NOT NULL,  -- uncounted success-check forwards
    elapsed_s REAL NOT NULL,
    reevaluation_forwards INTEGER,           -- uncounted forwards of the final re-evaluation (NULL: schema 1)
    finished TEXT NOT NULL,
    PRIMARY KEY (run_id, chunk)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    sample INTEGER NOT NULL,        -- position among the study's n selected images
    chunk INTEGER NOT NULL,
    dataset_index INTEGER NOT NULL, -- index of the image in the evaluation split
    label INTEGER NOT NULL,
    clean_correct INTEGER NOT NULL, -- majority vote of `verify` forwards on the clean image
    success INTEGER NOT NULL,       -- verified adversarial example found within the budget
    queries INTEGER NOT NULL,       -- queries at first verified success; all spent otherwise
    linf REAL NOT NULL,
    l2 REAL NOT NULL,
    checks INTEGER,                 -- success checks of the sample's claims (NULL: schema 1)
    check_forwards INTEGER,         -- forwards those checks used
    claims TEXT,                    -- JSON list: query count at each claim
    p_wrong REAL,                   -- re-evaluation of the final image of a broken sample (NULL otherwise)
    clean_p_wrong REAL,             -- re-evaluation of the clean image
    flagged INTEGER,                -- stateful detector: forwards flagged (NULL: no detector)
    rejected INTEGER,               -- forwards refused (flagged under reject/ban, and all after a ban)
    first_flag INTEGER,             -- query number of the first flagged forward (-1: never flagged)
    UNIQUE (run_id, sample)
);
CREATE INDEX IF NOT EXISTS samples_run_chunk ON samples (run_id, chunk);
"""


class StoreError(RuntimeError):
    """The store cannot be used as asked (wrong schema, a run's config changed, ...)."""


class StoreConflict(StoreError):
    """Two different results for the same run/chunk/sample (or the same calibration)."""


@dataclass(frozen=True)
class SampleRow:
    """The stored outcome of one image in one run (the last five are None in a migrated schema-1 store)."""

    sample: int
    dataset_index: int
    label: int
    clean_correct: bool
    success: bool
    queries: int
    linf: float
    l2: float
    checks: int | None = None
    check_forwards: int | None = None
    claims: str | None = None  # JSON list of ints
    p_wrong: float | None = None
    clean_p_wrong: float | None = None
    flagged: int | None = None  # stateful detector only (None: no detector)
    rejected: int | None = None
    first_flag: int | None = None

    def key(self) -> tuple[Any, ...]:
        """Values as stored (bools as ints), for exact comparison with rows read back."""
        return (self.sample, self.dataset_index, self.label, int(self.clean_correct), int(self.success),
                self.queries, float(self.linf), float(self.l2), self.checks, self.check_forwards, self.claims,
                _opt_float(self.p_wrong), _opt_float(self.clean_p_wrong), self.flagged, self.rejected,
                self.first_flag)


def _opt_float(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


SAMPLE_COLUMNS = tuple(f.name for f in fields(SampleRow))


@dataclass(frozen=True)
class ChunkInfo:
    """Bookkeeping of a finished chunk."""

    chunk: int
    seed: int
    n_samples: int
    queries: int
    verification_forwards: int
    elapsed_s: float
    reevaluation_forwards: int | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def canonical(obj: Any) -> str:
    """``obj`` as canonical JSON (sorted keys, no spaces): equal configs give equal text, and equal keys."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class ResultStore:
    """Open (creating if needed) the SQLite results store at ``path``.

    Use as a context manager or call :meth:`close`. Several processes may open the same file (WAL mode, a busy
    timeout), though one writer per file is the normal case."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"results store not found: {self.path}")
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a SQLite results store ({exc})") from exc
        # NORMAL is durable against a killed process in WAL mode (only an OS crash can lose the last commit).
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._init_schema()

    # -------------------------------------------------------------------------------------------- basics
    def _init_schema(self) -> None:
        self.conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); runs outside any transaction
        with self.transaction():
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self.conn.execute("INSERT INTO meta VALUES ('created_with', ?)", (f"rfd {__version__}",))
                self.conn.execute("INSERT INTO meta VALUES ('created', ?)", (_now(),))
            elif int(row[0]) == 1:
                self._migrate_from_1()
            elif int(row[0]) == 2:
                self._migrate_from_2()
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {row[0]}, this rfd reads version {SCHEMA_VERSION}")

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2 inside the caller's transaction: add the checks and re-evaluation columns as NULL."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(samples)")}
        for col, typ in (("checks", "INTEGER"), ("check_forwards", "INTEGER"), ("claims", "TEXT"),
                         ("p_wrong", "REAL"), ("clean_p_wrong", "REAL")):
            if col not in have:
                self.conn.execute(f"ALTER TABLE samples ADD COLUMN {col} {typ}")
        if "reevaluation_forwards" not in {r[1] for r in self.conn.execute("PRAGMA table_info(chunks)")}:
            self.conn.execute("ALTER TABLE chunks ADD COLUMN reevaluation_forwards INTEGER")
        self._add_detector_columns()
        self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('migrated_from', '1')")

    def _migrate_from_2(self) -> None:
        """Schema 2 -> 3 inside the caller's transaction: add the detector columns as NULL."""
        self._add_detector_columns()
        self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('migrated_from', '2')")

    def _add_detector_columns(self) -> None:
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(samples)")}
        for col in ("flagged", "rejected", "first_flag"):
            if col not in have:
                self.conn.execute(f"ALTER TABLE samples ADD COLUMN {col} INTEGER")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlocks)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:  # noqa: PYI034 - final in practice; Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    # -------------------------------------------------------------------------------------- calibrations
    def get_calibration(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT sigma, record FROM calibrations WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        rec = json.loads(row[1])
        rec["sigma"] = row[0]
        return rec

    def put_calibration(self, key: str, record: dict[str, Any], *, rfd_version: str = __version__,
                        created: str | None = None) -> None:
        """Store a calibration (``record["sigma"]`` required). Storing the same sigma again is a no-op; a
        different sigma for the same key is a :class:`StoreConflict`."""
        sigma = float(record["sigma"])
        with self.transaction():
            row = self.conn.execute("SELECT sigma FROM calibrations WHERE key=?", (key,)).fetchone()
            if row is not None:
                if row[0] != sigma:
                    raise StoreConflict(f"calibration {key}: stored sigma {row[0]!r} differs from {sigma!r}")
                return
            self.conn.execute("INSERT INTO calibrations VALUES (?, ?, ?, ?, ?)",
                              (key, sigma, canonical(record), rfd_version, created or _now()))

    def calibrations(self) -> list[dict[str, Any]]:
        out = []
        for key, sigma, rec, ver, created in self.conn.execute(
                "SELECT key, sigma, record, rfd_version, created FROM calibrations ORDER BY key"):
            d = json.loads(rec)
            d.update(key=key, sigma=sigma, rfd_version=ver, created=created)
            out.append(d)
        return out

    # ---------------------------------------------------------------------------------------------- runs
    def ensure_run(self, key: str, config: dict[str, Any], labels: dict[str, Any] | None = None, *,
                   rfd_version: str = __version__, created: str | None = None) -> int:
        """The run id of ``key``, creating the run with ``config`` if new. An existing run must have the same
        config (else :class:`StoreConflict`: a results store holds one meaning per key); its display
        ``labels`` are updated."""
        text = canonical(config)
        ltext = canonical(labels or {})
        with self.transaction():
            row = self.conn.execute("SELECT run_id, config, labels FROM runs WHERE key=?", (key,)).fetchone()
            if row is not None:
                if row[1] != text:
                    raise StoreConflict(
                        f"run {key} is stored with a different config; first difference: "
                        f"{_first_difference(json.loads(row[1]), config)}")
                if labels is not None and row[2] != ltext:
                    self.conn.execute("UPDATE runs SET labels=? WHERE run_id=?", (ltext, row[0]))
                return int(row[0])
            cur = self.conn.execute(
                "INSERT INTO runs (key, config, labels, rfd_version, created) VALUES (?, ?, ?, ?, ?)",
                (key, text, ltext, rfd_version, created or _now()))
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def _run_key(self, run_id: int) -> str:
        row = self.conn.execute("SELECT key FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return str(row[0]) if row else f"#{run_id}"

    def run_id(self, key: str) -> int | None:
        row = self.conn.execute("SELECT run_id FROM runs WHERE key=?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def runs(self) -> list[dict[str, Any]]:
        """Every run: run_id, key, config (dict), labels (dict), rfd_version, created; ordered by run_id."""
        return [{"run_id": r, "key": k, "config": json.loads(c), "labels": json.loads(lab), "rfd_version": v,
                 "created": t}
                for r, k, c, lab, v, t in self.conn.execute(
                    "SELECT run_id, key, config, labels, rfd_version, created FROM runs ORDER BY run_id")]

    # ---------------------------------------------------------------------------------------- studies
    def put_study(self, name: str, study: dict[str, Any]) -> None:
        """Remember a study's settings (reports read its checkpoints); the latest write per name wins."""
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"study:{name}", canonical(study)))

    def studies(self) -> dict[str, dict[str, Any]]:
        return {k[len("study:"):]: json.loads(v) for k, v in self.conn.execute(
            "SELECT key, value FROM meta WHERE key LIKE 'study:%' ORDER BY key")}

    # ------------------------------------------------------------------------------------ chunks/samples
    def finished_chunks(self, run_id: int | None = None) -> set[tuple[int, int]] | set[int]:
        """Chunk numbers finished for ``run_id``; or all finished (run_id, chunk) pairs."""
        if run_id is None:
            return {(int(r), int(c)) for r, c in self.conn.execute("SELECT run_id, chunk FROM chunks")}
        return {int(c) for (c,) in self.conn.execute("SELECT chunk FROM chunks WHERE run_id=?", (run_id,))}

    def finished_by_key(self) -> dict[str, set[int]]:
        """{run key: finished chunk numbers}."""
        out: dict[str, set[int]] = {}
        for key, chunk in self.conn.execute("SELECT r.key, c.chunk FROM chunks c JOIN runs r USING (run_id)"):
            out.setdefault(key, set()).add(int(chunk))
        return out

    def chunk_info(self, run_id: int) -> list[ChunkInfo]:
        return [ChunkInfo(*row) for row in self.conn.execute(
            "SELECT chunk, seed, n_samples, queries, verification_forwards, elapsed_s, reevaluation_forwards "
            "FROM chunks WHERE run_id=? "
            "ORDER BY chunk", (run_id,))]

    def chunk_finished(self, run_id: int, chunk: int) -> str:
        """When chunk ``chunk`` of ``run_id`` was stored (ISO 8601, UTC); :class:`KeyError` if it is not."""
        row = self.conn.execute("SELECT finished FROM chunks WHERE run_id=? AND chunk=?", (run_id, chunk)).fetchone()
        if row is None:
            raise KeyError(f"run {self._run_key(run_id)} chunk {chunk} is not stored")
        return str(row[0])

    def chunk_rows(self, run_id: int, chunk: int) -> list[tuple[Any, ...]]:
        """Stored samples of one chunk, as :meth:`SampleRow.key` tuples ordered by sample."""
        return list(self.conn.execute(
            f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE run_id=? AND chunk=? ORDER BY sample",
            (run_id, chunk)))

    def write_chunk(self, run_id: int, info: ChunkInfo, rows: Sequence[SampleRow], *,
                    finished: str | None = None) -> bool:
        """Store a finished chunk and all its samples in ONE transaction. Returns True if written, False if the
        identical chunk was already there; different stored rows raise :class:`StoreConflict`."""
        if len(rows) != info.n_samples:
            raise ValueError(f"chunk {info.chunk}: {len(rows)} rows but n_samples={info.n_samples}")
        with self.transaction():
            exists = self.conn.execute("SELECT seed FROM chunks WHERE run_id=? AND chunk=?",
                                       (run_id, info.chunk)).fetchone()
            if exists is not None:
                stored = self.chunk_rows(run_id, info.chunk)
                new = sorted(r.key() for r in rows)
                if exists[0] != info.seed or stored != new:
                    diff = next((f"sample {a[0]}: stored {a[1:]}, new {b[1:]}" for a, b in zip(stored, new) if a != b),
                                f"seed {exists[0]} vs {info.seed}" if exists[0] != info.seed
                                else f"{len(stored)} vs {len(new)} rows")
                    raise StoreConflict(f"run {self._run_key(run_id)} chunk {info.chunk} is already stored with "
                                        f"different results ({diff})")
                return False
            self.conn.execute(
                "INSERT INTO chunks (run_id, chunk, seed, n_samples, queries, verification_forwards, elapsed_s, "
                "finished, reevaluation_forwards) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, info.chunk, info.seed, info.n_samples, info.queries, info.verification_forwards,
                 info.elapsed_s, finished or _now(), info.reevaluation_forwards))
            try:
                self.conn.executemany(
                    "INSERT INTO samples (run_id, chunk, " + ", ".join(SAMPLE_COLUMNS) + ") "
                    "VALUES (?, ?, " + ", ".join("?" * len(SAMPLE_COLUMNS)) + ")",
                    [(run_id, info.chunk, *r.key()) for r in rows])
            except sqlite3.IntegrityError as exc:
                raise StoreConflict(f"run {run_id} chunk {info.chunk}: a sample row already exists ({exc})") from exc
        return True

    def samples(self, run_ids: Iterable[int] | None = None) -> list[tuple[Any, ...]]:
        """(run_id, chunk, *SAMPLE_COLUMNS) rows ordered by run and sample."""
        sql = f"SELECT run_id, chunk, {', '.join(SAMPLE_COLUMNS)} FROM samples"
        if run_ids is not None:
            ids = list(run_ids)
            sql += f" WHERE run_id IN ({', '.join('?' * len(ids))})"
            return list(self.conn.execute(sql + " ORDER BY run_id, sample", ids))
        return list(self.conn.execute(sql + " ORDER BY run_id, sample"))

    def count_samples(self, run_id: int | None = None) -> int:
        if run_id is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM samples WHERE run_id=?", (run_id,)).fetchone()[0])


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'new' if k in b else 'stored'} config"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{path}.{k}")
        return path or "(none)"
    return f"{path or 'config'}: stored {a!r}, new {b!r}"


def row_from_tuple(t: Sequence[Any]) -> SampleRow:
    """A :class:`SampleRow` from a stored tuple in SAMPLE_COLUMNS order."""
    s, di, lab, cc, su, q, li, l2, k, kf, cl, pw, cpw, fl, rj, ff = t
    return SampleRow(int(s), int(di), int(lab), bool(cc), bool(su), int(q), float(li), float(l2),
                     _opt_int(k), _opt_int(kf), cl, _opt_float(pw), _opt_float(cpw), _opt_int(fl), _opt_int(rj),
                     _opt_int(ff))


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)

