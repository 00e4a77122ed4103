"""The query log: one SQLite row per answered request, so an operator can audit who asked what, and so the
per-key budgets survive a restart (the server sums the log when it starts).

Schema (table ``queries``): ``id``, ``time`` (unix seconds), ``key_name``, ``key_id`` (first 12 hex digits of
the SHA-256 of the key, never the key), ``n_images``, ``output`` (the output setting, e.g. logits, topk:5),
``classes`` (the answered class of each image, comma-separated, in request order; -1 for a refused image),
``flagged`` (how many images the stateful detector flagged), ``flagged_rows`` (their positions, comma-separated).
With a detector (schema 2) the log also keeps its state, so a restart does not wipe an attacker's history:
``detector_history`` (each screened image's signature, per key, in order, written in the same transaction as the
request's row), ``bans`` (keys whose session a ``ban`` detector ended; an operator lifts one with
``DELETE FROM bans WHERE key_name = ...``) and ``detector_meta`` (the deployment's secret salt seed). Audit with
e.g.::

    sqlite3 queries.sqlite "SELECT key_name, SUM(n_images), MAX(datetime(time, 'unixepoch')) FROM queries
                            GROUP BY key_name"
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["SCHEMA_VERSION", "LogEntry", "QueryLog", "QueryRecord"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    n_images INTEGER NOT NULL CHECK (n_images > 0),
    output TEXT NOT NULL,
    classes TEXT NOT NULL,
    flagged INTEGER NOT NULL DEFAULT 0,
    flagged_rows TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS queries_by_key ON queries (key_name);
CREATE TABLE IF NOT EXISTS detector_history (
    id INTEGER PRIMARY KEY,
    key_name TEXT NOT NULL,
    dtype TEXT NOT NULL,
    sig BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_key ON detector_history (key_name);
CREATE TABLE IF NOT EXISTS bans (key_name TEXT PRIMARY KEY, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS detector_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_V1_COLUMNS = (("flagged", "INTEGER NOT NULL DEFAULT 0"), ("flagged_rows", "TEXT NOT NULL DEFAULT ''"))


@dataclass(frozen=True)
class QueryRecord:
    """One answered request as stored in the log."""

    id: int
    time: float  # unix seconds
    key_name: str
    key_id: str
    n_images: int
    output: str
    classes: tuple[int, ...]  # answered class per image


@dataclass(frozen=True)
class LogEntry:
    """One request to append (see :meth:`QueryLog.record`)."""

    key_name: str
    key_id: str
    classes: torch.Tensor  # int (N,): the answered class per image, -1 for a refused one
    output: str  # the output setting
    flagged: torch.Tensor | None = None  # bool (N,): the detector's flags
    signatures: torch.Tensor | None = None  # (M, D): detector signatures to keep in the key's history
    ban: bool = False  # the key's session ends: its history is deleted and the ban stored


class QueryLog:
    """Append-only SQLite log of answered requests.

    One connection, shared across the server's worker threads; the caller serializes calls (the server holds
    its model lock around a forward step and its log entries, so the log order is the answer order). Each record
    is committed before the answer leaves the server: a crash loses no charged query. :meth:`record_many` commits
    the requests of one batched forward in one transaction (one commit instead of one per request).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")  # audit readers do not block the server's writes
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise ValueError(f"query log {path} has schema version {version}; this rfd writes version "
                                 f"{SCHEMA_VERSION}")
            if version == 1:  # a log written before detectors: its requests had no flags
                for col, typ in _V1_COLUMNS:
                    self._db.execute(f"ALTER TABLE queries ADD COLUMN {col} {typ}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ValueError(f"{path} is not a usable SQLite query log: {exc}") from None

    def record(self, key_name: str, key_id: str, classes: torch.Tensor, output: str, when: float | None = None, *,
               flagged: torch.Tensor | None = None, signatures: torch.Tensor | None = None, ban: bool = False) -> int:
        """Append one answered request; ``classes`` int (N,) is the answered class per image (-1: refused).
        With a detector: ``flagged`` bool (N,), the ``signatures`` (M, D) to keep in the key's history, and
        ``ban`` (the key's session ends: its history is deleted and the ban stored), all in one transaction with
        the request's row. Returns its id."""
        return self.record_many([LogEntry(key_name, key_id, classes, output, flagged=flagged, signatures=signatures,
                                          ban=ban)], when=when)[0]

    def record_many(self, entries: Sequence[LogEntry], when: float | None = None) -> list[int]:
        """Append several answered requests (one row each, in order, with their detector state) in one
        transaction: all are committed or none. Returns their ids. ``when``: unix seconds (default now)."""
        now = time.time() if when is None else when
        self._db.execute("BEGIN IMMEDIATE")
        try:
            ids = [self._insert(e, now) for e in entries]
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return ids

    def _insert(self, e: LogEntry, now: float) -> int:
        labels = e.classes.tolist()
        rows = [] if e.flagged is None else torch.nonzero(e.flagged.cpu()).flatten().tolist()
        cur = self._db.execute(
            "INSERT INTO queries (time, key_name, key_id, n_images, output, classes, flagged, flagged_rows) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (now, e.key_name, e.key_id, len(labels), e.output, ",".join(map(str, labels)), len(rows),
             ",".join(map(str, rows))),
        )
        if e.ban:
            self._db.execute("DELETE FROM detector_history WHERE key_name = ?", (e.key_name,))
            self._db.execute("INSERT OR REPLACE INTO bans VALUES (?, ?)", (e.key_name, now))
        elif e.signatures is not None and e.signatures.shape[0]:
            arr = e.signatures.detach().cpu().contiguous().numpy()
            self._db.executemany("INSERT INTO detector_history (key_name, dtype, sig) VALUES (?, ?, ?)",
                                 [(e.key_name, str(arr.dtype), r.tobytes()) for r in arr])
        return int(cur.lastrowid or 0)

    def history(self, key_name: str, last: int | None = None) -> torch.Tensor | None:
        """The key's stored detector signatures (M, D), oldest first (only the ``last`` M if given); None if none."""
        sql = "SELECT dtype, sig FROM detector_history WHERE key_name = ? ORDER BY id"
        rows = self._db.execute(sql, (key_name,)).fetchall()
        if last is not None:
            rows = rows[-last:]
        if not rows:
            return None
        return torch.from_numpy(np.stack([np.frombuffer(b, dtype=np.dtype(d)) for d, b in rows]).copy())

    def bans(self) -> set[str]:
        """Key names whose session a ``ban`` detector ended."""
        return {str(r[0]) for r in self._db.execute("SELECT key_name FROM bans")}

    def salt_seed(self, given: int | None) -> int:
        """The deployment's detector salt seed: ``given`` if set (and stored), else the stored one, else a fresh
        random one (os.urandom) stored for the next start, so a restarted server fingerprints as before."""
        row = self._db.execute("SELECT value FROM detector_meta WHERE key = 'salt_seed'").fetchone()
        if given is None and row is not None:
            return int(row[0])
        seed = given if given is not None else int.from_bytes(os.urandom(8), "big") >> 1
        self._db.execute("INSERT OR REPLACE INTO detector_meta VALUES ('salt_seed', ?)", (str(seed),))
        return seed

    def flag_totals(self) -> dict[str, int]:
        """Images flagged so far per key name."""
        rows = self._db.execute("SELECT key_name, SUM(flagged) FROM queries GROUP BY key_name").fetchall()
        return {str(name): int(n or 0) for name, n in rows}

    def totals(self) -> dict[str, int]:
        """Images answered so far per key name (the budgets' starting point after a restart)."""
        rows = self._db.execute("SELECT key_name, SUM(n_images) FROM queries GROUP BY key_name").fetchall()
        return {str(name): int(n) for name, n in rows}

    def records(self, key_name: str | None = None) -> list[QueryRecord]:
        """All records (of one key name if given), oldest first."""
        sql = "SELECT id, time, key_name, key_id, n_images, output, classes FROM queries"
        rows = (self._db.execute(sql + " WHERE key_name = ? ORDER BY id", (key_name,)) if key_name is not None
                else self._db.execute(sql + " ORDER BY id")).fetchall()
        return [QueryRecord(int(r[0]), float(r[1]), r[2], r[3], int(r[4]), r[5],
                            tuple(int(c) for c in r[6].split(",")) if r[6] else ()) for r in rows]

    def close(self) -> None:
        self._db.close()
