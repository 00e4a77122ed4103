"""The query log: one SQLite row per answered request, so an operator can audit who asked what, and so the
per-key budgets survive a restart (the server sums the log when it starts).

Schema (table ``queries``): ``id``, ``time`` (unix seconds), ``key_name``, ``key_id`` (first 12 hex digits of
the SHA-256 of the key, never the key), ``n_images``, ``output`` (the output setting, e.g. logits, topk:5),
``classes`` (the answered class of each image, comma-separated, in request order). Audit with e.g.::

    sqlite3 queries.sqlite "SELECT key_name, SUM(n_images), MAX(datetime(time, 'unixepoch')) FROM queries
                            GROUP BY key_name"
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SCHEMA_VERSION", "QueryLog", "QueryRecord"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    n_images INTEGER NOT NULL CHECK (n_images > 0),
    output TEXT NOT NULL,
    classes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS queries_by_key ON queries (key_name);
"""


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


class QueryLog:
    """Append-only SQLite log of answered requests.

    One connection, shared across the server's worker threads; the caller serializes calls (the server holds
    its model lock around a forward and its log entry, so the log order is the answer order). Each record is
    committed before the answer leaves the server: a crash loses no charged query.
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
            if version not in (0, SCHEMA_VERSION):
                raise ValueError(f"query log {path} has schema version {version}; this rfd writes version "
                                 f"{SCHEMA_VERSION}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ValueError(f"{path} is not a usable SQLite query log: {exc}") from None

    def record(self, key_name: str, key_id: str, classes: torch.Tensor, output: str, when: float | None = None) -> int:
        """Append one answered request; ``classes`` int (N,) is the answered class per image. Returns its id."""
        labels = classes.tolist()
        cur = self._db.execute(
            "INSERT INTO queries (time, key_name, key_id, n_images, output, classes) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time() if when is None else when, key_name, key_id, len(labels), output,
             ",".join(str(int(c)) for c in labels)),
        )
        return int(cur.lastrowid or 0)

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
