"""What learners ask that the knowledge base does not answer yet: queries without a confident answer.

Kept in the SQLite store (table `gaps`): the query normalised (case-folded, spaces collapsed,
cut to `MAX_CHARS`), how often it was asked, when first and last. Nothing about who asked.
Bounded: entries not asked for `MAX_AGE_DAYS` are dropped, and beyond `MAX_ENTRIES` the least
asked (then the longest unseen) go. `python -m kb gaps` lists them, most asked first.

Unlike the rest of the store, the gaps are not derived from `answers/`: they live in a file of
their own beside it (`gaps_path`: `kb.sqlite3` -> `kb.gaps.sqlite3`), so that deleting the
derived file, or moving a corrupt one aside, loses none of them. A file from before kept them
in the store itself; they are copied over once.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import TypedDict

from .database import Database

MAX_CHARS = 300
MAX_ENTRIES = 2000
MAX_AGE_DAYS = 180
SCHEMA = ("CREATE TABLE IF NOT EXISTS gaps (query TEXT PRIMARY KEY, count INTEGER NOT NULL, "
          "first_seen REAL NOT NULL, last_seen REAL NOT NULL)")


class Gap(TypedDict):
    query: str
    count: int
    first_seen: str  # ISO 8601, UTC
    last_seen: str


def normalise(query: object) -> str:
    return " ".join(str(query or "").casefold().split())[:MAX_CHARS].strip()


def gaps_path(db_path: str | os.PathLike[str]) -> Path:
    """The gaps' own file beside the store: `.kb/kb.sqlite3` -> `.kb/kb.gaps.sqlite3`."""
    path = Path(db_path)
    return path.with_name(f"{path.stem}.gaps{path.suffix}")


class Gaps:
    def __init__(self, db_path: str | os.PathLike[str], max_entries: int = MAX_ENTRIES,
                 max_age_days: float = MAX_AGE_DAYS) -> None:
        path = gaps_path(db_path)
        new = not path.exists()
        self.database = Database(path)
        self.max_entries, self.max_age = max_entries, max_age_days * 86400
        self._queued: list[tuple[str, float]] = []
        self._queue_lock, self._writing = threading.Lock(), threading.Lock()
        with self.database.write() as db:
            db.execute(SCHEMA)
            if new:
                db.executemany("INSERT OR IGNORE INTO gaps VALUES (?, ?, ?, ?)", _kept_in_store(Path(db_path)))

    def record(self, query: object, now: float | None = None) -> None:
        """Count one more asking of `query` (normalised), then keep the table within its bounds.

        Written before this returns, unless another thread of this process is writing gaps at
        that moment: then that thread writes this one too, in its transaction, and this search
        does not wait (searches record gaps on request threads; waiting there was the p99)."""
        text = normalise(query)
        if not text:
            return
        with self._queue_lock:
            self._queued.append((text, time.time() if now is None else now))
        while self._writing.acquire(blocking=False):
            try:
                with self._queue_lock:
                    batch, self._queued = self._queued, []
                if batch:
                    self._write(batch)
            finally:
                self._writing.release()
            with self._queue_lock:  # one queued after the last batch, by a thread that found us busy
                if not self._queued:
                    return

    def _write(self, batch: list[tuple[str, float]]) -> None:
        now = max(seen for _, seen in batch)
        with self.database.write() as db:
            db.executemany("INSERT INTO gaps VALUES (?, 1, ?, ?) ON CONFLICT (query) DO UPDATE "
                           "SET count = count + 1, last_seen = excluded.last_seen",
                           [(text, seen, seen) for text, seen in batch])
            db.execute("DELETE FROM gaps WHERE last_seen < ?", (now - self.max_age,))
            db.execute("DELETE FROM gaps WHERE rowid IN (SELECT rowid FROM gaps ORDER BY count ASC, last_seen ASC "
                       "LIMIT max(0, (SELECT count(*) FROM gaps) - ?))", (self.max_entries,))

    def list(self, limit: int | None = None) -> list[Gap]:
        """[{query, count, first_seen, last_seen}] most asked first (then most recently asked)."""
        rows = self.database.connection().execute(
            "SELECT query, count, first_seen, last_seen FROM gaps ORDER BY count DESC, last_seen DESC, query "
            "LIMIT ?", (-1 if limit is None else limit,))
        return [{"query": q, "count": c, "first_seen": _iso(f), "last_seen": _iso(last)} for q, c, f, last in rows]


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _kept_in_store(db_path: Path) -> list[tuple[str, int, float, float]]:
    """The gaps an earlier version kept in the store itself (none if it cannot be read)."""
    if not db_path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as old:
            return old.execute("SELECT query, count, first_seen, last_seen FROM gaps").fetchall()
    except sqlite3.Error:
        return []

